"""Stage `evaluate`: test-split scores of the head alone and of the fine-tuned model, and a report.

Writes metrics/evaluate.json (the numbers `dvc metrics diff` compares) and, under
metrics/report/: per-class precision/recall/F1/support (per_class.json and per_class.md),
confusion.csv (rendered by `dvc plots show` with the confusion template), confusion.png, and
samples.png (test images with predicted and true labels, misclassified first), and the
reliability diagram (reliability.csv and .png) of the fine-tuned model before and after its
temperature, whose expected calibration errors are `finetuned.ece_uncalibrated` and
`finetuned.ece`. The fine-tuned model's test probabilities go to data/predictions/test.npy, for
`analyze`. With `evaluate.tta: flip` they are the mean of each image's and its mirror's
(tlpipe/compute/tta.py), and `finetuned.tta` says so; the head alone is scored on the cached
features of the images as they are. With `none` the key is left out, so the default writes the
bytes it wrote before test-time augmentation existed.
"""

import numpy as np

from tlpipe.compute.archives import load_model, load_model_info
from tlpipe.compute.streaming import batches
from tlpipe.compute.temperature import apply_temperature
from tlpipe.compute.tta import predict_probabilities
from tlpipe.core.arrays import check_same_rows, load_array, open_rows, save_array
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import (
    HEAD_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    PREPARED_DIR,
    REPORT_DIR,
    TEST_PROBABILITIES_FILE,
    classes_file,
    head_features,
    prepared_images,
    prepared_index,
    prepared_labels,
    raw_images,
)
from tlpipe.core.runtime import run_stage
from tlpipe.outputs.calibration import calibration_bins, ece_of_bins, write_reliability
from tlpipe.outputs.report import scores, write_report


def raw_test_images(rows: np.ndarray) -> np.ndarray:
    """The raw (un-normalised) images at `rows` of the test split, for showing to people."""
    source = raw_images("test") if raw_images("test").exists() else raw_images("train")
    raw_rows = load_array(prepared_index("test"), mmap=False)[rows]
    return np.asarray(load_array(source)[raw_rows])


def calibration_scores(
    truth: np.ndarray, probabilities: np.ndarray, temperature: float | None
) -> dict[str, float]:
    """{temperature, ece, ece_uncalibrated} of the test `probabilities` of a model ending in
    `temperature` (None: no temperature), and reliability.csv/.png under the report folder."""
    curves = {"fine-tuned": probabilities}
    if temperature is not None:  # the trained model's own probabilities, the temperature undone
        curves = {"uncalibrated": apply_temperature(probabilities, 1 / temperature), **curves}
    binned = {label: calibration_bins(truth, p) for label, p in curves.items()}  # once each
    write_reliability(REPORT_DIR, binned, temperature=temperature or 1.0)
    ece = {label: ece_of_bins(rows) for label, rows in binned.items()}
    return {
        "temperature": temperature or 1.0,
        "ece": ece["fine-tuned"],
        "ece_uncalibrated": ece.get("uncalibrated", ece["fine-tuned"]),
    }


def main() -> None:
    params = load_params()
    class_names = load_json(classes_file(PREPARED_DIR))
    y_test = load_array(prepared_labels("test"), mmap=False)
    head_model, full_model = load_model(HEAD_FILE), load_model(MODEL_FILE)
    features, images = open_rows(head_features("test")), open_rows(prepared_images("test"))
    check_same_rows({features.path: features, images.path: images, prepared_labels("test"): y_test})
    batch_size = params.evaluate.batch_size
    head_probabilities = head_model.predict(batches(features, batch_size=batch_size), verbose=0)
    tta = params.evaluate.tta
    model_probabilities = predict_probabilities(
        full_model, batches(images, batch_size=batch_size), tta
    )
    head, finetuned = scores(y_test, head_probabilities), scores(y_test, model_probabilities)
    temperature = load_model_info(MODEL_INFO_FILE).get("temperature")
    finetuned |= calibration_scores(y_test.argmax(axis=1), model_probabilities, temperature)
    finetuned |= {"tta": tta} if tta != "none" else {}
    save_array(TEST_PROBABILITIES_FILE, model_probabilities.astype(np.float32))
    save_json(
        METRICS_FILE,
        {"head": {"accuracy": head["accuracy"], "loss": head["loss"]}, "finetuned": finetuned},
    )
    write_report(
        y_test.argmax(axis=1),
        model_probabilities,
        class_names,
        test_images=raw_test_images,
        out_dir=REPORT_DIR,
    )
    print(
        f"evaluate: test accuracy head {head['accuracy']:.4f}, fine-tuned "
        f"{finetuned['accuracy']:.4f} (macro F1 {finetuned['macro_f1']:.4f}) "
        f"on {len(y_test)} images"
        + (", each averaged with its mirror (evaluate.tta: flip)" if tta == "flip" else "")
    )
    print(
        f"evaluate: expected calibration error {finetuned['ece']:.4f}"
        + (
            f" at temperature {temperature:g} ({finetuned['ece_uncalibrated']:.4f} without it)"
            if temperature is not None
            else " (not calibrated: finetune.calibrate is none)"
        )
    )


if __name__ == "__main__":
    run_stage(main)
