"""The whole pipeline at a real size (`--at-scale IMAGES SIZE`, not part of the default run):
default params but `backbone.weights: none`, on IMAGES generated CIFAR-10-shaped images read
through tensorflow-datasets' mock data (the real download path, random pixels), resized to SIZE;
a sixth held out for testing, as CIFAR-10's 10,000 of 60,000. Each stage's wall time and peak
RSS, the bytes written, then `dvc commit` and the time of a no-op `dvc repro`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import run_child
from tests.project import copy_project, write_params

STAGES = ("download", "prepare", "features", "train", "finetune", "evaluate")


def run_stages(root: Path, images: int) -> dict[str, dict[str, float]]:
    stages = {}
    for stage in STAGES:
        started = time.perf_counter()
        mock = images if stage == "download" else 0
        peak = run_child("stage", root, module=f"stages.{stage}", mock_tfds=mock)["peak_rss_mb"]
        stages[stage] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak),
        }
        print(f"{stage}: {stages[stage]}", file=sys.stderr, flush=True)
    return stages


def pipeline_at_scale(workdir: Path, images: int, size: int) -> dict[str, object]:
    root = copy_project(workdir / "project")
    changes = {
        "data.dataset": "cifar10:3.0.2",
        "backbone.weights": "none",
        "prepare.image_size": size,
        "prepare.test_fraction": 1 / 6,
    }
    if size != 32:  # CIFAR-10's own size
        changes["data.image_size"] = size
    write_params(root, changes)
    manual = root / "tfds" / "downloads" / "manual"  # the archive tfds expects offline
    manual.mkdir(parents=True)
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"")
    stages = run_stages(root, images)
    disk = {
        folder: sum(f.stat().st_size for f in (root / folder).rglob("*") if f.is_file())
        for folder in ("data/raw", "data/prepared", "data/features", "models")
    }
    dvc = [str(Path(sys.executable).parent / "dvc")]
    started = time.perf_counter()
    subprocess.run([*dvc, "commit", "-f", "-q"], cwd=root, check=True, capture_output=True)
    commit_s = time.perf_counter() - started
    started = time.perf_counter()
    repro = subprocess.run([*dvc, "repro"], cwd=root, check=True, capture_output=True, text=True)
    return {
        "images": images,
        "size": size,
        "stages": stages,
        "bytes": disk,
        "metrics": json.loads((root / "metrics/evaluate.json").read_text()),
        "dvc_commit_s": round(commit_s, 1),
        "noop_repro_s": round(time.perf_counter() - started, 1),
        "noop_repro_output": repro.stdout.strip().splitlines()[-1],
    }
