"""The features stage with `cluster.engine: ray` on two loopback Ray nodes of one CPU each,
against `engine: local` in one process, on the same two cores: whole-stage wall times (start-up,
Ray connection and actor start included). Both must write the same bytes. On one machine this
measures Ray's overhead, not a speed-up. (Not named `ray.py`: it would shadow Ray itself when
`benchmarks/run.py` runs as a script.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import Context, child_env
from benchmarks.table import Row
from tests.project import write_params, write_prepared

N = {"quick": 2000, "full": 10000}
SETTINGS = {"backbone.weights": "none", "prepare.image_size": 32}


def stage_seconds(root: Path) -> float:
    """Wall time of `python -m stages.features` in `root`, as DVC runs it."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "stages.features"],
        cwd=root,
        env=child_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def features_bytes(root: Path) -> dict[str, bytes]:
    folder = root / "data" / "features"
    files = [*sorted(folder.rglob("*.npy")), folder / "backbone.keras"]
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


def run(ctx: Context) -> tuple[dict, list[Row]]:
    from tests.ray_loopback import loopback_cluster  # stops what it started, by PID

    n = ctx.count(N[ctx.mode], floor=500)
    root = write_params(ctx.workdir / "ray-vs-local", SETTINGS | {"cluster.engine": "local"})
    write_prepared(root, {"train": n * 8 // 10, "val": n // 10, "test": n // 10}, 32, classes=10)
    local_s = stage_seconds(root)
    local_bytes = features_bytes(root)
    with loopback_cluster(cpus_per_node=1) as address:
        write_params(root, SETTINGS | {"cluster.engine": "ray", "cluster.address": address})
        ray_s = stage_seconds(root)
    if features_bytes(root) != local_bytes:
        raise SystemExit("features with cluster.engine: ray wrote other bytes than local")
    result = {
        "ray_vs_local": round(local_s / ray_s, 3),
        "ray_n_images": n,
        "features_local_stage_s": round(local_s, 1),
        "features_ray_stage_s": round(ray_s, 1),
    }
    row = Row(
        "features stage, 2 loopback Ray nodes / local",
        f"{local_s / ray_s:.3f}x",
        f"throughput ratio; {ray_s:.1f} / {local_s:.1f} s, {n} images, same bytes "
        "(same 2 cores: overhead, not speed-up)",
    )
    return result, [row]
