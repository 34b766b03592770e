from __future__ import annotations

import json

import keras
import numpy as np

from tlpipe.runtime import seed_everything
from tlpipe.training import fit_logged


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
    history = fit_logged(
        model,
        (x[:64], y[:64]),
        (x[64:], y[64:]),
        epochs=12,
        batch_size=16,
        patience=12,
        live_dir=tmp_path / "live",
        title="t",
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
    assert (tmp_path / "live" / "curves.png").stat().st_size > 0
