"""What runs before a stage's or `tlpipe`'s own code: TensorFlow's start-up notices kept off the
terminal, and a check that `python` is an interpreter the project is installed in.

Standard library only: `tlpipe/__init__.py` and `stages/__init__.py` call this before anything
imports TensorFlow, and under any `python` a stage command may find. Nothing here can change an
output, which is why no stage declares this module as a dependency.

The start-up lines and where each comes from (TensorFlow 2.21, CPU):

- `cpu_feature_guard.cc ... This TensorFlow binary is optimized to use ...`, `generator_dataset_op
  ... Memory patch applied`, cuda stubs' notices: TensorFlow's C++ log at INFO level, which
  TF_CPP_MIN_LOG_LEVEL=1 drops (warnings and errors still show).
- `port.cc ... oneDNN custom operations are on ...`, preceded by absl's `WARNING: All log messages
  before absl::InitializeLog() is called are written to STDERR`: printed once by each of two of
  TensorFlow's libraries while `import tensorflow` loads them, through absl's logging before
  TensorFlow applies TF_CPP_MIN_LOG_LEVEL; no setting silences them short of turning oneDNN off
  (TF_ENABLE_ONEDNN_OPTS=0, which changes speed and results). So while TensorFlow imports, stderr
  goes to a temporary file, and every line but these INFO-level ones is written back afterwards.

TLPIPE_VERBOSE=1 leaves all of it alone: TensorFlow logs as it would on its own.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator, Sequence

VERBOSE = "TLPIPE_VERBOSE"
# Third-party modules every stage imports (tlpipe/core/params.py, arrays.py, normalization.py).
STAGE_MODULES = ("numpy", "yaml", "pydantic", "keras")
# absl's banner before its first message, and absl INFO records ("I<mmdd> <hh:mm:ss.us> <thread>
# <file>:<line>] ...", before absl is initialised "I0000 00:00:<epoch seconds>..."): what
# TF_CPP_MIN_LOG_LEVEL=1 would drop had it applied yet.
START_UP_NOTICE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    rb"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "
)
# What TensorFlow's LiteRT converter and interpreter print while the export stage converts: the
# converter's warnings about options it ignores, the interpreter's XNNPACK delegate notice, and
# the quantizer's settings line and its note on version metadata (quantized LiteRT files).
# Where `import tensorflow` logged nothing through absl (oneDNN off: TF_ENABLE_ONEDNN_OPTS=0, or
# a CPU without AVX-512), absl's banner comes here instead, before the converter's first warning.
CONVERTER_NOTICE = re.compile(
    rb"W\d{4} \d\d:\d\d:\d+\.\d+ +\d+ tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored "
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
    rb"output_inference_type: \w+$"
    rb"|W\d{4} \d\d:\d\d:\d+\.\d+ +\d+ flatbuffer_export\.cc:\d+\] Skipping runtime version "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
)


def verbose() -> bool:
    """Whether the user asked for TensorFlow's own logs (TLPIPE_VERBOSE set, and not to 0)."""
    return os.environ.get(VERBOSE, "0").strip() not in ("", "0")


def quiet_tensorflow_start_up() -> None:
    """Unless TLPIPE_VERBOSE is set: TensorFlow's C++ INFO lines off, and the notices it prints
    while it loads dropped. Call before anything imports TensorFlow; calling again does nothing."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules or any(
        isinstance(finder, QuietTensorFlowImport) for finder in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, QuietTensorFlowImport())


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way, once, and runs its import with the notices dropped."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import; and the search below must not find this finder
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = QuietLoader(spec.loader)
        return spec


class QuietLoader(importlib.abc.Loader):
    """Runs a module's import with `start_up_notices_dropped`, as its own loader otherwise would."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # The module sees its real loader (importlib.resources and lazy loaders use it).
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with start_up_notices_dropped():
            self.loader.exec_module(module)


@contextlib.contextmanager
def start_up_notices_dropped(notice: re.Pattern[bytes] = START_UP_NOTICE) -> Iterator[None]:
    """Send stderr (the file descriptor: C++ writes there directly) to a temporary file for the
    block, then write back every line that does not match `notice`, in order. With
    TLPIPE_VERBOSE set, nothing is dropped."""
    if verbose():
        yield
        return
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(
                line
                for line in captured.read().splitlines(keepends=True)
                if not notice.match(line.rstrip(b"\r\n"))
            )
            with contextlib.suppress(OSError):
                while kept:
                    kept = kept[os.write(2, kept) :]


def require_project_environment(modules: Sequence[str] = STAGE_MODULES) -> None:
    """Stop with one line if this interpreter lacks the packages every stage imports.

    DVC runs each stage's `python3 -m stages.<name>` through the shell, so `python3` is whichever
    the PATH finds first: calling `.venv/bin/dvc` without activating the venv gives the system's,
    which has none of the project's packages. (The project's own metadata is no test: run in the
    project folder, any Python finds tlpipe.egg-info there.)
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: `python3` here is {sys.executable}, which lacks the project's packages "
            f"(no {', '.join(missing)}): activate the project's venv (`. .venv/bin/activate`) and "
            "run the command again, or use `make demo`",
            file=sys.stderr,
        )
        sys.exit(2)
