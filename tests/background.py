"""Commands started in the background (a pipeline to interrupt): their output as it comes, the
processes they started, and waiting for a condition while they run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil  # installed with dvc

from tests.helpers import command_env


class Running:
    """A command started in the background whose merged output is collected as it comes."""

    def __init__(self, command: list[str], cwd: Path, *, own_group: bool = False):
        """`own_group`: in a process group of its own, which `interrupt` signals as Ctrl-C in a
        terminal signals the whole foreground group (the command and every child)."""
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            start_new_session=own_group,
            env={**command_env(), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stage_process(self, stage: str) -> psutil.Process | None:
        """The running `python -m stages.<stage>` started by this command, if any."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                if child.cmdline()[-2:] == ["-m", f"stages.{stage}"]:
                    return child
            except psutil.NoSuchProcess:
                continue
        return None

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the command's process group (started with `own_group`)."""
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exception) -> None:
        """If still running (a failed test), kill the command and every process it started."""
        if self.process.poll() is None:
            try:
                tree = psutil.Process(self.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            self.process.kill()
            self.wait()


def wait_for(
    condition: Callable[[], object], running: Running, what: str, *, timeout: float = 300
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert running.process.poll() is None, f"finished before {what}:\n{running.output[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}:\n{running.output[-3000:]}")
