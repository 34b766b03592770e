"""The notebook recipe people run today (seed 003, Chollet's listings 5-16 to 5-23), written
plainly, for `benchmarks/versus_recipe.py` to time against the pipeline:

    python -m benchmarks.recipe <prepared folder> '<settings JSON>'

1. the conv base: keras.applications.VGG16, include_top=False, random weights here (offline);
2. `conv_base.predict` on batches of 20, features copied into preallocated arrays in memory;
3. the dense head fitted on those in-memory features (RMSprop, cross-entropy);
4. the head on top of the conv base, layers from `unfreeze_from` on made trainable, and the whole
   model fine-tuned on the images: every step recomputes the frozen blocks;
5. test accuracy of the fine-tuned model.

It reads the same prepared images and splits as the pipeline (uint8 pixels, one-hot labels) and
takes the same settings (epochs, batch sizes, learning rates, units, dropout, seed). One change
from the seed: it normalises with VGG16's preprocess_input instead of rescale=1./255, the known
bug that costs about ten points (docs/DESIGN), so that the two accuracies compare the method and
not the bug. No early stopping: the seed has none (the study gives the pipeline patience >=
epochs). Prints one JSON line: wall time of each step and the test accuracy.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import keras  # after `import tlpipe` in benchmarks/__init__.py, as in the stages
import numpy as np

BATCH = 20  # seed 003: batch_size = 20 for conv_base.predict


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 after preprocess_input, in memory (N, size, size, 3), and labels."""
    x = np.load(folder / f"{split}_x.npy").astype(np.float32)
    return keras.applications.vgg16.preprocess_input(x), np.load(folder / f"{split}_y.npy")


def extract_features(conv_base: keras.Model, x: np.ndarray) -> np.ndarray:
    """Listing 5-17: predict() on batches of 20 into a preallocated array."""
    features = np.zeros((len(x), *conv_base.output.shape[1:]), np.float32)  # (N, 4, 4, 512)
    for i in range(0, len(x), BATCH):
        features[i : i + BATCH] = conv_base.predict(x[i : i + BATCH], verbose=0)
    return features


def build_head(input_shape: tuple, classes: int, units: int, dropout: float) -> keras.Model:
    """Listing 5-18, with softmax over `classes` in place of one sigmoid."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def unfreeze(conv_base: keras.Model, unfreeze_from: str) -> None:
    """Listing 5-22: every layer from `unfreeze_from` on trains, those before it do not."""
    conv_base.trainable = True
    set_trainable = False
    for layer in conv_base.layers:
        if layer.name == unfreeze_from:
            set_trainable = True
        layer.trainable = set_trainable


def compile_rmsprop(model: keras.Model, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def recipe(folder: Path, s: dict) -> dict:
    """The five steps; `s` holds the settings (params.yaml's names). Wall time per step."""
    times, started = {}, time.perf_counter()
    keras.utils.set_random_seed(s["seed"])
    data = {split: load_split(folder, split) for split in ("train", "val", "test")}
    (x, y), (x_val, y_val), (x_test, y_test) = data["train"], data["val"], data["test"]
    conv_base = keras.applications.VGG16(weights=None, include_top=False, input_shape=x.shape[1:])
    times["load_and_build_s"] = time.perf_counter() - started
    features = {split: extract_features(conv_base, data[split][0]) for split in ("train", "val")}
    times["predict_s"] = time.perf_counter() - started - sum(times.values())
    head = build_head(conv_base.output.shape[1:], y.shape[1], s["train.units"], s["train.dropout"])
    compile_rmsprop(head, s["train.lr"])
    head.fit(
        features["train"],
        y,
        epochs=s["train.epochs"],
        batch_size=s["train.batch_size"],
        validation_data=(features["val"], y_val),
        verbose=0,
    )
    times["head_s"] = time.perf_counter() - started - sum(times.values())
    model = keras.Sequential([conv_base, head])  # listing 5-20
    unfreeze(conv_base, s["finetune.unfreeze_from"])
    compile_rmsprop(model, s["lr"])
    model.fit(
        x,
        y,
        epochs=s["finetune.epochs"],
        batch_size=s["finetune.batch_size"],
        validation_data=(x_val, y_val),
        verbose=0,
    )
    times["finetune_s"] = time.perf_counter() - started - sum(times.values())
    _, accuracy = model.evaluate(x_test, y_test, batch_size=s["evaluate.batch_size"], verbose=0)
    times["evaluate_s"] = time.perf_counter() - started - sum(times.values())
    return {
        "test_accuracy": round(float(accuracy), 4),
        "steps_s": {k: round(v, 1) for k, v in times.items()},
    }


if __name__ == "__main__":
    print(json.dumps(recipe(Path(sys.argv[1]), json.loads(sys.argv[2]))))
