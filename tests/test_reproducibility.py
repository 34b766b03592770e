"""Determinism: the tiny offline pipeline run in two separate clones gives the same bytes.

Each clone has its own git repository, DVC cache and processes, so nothing can be shared between
the two runs: equal hashes mean the stages themselves are deterministic (seeded, op determinism on,
byte-reproducible .npy/.keras/.json files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ALL_STAGES, OFFLINE, TINY, copy_project, run, stages_that_ran


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> tuple[Path, Path]:
    projects = []
    for name in ("first", "second"):
        project = copy_project(tmp_path_factory.mktemp(name))
        assert (
            stages_that_ran(run(["dvc", "exp", "run", *OFFLINE, *TINY], project).output)
            == ALL_STAGES
        )
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
def test_whole_lock_files_are_identical(clones):
    """Beyond the data: models, curves and reports too (dvc.lock holds every output's md5)."""
    first, second = clones
    assert (first / "dvc.lock").read_text() == (second / "dvc.lock").read_text()
