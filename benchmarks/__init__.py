"""The maintained acceptance benchmark of tlpipe: one module per study, a harness and a table.

`python -m benchmarks [--quick] [--only features,memory]` or `python benchmarks/run.py`; see
run.py. Importing this package imports `tlpipe` first, before anything imports TensorFlow, as the
stages do: oneDNN on for every x86 CPU and TensorFlow's start-up notices off (tlpipe/startup.py).
"""

import tlpipe  # noqa: F401
