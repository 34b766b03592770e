"""Killed and interrupted stages: no finished-looking partial output, and a rerun gives the same
bytes.

A stage killed with SIGKILL gets no chance to clean up; what protects the pipeline is that every
output is written under a temporary name and renamed into place only when complete, and that DVC
then sees the stage as not run. The rerun must produce exactly what an uninterrupted run produces.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.background import Running, wait_for
from tests.helpers import (
    ALWAYS_RUN,
    OFFLINE,
    SHIPPED_PARAMS,
    TINY,
    UP_TO_DATE,
    VENV_BIN,
    commit_all,
    copy_project,
    lock_without_timings,
    run,
    set_param,
    stages_that_ran,
    timed_outputs_without_timings,
)

pytestmark = pytest.mark.slow

FEATURE_FILES = [
    f"data/features/{part}/{split}.npy"
    for part in ("head", "boundary")
    for split in ("train", "val", "test")
]
FEATURE_OUTS = [*FEATURE_FILES, "data/features/backbone.keras", "data/features/boundary.json"]
FINETUNE_OUTS = ["models/model.keras", "models/model.json"]


def overrides_into_params(root: Path, overrides: list[str]) -> None:
    """Write `-S key=value` overrides into params.yaml (what `dvc exp run -S` does) and commit."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in (item.split("=", 1) for item in overrides if item != "-S"):
        set_param(params, key, yaml.safe_load(value))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_all(root, "tiny offline")


def tiny_offline_project(root: Path) -> Path:
    copy_project(root)
    overrides_into_params(root, OFFLINE + TINY)
    return root


def temporaries(root: Path) -> list[Path]:
    """Half-written outputs (storage.atomic_path's temporary names) under data/, models/,
    metrics/."""
    return [
        path
        for folder in ("data", "models", "metrics")
        for path in (root / folder).rglob("*.tmp-*")
    ]


def kill_mid_run(root: Path, stage: str, working: Callable[[Running], object]) -> Running:
    """Run `dvc repro`; SIGKILL `stage`'s process once `working(repro)` says it is half way; wait
    for dvc."""
    with Running(["dvc", "repro"], root) as repro:
        process = wait_for(lambda: repro.stage_process(stage), repro, f"stage {stage} to start")
        wait_for(lambda: working(repro), repro, f"stage {stage} to be half way")
        process.send_signal(signal.SIGKILL)
        assert repro.wait() != 0, repro.output[-3000:]
    assert f"Running stage '{stage}'" in repro.output
    return repro


def assert_stage_not_done(root: Path, stage: str, outs: list[str]) -> None:
    """DVC must see `stage` as not run, and no output of it may look finished."""
    status = run(["dvc", "status", stage], root).output
    assert f"{stage}:" in status and "up to date" not in status, status
    for name in outs:
        path = root / name
        if path.suffix == ".npy" and path.exists():  # complete if it loads whole
            np.load(path, allow_pickle=False)
        else:
            assert not path.exists(), f"{name} exists after {stage} was killed"


def test_killed_stages_leave_nothing_finished_looking_and_the_rerun_gives_the_same_bytes(
    tmp_path: Path,
):
    reference_root = tiny_offline_project(tmp_path / "reference")
    killed_root = tiny_offline_project(tmp_path / "killed")
    # The uninterrupted run goes on beside the interrupted one: TensorFlow is deterministic here.
    with Running(["dvc", "repro"], reference_root) as reference:
        # 1. SIGKILL `features` while it writes its first feature file.
        kill_mid_run(killed_root, "features", lambda repro: temporaries(killed_root))
        assert temporaries(killed_root), "the kill came after features had written its files"
        assert_stage_not_done(killed_root, "features", FEATURE_OUTS)

        # 2. Rerun: features now completes; SIGKILL `finetune` once it trains.
        second = kill_mid_run(killed_root, "finetune", lambda repro: "Epoch 1/" in repro.output)
        assert {"features", "train", "finetune"} <= stages_that_ran(second.output)
        assert_stage_not_done(killed_root, "finetune", FINETUNE_OUTS)

        # 3. Rerun to the end: only the killed stage and what follows it run.
        final = run(["dvc", "repro"], killed_root).output
        assert stages_that_ran(final) == ALWAYS_RUN | {
            "finetune",
            "evaluate",
            "analyze",
            "export",
        }, final
        assert json.loads(run(["dvc", "status", "--json"], killed_root).stdout) == UP_TO_DATE
        assert temporaries(killed_root) == []

        assert reference.wait() == 0, reference.output[-3000:]
    assert (killed_root / "metrics/evaluate.json").read_bytes() == (
        reference_root / "metrics/evaluate.json"
    ).read_bytes()
    # Every output's hash, not only the metrics: the same bytes everywhere but in the timings.
    assert lock_without_timings(killed_root) == lock_without_timings(reference_root)
    assert timed_outputs_without_timings(killed_root) == timed_outputs_without_timings(
        reference_root
    )


def test_sigint_stops_a_stage_within_seconds_with_one_line(tmp_path: Path):
    # Enough images that features is still extracting when the signal comes.
    params = yaml.safe_load(SHIPPED_PARAMS)
    params["data"]["dataset"], params["backbone"]["weights"] = "digits", "none"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 3000), ("val", 300), ("test", 300)):
        np.save(
            prepared / f"{split}_x.npy",
            rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
        )

    with Running([str(VENV_BIN / "python"), "-m", "stages.features"], tmp_path) as stage:
        wait_for(lambda: temporaries(tmp_path), stage, "features to start writing")
        sent = time.monotonic()
        stage.process.send_signal(signal.SIGINT)
        code = stage.wait(timeout=60)
        took = time.monotonic() - sent

    assert code == 130, stage.output[-3000:]
    assert took < 10, f"took {took:.1f} s to stop"
    assert "Traceback" not in stage.output, stage.output[-3000:]
    assert re.search(
        r"^interrupted: no output was finished; rerun `dvc repro` to continue$",
        stage.output,
        re.MULTILINE,
    )
    assert not re.search(r"^error:", stage.output, re.MULTILINE), stage.output[-3000:]
    assert temporaries(tmp_path) == []  # the half-written files were removed on the way out
    assert not any((tmp_path / name).exists() for name in FEATURE_OUTS)
