"""Writing files safely: every file under a temporary name in its own folder, renamed into place
when complete, so a killed stage never leaves a finished-looking half file; and the words every
refusal of a file shares."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from tlpipe.core.runtime import deleted_if_interrupted

RERUN_HINT = "delete it and run `dvc repro` again"


def _temporary_name(path: Path) -> Path:
    """A name next to `path` that no other process or workspace uses at the same time: the
    process id (so a later run can tell a dead writer's leftovers from a live one's) and a random
    part (so writers with the same pid, in containers or on another host sharing the folder, still
    differ). The real suffix stays last: Keras refuses to save a model to a name not ending in
    .keras."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _writer_is_gone(temporary: Path) -> bool:
    """Whether the process that named `temporary` (see `_temporary_name`) is no longer running."""
    match = re.search(r"\.tmp-(\d+)", temporary.name)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return True
    except PermissionError:  # running, as another user
        return False
    return False


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Readers see either the old file or the new one, never half of one (os.replace is atomic), so
    `tlpipe predict` can load models/model.keras while `dvc repro` rewrites it. Temporaries left
    by killed runs are deleted; those of writers still running (another stage, another queued
    experiment) are left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        if _writer_is_gone(stale):
            stale.unlink(missing_ok=True)
    temporary = _temporary_name(path)
    with deleted_if_interrupted(temporary):
        try:
            yield temporary
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a new empty folder next to `path`; it replaces `path` only if the block succeeds.

    A folder cannot be renamed onto a non-empty one: the old `path` is deleted just before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        if _writer_is_gone(stale):  # a killed run's, not a running writer's (see atomic_path)
            shutil.rmtree(stale, ignore_errors=True)
    temporary = _temporary_name(path)
    temporary.mkdir()
    with deleted_if_interrupted(temporary):
        try:
            yield temporary
            shutil.rmtree(path, ignore_errors=True)
            os.replace(temporary, path)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)


def readable_size(count: int) -> str:
    """A byte count for people: 812 bytes, 3.4 MB, 7.3 TB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
