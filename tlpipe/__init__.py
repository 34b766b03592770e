"""tlpipe: a reproducible transfer-learning pipeline. The DVC stages live in `stages/`; this package
holds everything they share, and the `tlpipe` command."""

from tlpipe.startup import quiet_tensorflow_start_up

# Before anything imports TensorFlow: its start-up notices stay off the terminal (TLPIPE_VERBOSE=1
# keeps them). Only stderr changes, never an output (tlpipe/startup.py).
quiet_tensorflow_start_up()
