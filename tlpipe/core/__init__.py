"""What every stage needs: paths, params, the backbone table, one-line errors, seeds and threads,
and the files the pipeline writes (atomic files, .npy arrays, JSON)."""
