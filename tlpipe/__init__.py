"""tlpipe: a reproducible transfer-learning pipeline. The DVC stages live in `stages/`; this package
holds everything they share, and the `tlpipe` command."""

import os

# TensorFlow prints a page of C++ start-up notices at INFO level; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
