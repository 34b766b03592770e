"""The pipeline's stages (`python -m stages.<name>`) and the few modules they share."""

import os

# TensorFlow prints a page of C++ start-up notices at INFO level; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
