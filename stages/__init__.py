"""The pipeline's DVC stages: `python -m stages.<name>`, one thin module each (see dvc.yaml)."""
