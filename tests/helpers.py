"""What many tests share: the project's location, its shipped params, running commands in a copy
of it.

Tests run offline: no dataset or weight download is ever attempted. Fixtures are in conftest.py.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# `check` runs on every `dvc repro` and `dvc exp run` (always_changed: stages/check.py), so it is
# among the stages run even when nothing else is, and `dvc status` always lists it.
ALWAYS_RUN = frozenset({"check"})
ALL_STAGES = ALWAYS_RUN | frozenset(
    {"download", "prepare", "features", "train", "finetune", "evaluate", "export"}
)
UP_TO_DATE = {"check": ["always changed"]}  # `dvc status --json` when there is nothing to do
# The offline configuration, as small as still learns: for tests that run the pipeline several
# times.
OFFLINE = ["-S", "data.dataset=digits", "-S", "backbone.weights=none"]
TINY = ["-S", "data.limit=400", "-S", "train.epochs=3", "-S", "finetune.epochs=2"]


def shipped_params_text() -> str:
    """params.yaml as committed. `make demo` is a DVC experiment: it leaves its overrides in the
    working copy's params.yaml (and writes dvc.lock, metrics/), which must not change what the
    tests see. Outside a git checkout, the working copy's file."""
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    return committed.stdout if committed.returncode == 0 else (REPO / "params.yaml").read_text()


SHIPPED_PARAMS = shipped_params_text()
SHIPPED_PARAMS_DICT = yaml.safe_load(SHIPPED_PARAMS)


def set_param(params: dict, dotted: str, value: object) -> None:
    """Set `params["train"]["epochs"]` for dotted "train.epochs", as `dvc exp run -S` does."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        params = params[section]
    params[leaf] = value


def params_with(dotted: str, value: object) -> dict:
    """The shipped params as a mapping, with one key set to `value`."""
    params = copy.deepcopy(SHIPPED_PARAMS_DICT)
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


def copy_project(root: Path) -> Path:
    """A new git repository at `root` holding the project's code as it is in the working tree.

    Pipeline results a run may have left (dvc.lock, metrics/) are not copied, and params.yaml is
    the committed one (see `shipped_params_text`).
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        if name == "dvc.lock" or name.startswith(("benchmarks/", "docs/", "metrics/")):
            continue
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(SHIPPED_PARAMS)
    run(["git", "init", "-q"], root)
    commit_all(root, "copy")
    return root


def save_random_model(root: Path, classes: list[str], *, units: int) -> None:
    """root/models/model.keras and model.json as finetune writes them: a seeded random-init VGG16
    at 32 px under a small head, for tests of `tlpipe` that need a model but no pipeline run."""
    import keras

    from tlpipe.backbone import build_conv_base
    from tlpipe.runtime import seed_everything
    from tlpipe.storage import save_json, save_model
    from tlpipe.training import build_head

    seed_everything(0)
    base = build_conv_base("vgg16", "none", image_size=32)
    head = build_head(base.output.shape[1:], len(classes), units=units, dropout=0.5)
    save_model(keras.Model(base.input, head(base.output)), root / "models/model.keras")
    save_json(
        root / "models/model.json", {"backbone": "vgg16", "image_size": 32, "classes": classes}
    )
