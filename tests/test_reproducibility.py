"""Determinism: the tiny offline pipeline run in two separate clones gives the same bytes.

Each clone has its own git repository, DVC cache and processes, so nothing can be shared between
the two runs: equal hashes mean the stages themselves are deterministic (seeded, op determinism on,
byte-reproducible .npy/.keras/.json files). Both precisions: float32, and bfloat16 for the conv
base and fine-tuning (which runs as float32, saying so, on a CPU without native bfloat16).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    ALL_STAGES,
    OFFLINE,
    TINY,
    copy_project,
    lock_without_timings,
    run,
    stages_that_ran,
    timed_outputs_without_timings,
)
from tlpipe.compute.precision import effective_precision
from tlpipe.core.cpu import kernel_flags


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def clones(request, tmp_path_factory) -> tuple[Path, Path]:
    precision = request.param
    expected, _ = effective_precision(precision, flags=kernel_flags(), has_gpu=False)
    overrides = ["-S", f"features.precision={precision}", "-S", f"finetune.precision={precision}"]
    projects = []
    for name in ("first", "second"):
        project = copy_project(tmp_path_factory.mktemp(f"{name}-{precision}"))
        output = run(["dvc", "exp", "run", *OFFLINE, *TINY, *overrides], project).output
        assert stages_that_ran(output) == ALL_STAGES
        assert f"features: the conv base computes in {expected}" in output
        assert f"in {expected}\n" in output  # finetune's "training ... at lr=... in <precision>"
        projects.append(project)
    return projects[0], projects[1]


def outs(project: Path, stage: str) -> dict[str, str]:
    """{output path: md5} of one stage as recorded in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


@pytest.mark.slow
def test_metrics_are_byte_identical(clones):
    first, second = clones
    assert (first / "metrics/evaluate.json").read_bytes() == (
        second / "metrics/evaluate.json"
    ).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prepare", "features"])
def test_data_outputs_have_identical_md5s(clones, stage):
    first, second = clones
    recorded = outs(first, stage)
    assert recorded and all(recorded.values())
    assert recorded == outs(second, stage)


@pytest.mark.slow
def test_whole_lock_files_are_identical_but_for_timings(clones):
    """Beyond the data: models, every exported file, curves and reports too (dvc.lock holds
    every output's md5). Only the exported files' latencies differ, which are timings."""
    first, second = clones
    assert lock_without_timings(first) == lock_without_timings(second)
    assert timed_outputs_without_timings(first) == timed_outputs_without_timings(second)
