"""Stage `finetune`: unfreeze the backbone from `finetune.unfreeze_from`, retrain it with the head.

The frozen layers give the same activations every epoch, so training runs on the activations
cached at the freeze boundary by `features` (data/features/boundary/): each epoch computes only the
unfrozen block and the head. The result is saved as the full image-to-class model,
models/model.keras; per-epoch curves go to metrics/finetune/ with DVCLive.
"""

from __future__ import annotations

from pathlib import Path

import keras

from stages.backbone import boundary_layer, split_at
from stages.params import load_params
from stages.runtime import run_stage, seed_everything
from stages.storage import load_array, load_model, save_model
from stages.training import fit_logged

FEATURES_DIR = Path("data/features")
PREPARED_DIR = Path("data/prepared")
HEAD_FILE = Path("models/head.keras")
MODEL_FILE = Path("models/model.keras")
LIVE_DIR = Path("metrics/finetune")


def build_finetune_models(backbone: keras.Model, head: keras.Model, boundary: str) -> tuple[keras.Model, keras.Model]:
    """(trainable part on boundary activations, full model on images); the two share their layers.

    Layers up to and including `boundary` are frozen; everything after it, and the head, trains.
    """
    bottom, top = split_at(backbone, boundary)
    for layer in bottom.layers:
        layer.trainable = False
    activations = keras.Input(shape=top.input.shape[1:], name="boundary_activations")
    trainable = keras.Model(activations, head(top(activations)), name="finetune_top")
    full = keras.Model(backbone.input, head(backbone.output), name="finetuned")
    return trainable, full


def main() -> None:
    params = load_params()
    seed_everything(params.seed)
    backbone = load_model(FEATURES_DIR / "backbone.keras")
    head = load_model(HEAD_FILE)
    boundary = boundary_layer(backbone, params.finetune.unfreeze_from)
    trainable, full = build_finetune_models(backbone, head, boundary)

    x_train = load_array(FEATURES_DIR / "boundary" / "train.npy", mmap=False)
    y_train = load_array(PREPARED_DIR / "train_y.npy", mmap=False)
    val = (load_array(FEATURES_DIR / "boundary" / "val.npy", mmap=False), load_array(PREPARED_DIR / "val_y.npy", mmap=False))
    trainable.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=params.lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"finetune: training {sum(l.trainable for l in trainable.layers[1].layers)} backbone layers "
          f"from {params.finetune.unfreeze_from} and the head at lr={params.lr:g}")
    fit_logged(trainable, (x_train, y_train), val, params.finetune.epochs, params.finetune.batch_size,
               params.finetune.patience, LIVE_DIR)
    full.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    save_model(full, MODEL_FILE)


if __name__ == "__main__":
    run_stage(main)
