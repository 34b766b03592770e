"""`train.replicas` / `finetune.replicas`: MirroredStrategy over two logical CPU devices trains,
and two runs give the same bytes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.helpers import OFFLINE, TINY, copy_project, run

REPLICAS = ["-S", "train.replicas=2", "-S", "finetune.replicas=2"]


def outs(project: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


def train_losses(live_dir: Path) -> list[float]:
    """Training loss per epoch, from DVCLive's curve."""
    rows = (live_dir / "plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


@pytest.mark.slow
def test_two_replicas_train_and_are_deterministic(tmp_path: Path):
    project = copy_project(tmp_path)
    first = run(["dvc", "exp", "run", *OFFLINE, *TINY, *REPLICAS], project).output
    for key in ("train.replicas", "finetune.replicas"):
        assert f"{key}: 2 replicas, MirroredStrategy over /cpu:0, /cpu:1" in first
    trained = {stage: outs(project, stage) for stage in ("train", "finetune")}
    for stage in ("train", "finetune"):  # it learns: the training loss falls every epoch
        losses = train_losses(project / f"metrics/{stage}")
        assert len(losses) >= 2 and all(b < a for a, b in itertools.pairwise(losses)), losses
        metrics = json.loads((project / f"metrics/{stage}/metrics.json").read_text())
        # Better than a uniform guess over ten classes on validation, whose loss is ln 10.
        assert metrics["eval"]["loss"] < math.log(10), metrics

    run(["dvc", "repro", "-f", "-s", "train", "finetune"], project)
    assert {stage: outs(project, stage) for stage in ("train", "finetune")} == trained
