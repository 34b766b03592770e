"""Concurrent use: readers never see a half-written output, and writers never delete each other's
temporary files.

`tlpipe predict` may load models/model.keras while `dvc repro` rewrites it, and `dvc queue start
-j 2` runs two experiments at once. Every output is written under a temporary name unique to its
process and renamed into place (`atomic_path` in tlpipe/core/files.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tests.helpers import (
    OFFLINE,
    REPO,
    TINY,
    command_env,
    commit_all,
    copy_project,
    run,
    set_param,
)
from tlpipe.compute.archives import load_model, save_model
from tlpipe.core.files import atomic_path


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


class HalfWritten:
    """Stands in for a Keras model in save_model: writes `model`'s .keras bytes in two halves and,
    in between, records what a reader loading `watched` gets."""

    def __init__(self, model: keras.Model, watched: Path, scratch: Path):
        model.save(scratch)
        self.data, self.watched = scratch.read_bytes(), watched
        self.seen: list[np.ndarray] | None = None

    def save(self, path: Path) -> None:
        with open(path, "wb") as file:
            file.write(self.data[: len(self.data) // 2])
            file.flush()
            self.seen = load_model(self.watched).get_weights()  # a reader, mid-write
            file.write(self.data[len(self.data) // 2 :])


def test_a_model_being_rewritten_loads_whole_as_the_old_model(tmp_path: Path):
    path = tmp_path / "models/model.keras"
    old, new = small_model(1), small_model(2)
    save_model(old, path)
    writer = HalfWritten(new, watched=path, scratch=tmp_path / "new.keras")
    save_model(writer, path)
    assert writer.seen is not None
    for seen, expected in zip(writer.seen, old.get_weights(), strict=True):
        np.testing.assert_array_equal(seen, expected)
    for loaded, expected in zip(load_model(path).get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, expected)  # and once written, the new model


HOLD_A_TEMPORARY = """
import sys
from pathlib import Path
from tlpipe.core.files import atomic_path
with atomic_path(Path(sys.argv[1])) as temporary:
    temporary.write_text("from the other writer")
    print(temporary, flush=True)
    sys.stdin.readline()  # hold it until the test says
"""


def test_a_writer_leaves_a_running_writers_temporary_alone(tmp_path: Path):
    path = tmp_path / "metrics.json"
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_TEMPORARY, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        others_temporary = Path(other.stdout.readline().strip())
        assert others_temporary.exists()
        with atomic_path(path) as temporary:  # this process writes the same file meanwhile
            assert temporary != others_temporary
            temporary.write_text("from this writer")
        assert others_temporary.exists(), "deleted the temporary of a writer still running"
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    assert path.read_text() == "from the other writer"  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_dead_writers_temporary_is_deleted(tmp_path: Path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    leftover = tmp_path / f".model.tmp-{finished.stdout.strip()}-0a1b2c3d.keras"
    leftover.write_bytes(b"half a model")
    with atomic_path(tmp_path / "model.keras") as temporary:
        temporary.write_bytes(b"a model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


# --- two queue workers ---------------------------------------------------------------------------

LRS = ("1e-05", "0.0001")


def tiny_project(root: Path) -> Path:
    """A copy of the project on the tiny offline config, committed (queued runs see git only)."""
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    overrides = [item for item in OFFLINE + TINY if item != "-S"]
    for key, value in (item.split("=", 1) for item in overrides):
        set_param(params, key, yaml.safe_load(value))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_all(root, "tiny offline")
    return root


def queued_metrics(project: Path) -> dict[str, dict]:
    """{lr: metrics/evaluate.json} of every experiment of HEAD, from `dvc exp show --json`."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found = {}
    for baseline in rows:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["lr"]
            found[f"{float(lr):g}"] = data["metrics"]["metrics/evaluate.json"]["data"]
    return found


def wait_for_queue(project: Path, until: Callable[[str], bool], timeout: float = 1800) -> str:
    """`dvc queue status` once `until(status)` holds or nothing is queued or running any more."""
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], project).output
        if until(status) or not any(state in status for state in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


@pytest.mark.slow
def test_two_queue_workers_give_the_same_metrics_as_one(tmp_path: Path):
    queued = tiny_project(tmp_path / "queued")
    alone = tiny_project(tmp_path / "alone")  # its own DVC cache: no run-cache shared
    submitted = run(["dvc", "exp", "run", "--queue", "-S", f"lr={','.join(LRS)}"], queued)
    assert submitted.output.count("Queued experiment") == 2, submitted.output
    try:
        # Not through a pipe: the workers it leaves running would hold it open until they end.
        with open(tmp_path / "start.log", "w+") as log:
            subprocess.run(
                ["dvc", "queue", "start", "-j", "2"],
                cwd=queued,
                env=command_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=300,
            )
        started = (tmp_path / "start.log").read_text()
        assert "Started '2' new experiments task queue workers" in started, started
        status = wait_for_queue(queued, until=lambda status: status.count("Running") == 2)
        assert status.count("Running") == 2, f"the two never ran at the same time:\n{status}"
        # Meanwhile, one experiment at a time in the other copy.
        reference = {}
        for lr in LRS:
            run(["dvc", "exp", "run", "-S", f"lr={lr}"], alone)
            reference[f"{float(lr):g}"] = json.loads((alone / "metrics/evaluate.json").read_text())
        status = wait_for_queue(queued, until=lambda status: False)
    finally:
        run(["dvc", "queue", "stop"], queued, check=False)
    assert status.count("Success") == 2, status
    assert queued_metrics(queued) == reference
    leftovers = [p for folder in (queued, alone) for p in folder.rglob("*.tmp-*")]
    assert leftovers == []
