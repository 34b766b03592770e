"""What the pipeline gives people: scores and reports, the model card, the exports, the `tlpipe`
command and its review."""
