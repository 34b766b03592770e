"""Building a project for a test or the benchmark: its params, synthetic prepared arrays, and a
copy of the repository to run `dvc` in. Every path comes from `tlpipe.core.paths`.

Standard library, numpy and PyYAML only, and no work at import time: the benchmark imports this
module before TensorFlow starts.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from tlpipe.core import paths

REPO = Path(__file__).resolve().parents[1]
# Left out of a project copy: pipeline results a run may have left, and what no stage reads.
NOT_COPIED = ("benchmarks/", "docs/", "metrics/")
GIT_IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]


@functools.cache
def shipped_params_text() -> str:
    """params.yaml as committed. `make demo` is a DVC experiment: it leaves its overrides in the
    working copy's params.yaml (and writes dvc.lock, metrics/), which must not change what the
    tests see. Outside a git checkout, the working copy's file. Cached: git runs once."""
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    return committed.stdout if committed.returncode == 0 else (REPO / "params.yaml").read_text()


DELETE = object()  # as a value in a params change: remove the key


def set_param(params: dict, dotted: str, value: object) -> None:
    """Set `params["train"]["epochs"]` for dotted "train.epochs", as `dvc exp run -S` does (or
    remove the key, for `DELETE`)."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        params = params[section]
    if value is DELETE:
        del params[leaf]
    else:
        params[leaf] = value


def write_params(root: Path, changes: dict[str, object] | None = None) -> Path:
    """`root`/params.yaml: the shipped params with dotted-key `changes` ({"train.epochs": 3})."""
    params = yaml.safe_load(shipped_params_text())
    for dotted, value in (changes or {}).items():
        set_param(params, dotted, value)
    root.mkdir(parents=True, exist_ok=True)
    (root / paths.PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def write_prepared(
    root: Path, sizes: dict[str, int], image_size: int, *, classes: int = 2, seed: int = 0
) -> None:
    """data/prepared under `root` as `prepare` writes it, random: per split of `sizes`, uint8
    images (N, size, size, 3), one-hot float32 labels (N, classes) cycling through the classes,
    the index of raw rows; and classes.json. Images are written in chunks: memory stays flat."""
    rng = np.random.default_rng(seed)
    folder = root / paths.PREPARED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        shape = (n, image_size, image_size, 3)
        out = np.lib.format.open_memmap(paths.prepared_images(split, folder), "w+", np.uint8, shape)
        for start in range(0, n, 256):
            stop = min(start + 256, n)
            out[start:stop] = rng.integers(0, 256, (stop - start, *shape[1:]), dtype=np.uint8)
        out.flush()
        del out
        labels = np.eye(classes, dtype=np.float32)[np.arange(n) % classes]
        np.save(paths.prepared_labels(split, folder), labels)
        np.save(paths.prepared_index(split, folder), np.arange(n))
    names = [f"class_{index}" for index in range(classes)]
    paths.classes_file(folder).write_text(json.dumps(names))


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
        if name == "dvc.lock" or name.startswith(NOT_COPIED):
            continue
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / paths.PARAMS_FILE).write_text(shipped_params_text())
    commit_all(root, "copy", init=True)
    return root


def commit_all(root: Path, message: str, *, init: bool = False) -> None:
    """Commit every change in the repository at `root` (DVC experiments need a commit)."""
    commands = [["git", "init", "-q"]] if init else []
    commands += [["git", "add", "-A"], ["git", *GIT_IDENTITY, "commit", "-qm", message]]
    for command in commands:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=os.environ)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
