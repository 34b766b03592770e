"""DVC from the tuning commands: which stages are out of date, and running DVC's command line in
a child process with this environment's `python3` first on PATH (the stages' commands use it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tlpipe.core.runtime import UserError, first_line

ALWAYS_RUN = frozenset({"check"})  # stages/check.py runs on every repro: never a reason to rerun


def stale_stages(target: str) -> list[str]:
    """The stages up to and including `target` whose inputs changed since their last run."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            changed = repo.status(targets=[target], with_deps=True)
    except DvcException as error:
        raise UserError(f"dvc status {target}: {first_line(error)}") from None
    return [name.rsplit(":", 1)[-1] for name in changed if name not in ALWAYS_RUN]


def child_env() -> dict[str, str]:
    """This environment with this interpreter's folder first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path}


def run_dvc(args: list[str], *, capture: bool = False) -> subprocess.CompletedProcess:
    """`dvc ARGS` (through tlpipe.outputs.dvcrun), its output shown as it comes unless `capture`;
    a failure is one UserError naming the command."""
    command = [sys.executable, "-m", "tlpipe.outputs.dvcrun", *args]
    done = subprocess.run(command, env=child_env(), capture_output=capture, text=True)
    if done.returncode:
        tail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise UserError(f"`dvc {' '.join(args)}` failed{': ' + tail[0] if tail else ''}")
    return done
