"""Batches read from .npy files as a model asks for them, so that training and prediction use
memory that does not grow with the number of images."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tlpipe.core.arrays import RowFile, read_rows


def batches(
    x: RowFile,
    y: RowFile | None = None,
    *,
    batch_size: int,
    seed: int | None = None,
    rows: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A dataset of (x, y) batches (x alone without `y`), float32, read from disk per batch.

    `rows` (ascending) limits it to those rows of the files, e.g. one fold of a cross-validation;
    by default, every row.

    With a `seed`, each pass over the dataset (each epoch of `fit`) visits the rows in a new
    order, drawn from the seed and the pass's number: two runs see the same orders. Without, the
    rows come in file order (prediction, validation). Rows are read in ascending order within a
    batch, so that neighbouring rows are read together; the next batch is read while the model
    works on this one.
    """
    if y is not None and len(y) != len(x):
        raise ValueError(f"{x.path} has {len(x)} rows but {y.path} has {len(y)}")
    chosen = np.arange(len(x)) if rows is None else np.asarray(rows)
    n = len(chosen)
    passes = itertools.count()

    def generate() -> Iterator[tuple[np.ndarray, ...]]:
        order = chosen
        if seed is not None:
            order = chosen[np.random.default_rng([seed, next(passes)]).permutation(n)]
        for start in range(0, n, batch_size):
            rows = np.sort(order[start : start + batch_size])
            inputs = read_rows(x, rows).astype(np.float32, copy=False)
            yield (inputs,) if y is None else (inputs, read_rows(y, rows).astype(np.float32))

    spec = [tf.TensorSpec((None, *x.shape[1:]), tf.float32)]
    if y is not None:
        spec.append(tf.TensorSpec((None, *y.shape[1:]), tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=tuple(spec))
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    return dataset.prefetch(2)
