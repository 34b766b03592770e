"""What many tests share: the project's location, its shipped params, running commands in a copy
of it.

Tests run offline: no dataset or weight download is ever attempted. Fixtures are in conftest.py.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

# Re-exported: the tests import them from here.
from tests.project import copy_project, set_param, shipped_params_text  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# `check` runs on every `dvc repro` and `dvc exp run` (always_changed: stages/check.py), so it is
# among the stages run even when nothing else is, and `dvc status` always lists it.
ALWAYS_RUN = frozenset({"check"})
ALL_STAGES = ALWAYS_RUN | frozenset(
    {"download", "prepare", "features", "train", "finetune", "evaluate", "analyze", "export"}
)
UP_TO_DATE = {"check": ["always changed"]}  # `dvc status --json` when there is nothing to do
# The offline configuration, as small as still learns: for tests that run the pipeline several
# times. analyze at its smallest too (2 folds, few pictures): test_pipeline runs its defaults.
OFFLINE = ["-S", "data.dataset=digits", "-S", "backbone.weights=none"]
TINY = ["-S", "data.limit=400", "-S", "train.epochs=3", "-S", "finetune.epochs=2"]
SMALL_ANALYZE = ["-S", "analyze.folds=2", "-S", "analyze.top_losses=6"]
SMALL_ANALYZE += ["-S", "analyze.gradcam_per_class=1"]
TINY += SMALL_ANALYZE


# Outputs that hold timings (the exported files' single-image latency): the one part of a run
# that differs run to run (docs/trusted.md). Compared with their timings left out.
TIMED_OUTPUTS = ("metrics/export.json", "models/MODEL_CARD.md")


def lock_without_timings(project: Path) -> dict:
    """dvc.lock, with the hashes of TIMED_OUTPUTS removed."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for out in lock["stages"]["export"]["outs"]:
        if out["path"] in TIMED_OUTPUTS:
            out.pop("md5"), out.pop("size")
    return lock


def timed_outputs_without_timings(project: Path) -> tuple[dict, str]:
    """metrics/export.json without each file's latency_ms, and the model card with its "1 image"
    column blanked: what two runs must still write byte for byte."""
    scores = json.loads((project / "metrics/export.json").read_text())
    for file in scores["files"].values():
        file.pop("latency_ms")
    card = (project / "models/MODEL_CARD.md").read_text()
    blanked, count = re.subn(r"\| \d+\.\d+ ms \|", "| ms |", card)
    assert count == len(scores["files"]), "every exported file's latency, and only those"
    return scores, blanked


def __getattr__(name: str) -> object:
    """SHIPPED_PARAMS (params.yaml as committed) and SHIPPED_PARAMS_DICT, read on first use: git
    runs when a test needs them, not when this module is imported."""
    if name == "SHIPPED_PARAMS":
        return shipped_params_text()
    if name == "SHIPPED_PARAMS_DICT":
        return _shipped_params_dict()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _shipped_params_dict() -> dict:
    return yaml.safe_load(shipped_params_text())


def params_with(dotted: str, value: object) -> dict:
    """The shipped params as a mapping, with one key set to `value`."""
    params = copy.deepcopy(_shipped_params_dict())
    set_param(params, dotted, value)
    return params


def command_env() -> dict[str, str]:
    """The environment for project commands: the venv first on PATH, TensorFlow's log quiet, and
    the repository on PYTHONPATH so that `python -m stages.<name>` also runs in a folder holding
    only a stage's inputs (in a project copy, the copy's own modules come first: the working
    folder precedes PYTHONPATH)."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run(
    cmd: list[str], cwd: Path, *, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command with the project's venv first on PATH; on failure show its output's tail."""
    result = subprocess.run(
        cmd, cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=timeout
    )
    result.output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.output[-3000:]}"
    return result


def commit_all(root: Path, message: str) -> None:
    """Commit every change in the repository at `root` (DVC experiments need a commit)."""
    run(["git", "add", "-A"], root)
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", *identity, "commit", "-qm", message], root)


def stages_that_ran(output: str) -> set[str]:
    """Stage names DVC reports as run in its output."""
    return set(re.findall(r"Running stage '(\w+)'", output))


def save_random_model(root: Path, classes: list[str], *, units: int) -> None:
    """root/models/model.keras and model.json as finetune writes them: a seeded random-init VGG16
    at 32 px under a small head, for tests of `tlpipe` that need a model but no pipeline run."""
    import keras

    from tlpipe.compute.archives import save_model
    from tlpipe.compute.training import build_head
    from tlpipe.core.backbone import build_conv_base
    from tlpipe.core.jsonfiles import save_json
    from tlpipe.core.runtime import seed_everything

    seed_everything(0)
    base = build_conv_base("vgg16", "none", image_size=32)
    head = build_head(base.output.shape[1:], len(classes), units=units, dropout=0.5)
    save_model(keras.Model(base.input, head(base.output)), root / "models/model.keras")
    save_json(
        root / "models/model.json", {"backbone": "vgg16", "image_size": 32, "classes": classes}
    )
