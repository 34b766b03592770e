"""Stage `train`: the dense head (Flatten -> Dense -> Dropout -> softmax) on cached conv features.

The seed-003 classifier, trained on data/features/head/ with early stopping; writes
models/head.keras and per-epoch loss/accuracy (train and val) to metrics/train/ with DVCLive.
"""

from __future__ import annotations

from pathlib import Path

import keras

from stages.params import TrainParams, load_params
from stages.runtime import run_stage, seed_everything
from stages.storage import check_same_rows, load_array, save_model
from stages.training import fit_logged

HEAD_FEATURES_DIR = Path("data/features/head")
PREPARED_DIR = Path("data/prepared")
HEAD_FILE = Path("models/head.keras")
LIVE_DIR = Path("metrics/train")


def build_head(input_shape: tuple[int, ...], n_classes: int, params: TrainParams) -> keras.Model:
    """Flatten -> Dense(units, relu) -> Dropout -> Dense(n_classes, softmax)."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(params.units, activation="relu"),
            keras.layers.Dropout(params.dropout),
            keras.layers.Dense(n_classes, activation="softmax"),
        ],
        name="head",
    )


def main() -> None:
    params = load_params()
    seed_everything(params.seed)
    x_train = load_array(HEAD_FEATURES_DIR / "train.npy", mmap=False)
    y_train = load_array(PREPARED_DIR / "train_y.npy", mmap=False)
    val = (load_array(HEAD_FEATURES_DIR / "val.npy", mmap=False), load_array(PREPARED_DIR / "val_y.npy", mmap=False))
    check_same_rows({HEAD_FEATURES_DIR / "train.npy": x_train, PREPARED_DIR / "train_y.npy": y_train})
    check_same_rows({HEAD_FEATURES_DIR / "val.npy": val[0], PREPARED_DIR / "val_y.npy": val[1]})

    head = build_head(x_train.shape[1:], y_train.shape[1], params.train)
    head.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=params.train.lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit_logged(head, (x_train, y_train), val, params.train.epochs, params.train.batch_size,
               params.train.patience, LIVE_DIR, "Dense head")
    save_model(head, HEAD_FILE)


if __name__ == "__main__":
    run_stage(main)
