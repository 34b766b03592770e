"""End to end: the offline demo through DVC in a throw-away copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = "-S train.epochs=10 -S finetune.epochs=6"


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-3000:]}"
    return output


def stages_that_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git repository holding the project's files as they are in the working tree."""
    root = tmp_path_factory.mktemp("project")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "copy"], root)
    return root


@pytest.mark.slow
def test_demo_then_lr_experiment_reruns_only_finetune_and_evaluate(project: Path):
    venv = VENV_BIN.parent
    demo = run(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed",
                "demo", f"DEMO_EXTRA={TINY}"], project)
    assert stages_that_ran(demo) == {"download", "prepare", "features", "train", "finetune", "evaluate"}
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"head", "finetuned"}
    assert {"accuracy", "loss"} <= set(metrics["head"])
    assert {"accuracy", "loss", "macro_f1"} <= set(metrics["finetuned"])
    assert metrics["finetuned"]["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert "finetuned.accuracy" in demo  # the demo prints the test accuracy

    # Nothing changed: nothing runs.
    assert stages_that_ran(run(["dvc", "repro"], project)) == set()

    # A new fine-tuning learning rate touches finetune and evaluate only; lr arrives as a float.
    tuned = run(["dvc", "exp", "run", "-S", "lr=1e-5"], project)
    assert stages_that_ran(tuned) == {"finetune", "evaluate"}
    assert re.search(r"^lr: 1e-05$", (project / "params.yaml").read_text(), re.MULTILINE)
    assert "at lr=1e-05" in tuned
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project)

    # Same params, everything recomputed: the same bytes.
    before = (project / "metrics/evaluate.json").read_bytes(), (project / "dvc.lock").read_text()
    forced = run(["dvc", "repro", "--force"], project)
    assert stages_that_ran(forced) == {"download", "prepare", "features", "train", "finetune", "evaluate"}
    assert (project / "metrics/evaluate.json").read_bytes() == before[0]
    assert (project / "dvc.lock").read_text() == before[1]
