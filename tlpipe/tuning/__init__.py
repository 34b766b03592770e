"""Tuning on top of the pipeline: `tlpipe lr-find` (a learning-rate sweep on the cached boundary
activations) and `tlpipe tune` (an Optuna search whose every trial is a DVC experiment)."""
