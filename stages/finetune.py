"""Stage `finetune`: unfreeze the backbone from `finetune.unfreeze_from`, retrain it with the head.

The frozen layers give the same activations every epoch, so training runs on the activations
cached at the freeze boundary by `features`: each epoch computes only the unfrozen block and the
head. With `finetune.augment` the inputs change every epoch, so the cache cannot serve and every
epoch runs the full model on augmented images. Inputs stream from disk in seeded shuffled
batches. Writes the full model, models/model.keras (uint8-valued RGB pixels in, class
probabilities out; the backbone's normalisation is its first layer), with models/model.json
(backbone, input size, class names, temperature) for `tlpipe predict`, and per-epoch curves to
metrics/finetune/ with DVCLive. With `finetune.calibrate: temperature` the saved model ends in a
temperature fitted on the validation split (tlpipe/compute/temperature.py): its probabilities are
calibrated, its argmax is the trained model's.
"""

import keras
import numpy as np

from tlpipe.compute.archives import load_model, save_model
from tlpipe.compute.precision import choose_precision, computing_in
from tlpipe.compute.streaming import batches
from tlpipe.compute.temperature import (
    apply_temperature,
    fit_temperature,
    negative_log_likelihood,
    with_temperature,
)
from tlpipe.compute.training import compile_classifier, finetune_model, fit_logged, replica_scope
from tlpipe.core.arrays import RowFile, check_same_rows, load_array, open_rows
from tlpipe.core.backbone import boundary_layer, split_at
from tlpipe.core.cpu import compute_record
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import (
    BACKBONE_FILE,
    FINETUNE_COMPUTE_FILE,
    FINETUNE_LIVE_DIR,
    HEAD_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    PREPARED_DIR,
    boundary_features,
    classes_file,
    prepared_images,
    prepared_labels,
)
from tlpipe.core.runtime import run_stage, seed_everything, use_threads


def fitted_temperature(
    model: keras.Model, inputs: RowFile, labels: np.ndarray, *, batch_size: int
) -> float:
    """The temperature minimising the NLL of `model` fed `inputs` for one-hot `labels` (the
    validation split), said in a line."""
    probabilities = model.predict(batches(inputs, batch_size=batch_size), verbose=0)
    truth = labels.argmax(axis=1)
    temperature = fit_temperature(probabilities, truth)
    before = negative_log_likelihood(probabilities, truth)
    after = negative_log_likelihood(apply_temperature(probabilities, temperature), truth)
    print(
        f"finetune: temperature {temperature:g} fitted on {len(truth)} validation images "
        f"(validation loss {before:.4f} -> {after:.4f})"
    )
    return temperature


def main() -> None:
    params = load_params()
    threads = use_threads(params.thread_count)  # the weights depend on it: params `threads`
    replicas = replica_scope(params.finetune.replicas, key="finetune.replicas")
    seed_everything(params.seed)
    with replicas:
        backbone, head = load_model(BACKBONE_FILE), load_model(HEAD_FILE)
        boundary = boundary_layer(backbone, params.finetune.unfreeze_from)
        model, full = finetune_model(
            backbone, head, boundary, augment=params.finetune.augment, seed=params.seed
        )
        if params.finetune.augment:
            source = prepared_images
            print("finetune: augment is on, so every epoch runs the full model (no boundary cache)")
        else:
            source = boundary_features
        inputs = {split: open_rows(source(split)) for split in ("train", "val")}
        labels = {split: open_rows(prepared_labels(split)) for split in ("train", "val")}
        for split in ("train", "val"):
            check_same_rows({inputs[split].path: inputs[split], labels[split].path: labels[split]})

        precision = choose_precision(params.finetune.precision, stage="finetune")
        trained = sum(layer.trainable for layer in split_at(backbone, boundary)[1].layers)
        print(
            f"finetune: training {trained} backbone layers from {params.finetune.unfreeze_from} "
            f"and the head at lr={params.lr:g} in {precision}"
        )
        batch_size = params.finetune.batch_size
        with computing_in(model, precision):  # saved below as float32 layers, whatever trained
            compile_classifier(model, params.lr)
            fit_logged(
                model,
                batches(inputs["train"], labels["train"], batch_size=batch_size, seed=params.seed),
                batches(inputs["val"], labels["val"], batch_size=batch_size),
                epochs=params.finetune.epochs,
                patience=params.finetune.patience,
                live_dir=FINETUNE_LIVE_DIR,
            )

    temperature = None
    if params.finetune.calibrate == "temperature":
        val_labels = load_array(prepared_labels("val"), mmap=False)
        temperature = fitted_temperature(model, inputs["val"], val_labels, batch_size=batch_size)
        full = with_temperature(full, temperature)
    full.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    save_model(full, MODEL_FILE)
    model_info = {
        "backbone": params.backbone.name,
        "image_size": int(full.input.shape[1]),
        "classes": load_json(classes_file(PREPARED_DIR)),
        "temperature": temperature,  # null: not calibrated (finetune.calibrate: none)
    }
    save_json(MODEL_INFO_FILE, model_info)
    save_json(FINETUNE_COMPUTE_FILE, compute_record(threads=threads, precision=precision))


if __name__ == "__main__":
    run_stage(main)
