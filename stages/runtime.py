"""What every stage's entry point shares: one-line errors, Ctrl-C handling, and seeding."""

from __future__ import annotations

import sys
from collections.abc import Callable


OFFLINE_DEMO = "make demo"  # named in every error caused by having no network


class UserError(Exception):
    """A problem the user can fix (bad params, missing file, no network): shown as one line."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn user errors and Ctrl-C into one line and a non-zero exit."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output was finished; rerun `dvc repro` to continue", file=sys.stderr)
        sys.exit(130)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
