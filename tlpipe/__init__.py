"""tlpipe: a reproducible transfer-learning pipeline. The DVC stages live in `stages/`; this package
holds everything they share, and the `tlpipe` command."""

from tlpipe.core.cpu import use_onednn
from tlpipe.startup import quiet_tensorflow_start_up

# Before anything imports TensorFlow: oneDNN's kernels on every x86 CPU (unless the user set
# TF_ENABLE_ONEDNN_OPTS), so that results do not depend on the CPU kind or the thread count
# (tlpipe/core/cpu.py); and TensorFlow's start-up notices off the terminal (TLPIPE_VERBOSE=1 keeps
# them), which changes only stderr (tlpipe/startup.py).
use_onednn()
quiet_tensorflow_start_up()
