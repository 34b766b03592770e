"""Stage `export`: the fine-tuned model as files other programs can run, and its model card.

Writes models/export/: the `export.formats` files (by default saved_model/, a TensorFlow
SavedModel; model.tflite, model_float16.tflite and model_int8.tflite, LiteRT; model.onnx, ONNX),
each taking uint8 images of any size, (batch, height, width, 1 or 3), and returning class
probabilities (the resize of `prepare` and the backbone's normalisation are inside the graph),
and labels.txt, the class names in output order. Each file is then run on the test split by its
own runtime in a fresh process: metrics/export.json. Then models/MODEL_CARD.md: data, params,
test scores per class, input contract, each file's scores and how to load it, limits. Runs after
`evaluate`, whose scores the card reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.compute.archives import load_model, load_model_info
from tlpipe.compute.streaming import batches
from tlpipe.core.arrays import load_array, open_rows
from tlpipe.core.export_formats import FORMATS, check_runtimes, formats_to_build
from tlpipe.core.files import atomic_folder, atomic_path
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import Params, load_params
from tlpipe.core.paths import (
    EXPORT_DIR,
    EXPORT_SCORES_FILE,
    FEATURES_COMPUTE_FILE,
    FINETUNE_COMPUTE_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    PER_CLASS_FILE,
    SPLITS,
    TRAIN_COMPUTE_FILE,
    prepared_images,
    prepared_labels,
)
from tlpipe.core.runtime import run_stage
from tlpipe.outputs.card import model_card
from tlpipe.outputs.export import export_model, remove_unrequested, use_pure_python_protobuf
from tlpipe.outputs.export_scores import score_exports
from tlpipe.outputs.quantize import calibration_sample

if TYPE_CHECKING:
    import keras

REFERENCE_BATCH = 64  # test images per forward pass of the Keras model (its answers to compare)


def int8_calibration(params: Params) -> np.ndarray | None:
    """The int8 formats' calibration sample of training images, or None without int8 formats."""
    if not any(FORMATS[name].calibrated for name in formats_to_build(params.export.formats)):
        return None
    train_images = load_array(prepared_images("train"))  # memory-mapped: the sample is read
    return calibration_sample(train_images, params.export.calibration_images, params.seed)


def keras_answers(model: keras.Model, images: Path) -> np.ndarray:
    """The Keras model's class (n,) for each image of the .npy file `images`: what every exported
    file should answer too."""
    probabilities = model.predict(batches(open_rows(images), batch_size=REFERENCE_BATCH), verbose=0)
    return probabilities.argmax(axis=1)


def main() -> None:
    use_pure_python_protobuf()  # before TensorFlow loads: see its docstring
    params = load_params()
    formats = params.export.formats
    check_runtimes(formats)
    calibration = int8_calibration(params)
    # Everything the card needs is read first: a missing input stops the stage before the export.
    info = load_model_info(MODEL_INFO_FILE)
    metrics, per_class = load_json(METRICS_FILE), load_json(PER_CLASS_FILE)
    split_sizes = {split: len(load_array(prepared_labels(split))) for split in SPLITS}
    computed_on = {
        stage: load_json(path)
        for stage, path in (
            ("features", FEATURES_COMPUTE_FILE),
            ("train", TRAIN_COMPUTE_FILE),
            ("finetune", FINETUNE_COMPUTE_FILE),
        )
    }
    model = load_model(MODEL_FILE)

    size, class_names = info["image_size"], info["classes"]
    with atomic_folder(EXPORT_DIR) as folder:
        export_model(
            model,
            folder,
            image_size=size,
            class_names=class_names,
            formats=formats,
            calibration=calibration,
        )
        # Checked before they replace the last export: a file that fails leaves that one whole.
        labels = load_array(prepared_labels("test")).argmax(axis=1)
        test_images = prepared_images("test")
        answers = keras_answers(model, test_images)
        export_scores = score_exports(folder, formats, test_images, labels, answers)
        remove_unrequested(folder, formats)
    save_json(EXPORT_SCORES_FILE, export_scores)
    card = model_card(
        params=params,
        class_names=class_names,
        image_size=size,
        metrics=metrics,
        per_class=per_class,
        split_sizes=split_sizes,
        parameter_count=model.count_params(),
        export_scores=export_scores,
        computed_on=computed_on,
    )
    with atomic_path(MODEL_CARD_FILE) as temporary:
        temporary.write_text(card)
    print(
        f"export: {', '.join(formats)} (uint8 images of any size -> {size}x{size} inside, "
        f"{len(class_names)} class probabilities out) -> {EXPORT_DIR}/; {EXPORT_SCORES_FILE}; "
        f"{MODEL_CARD_FILE}"
    )


if __name__ == "__main__":
    run_stage(main)
