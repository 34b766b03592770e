"""Stage `finetune`: unfreeze the backbone from `finetune.unfreeze_from`, retrain it with the head.

The frozen layers give the same activations every epoch, so training runs on the activations
cached at the freeze boundary by `features` (data/features/boundary/): each epoch computes only the
unfrozen block and the head. With `finetune.augment` the inputs change every epoch, so the cache
cannot serve and every epoch runs the full model on augmented images. The result is saved as the
full image-to-class model, models/model.keras, with models/model.json (backbone, input size, class
names) for `tlpipe predict`; per-epoch curves go to metrics/finetune/ with DVCLive.
"""

from __future__ import annotations

from pathlib import Path

import keras

from stages.backbone import boundary_layer, split_at
from stages.params import load_params
from stages.runtime import run_stage, seed_everything
from stages.storage import check_same_rows, load_array, load_json, load_model, save_json, save_model
from stages.training import fit_logged

FEATURES_DIR = Path("data/features")
PREPARED_DIR = Path("data/prepared")
HEAD_FILE = Path("models/head.keras")
MODEL_FILE = Path("models/model.keras")
MODEL_INFO_FILE = Path("models/model.json")
LIVE_DIR = Path("metrics/finetune")


def build_finetune_models(backbone: keras.Model, head: keras.Model, boundary: str) -> tuple[keras.Model, keras.Model]:
    """(trainable part on boundary activations, full model on images); the two share their layers.

    Layers up to and including `boundary` are frozen; everything after it, and the head, trains,
    except BatchNormalization layers: they stay frozen, in inference mode, so that small
    fine-tuning batches do not overwrite the statistics the backbone learned.
    """
    bottom, top = split_at(backbone, boundary)
    for layer in bottom.layers:
        layer.trainable = False
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    activations = keras.Input(shape=top.input.shape[1:], name="boundary_activations")
    trainable = keras.Model(activations, head(top(activations)), name="finetune_top")
    full = keras.Model(backbone.input, head(backbone.output), name="finetuned")
    return trainable, full


def compile_for_finetuning(model: keras.Model, lr: float) -> None:
    """RMSprop at the fine-tuning learning rate, cross-entropy loss, accuracy."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def build_augmentation(seed: int) -> keras.Sequential:
    """Seed 003's augmentation with Keras preprocessing layers: flips, small shifts, rotations, zoom."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 1),
            keras.layers.RandomRotation(0.05, seed=seed + 2),
            keras.layers.RandomZoom(0.1, seed=seed + 3),
        ],
        name="augmentation",
    )


def main() -> None:
    params = load_params()
    seed_everything(params.seed)
    backbone = load_model(FEATURES_DIR / "backbone.keras")
    head = load_model(HEAD_FILE)
    boundary = boundary_layer(backbone, params.finetune.unfreeze_from)
    trainable, full = build_finetune_models(backbone, head, boundary)
    labels = {split: load_array(PREPARED_DIR / f"{split}_y.npy", mmap=False) for split in ("train", "val")}

    if params.finetune.augment:
        images = full.input.shape[1:]
        model = keras.Sequential([keras.Input(shape=images), build_augmentation(params.seed), full], name="augmented")
        sources = {split: PREPARED_DIR / f"{split}_x.npy" for split in labels}
        print("finetune: augment is on, so every epoch runs the full model (the boundary cache cannot serve)")
    else:
        model = trainable
        sources = {split: FEATURES_DIR / "boundary" / f"{split}.npy" for split in labels}
    inputs = {split: load_array(path, mmap=False) for split, path in sources.items()}
    for split, path in sources.items():
        check_same_rows({path: inputs[split], PREPARED_DIR / f"{split}_y.npy": labels[split]})

    compile_for_finetuning(model, params.lr)
    trained = sum(layer.trainable for layer in trainable.layers[1].layers)
    print(f"finetune: training {trained} backbone layers from {params.finetune.unfreeze_from} "
          f"and the head at lr={params.lr:g}")
    fit_logged(model, (inputs["train"], labels["train"]), (inputs["val"], labels["val"]), params.finetune.epochs,
               params.finetune.batch_size, params.finetune.patience, LIVE_DIR, "Fine-tuning")

    full.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    save_model(full, MODEL_FILE)
    save_json(MODEL_INFO_FILE, {
        "backbone": params.backbone.name,
        "image_size": int(full.input.shape[1]),
        "classes": load_json(PREPARED_DIR / "classes.json"),
    })


if __name__ == "__main__":
    run_stage(main)
