"""What every stage's entry point shares: one-line errors, Ctrl-C handling, seeding and threads."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tlpipe.core.cpu import usable_cores

OFFLINE_DEMO = "make demo"  # named in every error caused by having no network
INTERRUPTED = "interrupted: no output was finished; rerun `dvc repro` to continue"
# Half-written outputs, deleted if the stage is interrupted. Only `deleted_if_interrupted` adds and
# removes entries; a signal handler can reach nothing but process-wide state, hence a module set.
_TEMPORARIES: set[Path] = set()


class UserError(Exception):
    """A problem the user can fix (bad params, missing file, no network): shown as one line."""


def first_line(error: Exception) -> str:
    """The first non-blank line of a library's error message, for a one-line UserError."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _stop_now(message: str, signum: int, frame: object) -> None:
    """Ctrl-C: delete the half-written outputs and exit at once.

    Raising KeyboardInterrupt instead is not safe: it lands in whatever Python code runs next, often
    a callback inside TensorFlow's C++ (tracing, nest.flatten), which prints a traceback of its own
    and turns it into a TypeError.
    """
    for path in list(_TEMPORARIES):
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    with contextlib.suppress(Exception):  # the handler may run inside a write to stdout
        sys.stdout.flush()
    os.write(2, f"\n{message}\n".encode())
    os._exit(130)


@contextlib.contextmanager
def deleted_if_interrupted(path: Path) -> Iterator[Path]:
    """Within the block, Ctrl-C (run_stage's handler) deletes `path`, a file or folder being
    written; the one way outputs are registered for it (atomic_path, atomic_folder, provisional)."""
    _TEMPORARIES.add(path)
    try:
        yield path
    finally:
        _TEMPORARIES.discard(path)


def run_stage(main: Callable[[], None], interrupted: str = INTERRUPTED) -> None:
    """Run a stage's main(); turn user errors and Ctrl-C into one line and a non-zero exit."""
    handling = (
        threading.current_thread() is threading.main_thread()
    )  # only there can signals be handled
    previous = (
        signal.signal(signal.SIGINT, functools.partial(_stop_now, interrupted))
        if handling
        else None
    )
    try:
        main()
    except UserError as error:
        for line in str(error).splitlines():  # one line per problem (params.yaml may hold several)
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # raised by code rather than by Ctrl-C
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def use_threads(threads: int | None) -> int:
    """Compute with `threads` threads (intra- and inter-op), or None: TensorFlow's default, one
    per usable core. The number in use. Call before TensorFlow runs an op.

    Training's result depends on it even with oneDNN (gradient sums split across threads), so
    `threads` in params.yaml lets a team pin it; features and predictions do not (docs/trusted.md).
    """
    if threads is None:
        return usable_cores()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return threads
