"""Training images whose label looks wrong: confident learning on out-of-sample probabilities.

cleanlab needs each image's class probabilities from a model that did not train on it. Here they
cost seconds, because every image's frozen features are cached: the training split's come from
`folds` dense heads, each trained on the other folds' cached head features with the `train`
stage's builder and settings (units, dropout, optimizer, lr, loss, batch size) for the epochs its
best head took;
the validation split's come from the `train` stage's head itself, which never trained on them.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlpipe.compute.streaming import batches
from tlpipe.compute.training import build_head, compile_classifier
from tlpipe.core.arrays import RowFile, array_writer, open_rows, read_rows
from tlpipe.core.params import TrainParams
from tlpipe.core.runtime import UserError, seed_everything


def fold_rows(
    labels: np.ndarray, class_names: list[str], *, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows to train on, rows to predict) of each fold, stratified by class and seeded."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < folds:
        smallest = class_names[int(counts.argmin())]
        raise UserError(
            f"analyze.folds: {folds} folds need at least {folds} training images in every class; "
            f"{smallest!r} has {counts.min()}. Add images to it, or lower analyze.folds (>= 2)"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (np.sort(fit), np.sort(held))
        for fit, held in splitter.split(np.zeros((len(labels), 1)), labels)
    ]


def out_of_fold_probabilities(
    features: RowFile,
    onehot: RowFile,
    class_names: list[str],
    scratch: Path,
    *,
    folds: int,
    epochs: int,
    train: TrainParams,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """(N, C) class probabilities of every row of `features`, each from the one head of `folds`
    that did not train on it. Streams from disk: memory holds the (N, C) result, not the rows.

    The `folds` heads train together, one step of all of them per batch: each head's loss is the
    mean cross-entropy over the batch's rows outside its fold, so it sees batches of about
    (folds - 1) / folds * train.batch_size of its own rows. One pass over the data per epoch
    instead of `folds - 1`, and one TensorFlow call per step instead of `folds`; otherwise the
    same math as fitting each head on its own.
    """
    labels = read_rows(onehot, np.arange(len(onehot))).argmax(axis=1)
    fold_of = np.zeros(len(labels), np.int64)
    for fold, (_, held) in enumerate(fold_rows(labels, class_names, folds=folds, seed=seed)):
        fold_of[held] = fold
    # one-hot label and fold of each row, as one file the batches read alongside the features
    targets = scratch / "targets.npy"
    with array_writer(targets, (len(labels), len(class_names) + 1), np.float32) as out:
        out[:, :-1] = np.eye(len(class_names), dtype=np.float32)[labels]
        out[:, -1] = fold_of
    seed_everything(seed)  # every head's initial weights and dropout, reproducibly
    heads = []
    for _ in range(folds):
        head = build_head(
            features.shape[1:], len(class_names), units=train.units, dropout=train.dropout
        )
        compile_classifier(head, train.lr)  # its optimizer and loss: the train stage's
        heads.append(head)
    step = _training_step(heads)
    data = batches(features, open_rows(targets), batch_size=train.batch_size, seed=seed)
    every = -(-epochs // 5)  # progress in about five lines, the last epoch's always
    for epoch in range(epochs):
        losses = np.mean([step(x, t).numpy() for x, t in data], axis=0)
        if (epoch + 1) % every and epoch + 1 != epochs:
            continue
        print(
            f"analyze: epoch {epoch + 1}/{epochs} of {folds} fold heads, mean training loss "
            f"{losses.mean():.4f}",
            flush=True,
        )
    probabilities = np.zeros((len(labels), len(class_names)), np.float32)
    predict = tf.function(lambda x: tf.stack([head(x, training=False) for head in heads], 1))
    at = 0
    for (x,) in batches(features, batch_size=batch_size):
        rows = np.arange(at, at + len(x))
        probabilities[rows] = predict(x).numpy()[np.arange(len(x)), fold_of[rows]]  # (B, K, C)
        at += len(x)
    return probabilities


def _training_step(heads: list[keras.Model]):
    """One compiled step of every head on a batch (x, targets): targets' last column is each row's
    fold, which that fold's head does not train on. Returns each head's loss (K,)."""
    variables = [head.trainable_variables for head in heads]
    for head, weights in zip(heads, variables, strict=True):
        head.optimizer.build(weights)  # its slots now: a tf.function may create variables once
    loss = keras.losses.get(heads[0].loss)

    @tf.function(reduce_retracing=True)  # one trace, and one more for a short last batch
    def step(x: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        y, fold = targets[:, :-1], tf.cast(targets[:, -1], tf.int64)
        with tf.GradientTape() as tape:
            per_head = []
            for k, head in enumerate(heads):
                keep = tf.cast(fold != k, tf.float32)  # (B,)
                per_row = loss(y, head(x, training=True))  # (B,)
                per_head.append(tf.reduce_sum(per_row * keep) / tf.maximum(tf.reduce_sum(keep), 1))
        gradients = tape.gradient(per_head, variables)
        for head, grads, weights in zip(heads, gradients, variables, strict=True):
            head.optimizer.apply_gradients(zip(grads, weights, strict=True))
        return tf.stack(per_head)

    return step


def rank_label_issues(
    labels: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows cleanlab flags as label issues, most likely first; every row's label quality in
    [0, 1], low = likely wrong). Confident learning: cleanlab's `find_label_issues` with its
    default prune-by-noise-rate filter, ranked by self-confidence (the probability of the given
    label), single-process so that the result does not depend on the machine."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probabilities = probabilities.astype(np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # exactly 1, as cleanlab checks
    ranked = find_label_issues(
        labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return np.asarray(ranked, dtype=np.int64), quality
