from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlpipe.compute.streaming import batches
from tlpipe.compute.training import compile_classifier, fit_logged
from tlpipe.core.arrays import RowFile, open_rows
from tlpipe.core.runtime import seed_everything


def test_logged_metrics_are_those_of_the_weights_kept(tmp_path):
    # Random labels: the model memorises the training set, so validation loss rises after a while
    # and the best epoch is not the last one.
    seed_everything(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 16)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 96), 2)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x[64:], y[64:])).batch(16)
    history = fit_logged(
        model,
        train,
        val,
        epochs=12,
        patience=12,
        live_dir=tmp_path / "live",
    ).history

    best = int(np.argmin(history["val_loss"]))
    assert best < len(history["val_loss"]) - 1, "the set-up must make the last epoch not the best"
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["best_epoch"] == best + 1
    assert summary["eval"]["loss"] == history["val_loss"][best]
    assert summary["train"]["accuracy"] == history["accuracy"][best]
    # the restored weights are the ones that scored that validation loss
    assert np.isclose(
        model.evaluate(x[64:], y[64:], verbose=0)[0], history["val_loss"][best], rtol=1e-5
    )
    # the per-epoch curve dvc.yaml plots: a header and one row per epoch
    curve = (tmp_path / "live" / "plots" / "metrics" / "eval" / "loss.tsv").read_text()
    assert len(curve.splitlines()) == 1 + len(history["val_loss"])


def small_classifier() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((6, 4)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    )
    compile_classifier(model, 1e-2)
    return model


@pytest.fixture
def arrays(tmp_path) -> tuple[RowFile, RowFile, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6, 4)).astype(np.float16)  # a float16 cache, as features may store
    y = keras.utils.to_categorical(rng.integers(0, 3, 50), 3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return open_rows(tmp_path / "x.npy"), open_rows(tmp_path / "y.npy"), x, y


def test_streamed_training_equals_in_memory_training(arrays):
    x_file, y_file, x, y = arrays
    seed_everything(0)
    in_memory = small_classifier()
    in_memory.fit(x.astype(np.float32), y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    seed_everything(0)
    streamed = small_classifier()
    streamed.fit(batches(x_file, y_file, batch_size=8), epochs=3, shuffle=False, verbose=0)
    for memory_weights, streamed_weights in zip(
        in_memory.get_weights(), streamed.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(memory_weights, streamed_weights)


def test_seeded_batches_visit_every_row_once_per_epoch_in_a_new_order(arrays):
    x_file, y_file, x, _ = arrays

    def epochs(dataset: tf.data.Dataset, count: int) -> list[np.ndarray]:
        orders = []
        for _ in range(count):
            inputs = np.concatenate([batch[0].numpy() for batch in dataset])
            # which row of x each streamed row is (rows are distinct)
            orders.append(
                np.array([np.flatnonzero((x == row).all(axis=(1, 2)))[0] for row in inputs])
            )
        return orders

    first, second = epochs(batches(x_file, y_file, batch_size=8, seed=3), 2)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert not np.array_equal(first, second)
    again = epochs(batches(x_file, y_file, batch_size=8, seed=3), 2)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    other_seed = epochs(batches(x_file, y_file, batch_size=8, seed=4), 1)
    assert not np.array_equal(first, other_seed[0])
    unshuffled = epochs(batches(x_file, batch_size=8), 1)
    assert list(unshuffled[0]) == list(range(50))
