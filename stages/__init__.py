"""The pipeline's DVC stages: `python -m stages.<name>`, one thin module each (see dvc.yaml)."""

from tlpipe.startup import quiet_tensorflow_start_up, require_project_environment

# Runs before a stage module imports anything: `python` must be the project's interpreter, and
# TensorFlow's start-up notices stay off the terminal. Neither can change an output.
require_project_environment()
quiet_tensorflow_start_up()
