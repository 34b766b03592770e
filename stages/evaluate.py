"""Stage `evaluate`: test-split scores of the head alone and of the fine-tuned model, and a report.

Writes metrics/evaluate.json (the numbers `dvc metrics diff` compares) and, under
metrics/report/: per-class precision/recall/F1/support (per_class.json and per_class.md),
confusion.csv (rendered by `dvc plots show` with the confusion template), confusion.png, and
samples.png (test images with predicted and true labels, misclassified first).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score, classification_report, confusion_matrix, log_loss, precision_recall_fscore_support,
)

from stages.params import load_params
from stages.report import per_class_markdown, plot_confusion, plot_samples, sample_order
from stages.runtime import run_stage
from stages.storage import atomic_path, check_same_rows, load_array, load_json, load_model, save_json

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
HEAD_FEATURES_DIR = Path("data/features/head")
HEAD_FILE = Path("models/head.keras")
MODEL_FILE = Path("models/model.keras")
METRICS_FILE = Path("metrics/evaluate.json")
REPORT_DIR = Path("metrics/report")
SAMPLES = 24


def scores(y_onehot: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, cross-entropy loss and macro precision/recall/F1 of predicted probabilities."""
    truth = y_onehot.argmax(axis=1)
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "loss": float(log_loss(truth, probabilities, labels=np.arange(y_onehot.shape[1]))),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def write_confusion_rows(path: Path, truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
    """One row per test image (actual, predicted), the input of DVC's confusion template."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[t], class_names[p]) for t, p in zip(truth, predicted))


def test_images(rows: np.ndarray) -> np.ndarray:
    """The raw (un-normalised) test images at `rows` of the test split, for showing to people."""
    source = "test_images.npy" if (RAW_DIR / "test_images.npy").exists() else "train_images.npy"
    raw_rows = load_array(PREPARED_DIR / "test_index.npy", mmap=False)[rows]
    return np.asarray(load_array(RAW_DIR / source)[raw_rows])


def write_report(truth: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> None:
    predicted = probabilities.argmax(axis=1)
    report = classification_report(truth, predicted, labels=np.arange(len(class_names)),
                                   target_names=class_names, output_dict=True, zero_division=0)
    save_json(REPORT_DIR / "per_class.json", {name: report[name] for name in class_names})
    with atomic_path(REPORT_DIR / "per_class.md") as temporary:
        temporary.write_text(per_class_markdown(report, class_names))
    write_confusion_rows(REPORT_DIR / "confusion.csv", truth, predicted, class_names)
    plot_confusion(confusion_matrix(truth, predicted, labels=np.arange(len(class_names))), class_names,
                   REPORT_DIR / "confusion.png")
    rows = sample_order(truth, predicted, SAMPLES)
    plot_samples(test_images(rows), truth[rows], predicted[rows], probabilities[rows, predicted[rows]],
                 class_names, REPORT_DIR / "samples.png")


def main() -> None:
    params = load_params()
    class_names = load_json(PREPARED_DIR / "classes.json")
    y_test = load_array(PREPARED_DIR / "test_y.npy", mmap=False)
    batch = params.evaluate.batch_size

    head_model, full_model = load_model(HEAD_FILE), load_model(MODEL_FILE)
    features, images = load_array(HEAD_FEATURES_DIR / "test.npy"), load_array(PREPARED_DIR / "test_x.npy")
    check_same_rows({HEAD_FEATURES_DIR / "test.npy": features, PREPARED_DIR / "test_x.npy": images,
                     PREPARED_DIR / "test_y.npy": y_test})
    head_probabilities = head_model.predict(features, batch_size=batch, verbose=0)
    model_probabilities = full_model.predict(images, batch_size=batch, verbose=0)
    head, finetuned = scores(y_test, head_probabilities), scores(y_test, model_probabilities)
    save_json(METRICS_FILE, {
        "head": {"accuracy": head["accuracy"], "loss": head["loss"]},
        "finetuned": finetuned,
    })
    write_report(y_test.argmax(axis=1), model_probabilities, class_names)
    print(f"evaluate: test accuracy head {head['accuracy']:.4f}, fine-tuned {finetuned['accuracy']:.4f} "
          f"(macro F1 {finetuned['macro_f1']:.4f}) on {len(y_test)} images")


if __name__ == "__main__":
    run_stage(main)
