"""Stage `evaluate`: test-split scores of the head alone and of the fine-tuned model.

Writes metrics/evaluate.json (the numbers `dvc metrics diff` compares), metrics/per_class.json
(precision, recall, F1 and support per class) and metrics/confusion.csv (actual vs predicted class
names, rendered by `dvc plots show` with the confusion template).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, log_loss, precision_recall_fscore_support

from stages.params import load_params
from stages.runtime import run_stage
from stages.storage import atomic_path, load_array, load_json, load_model, save_json

PREPARED_DIR = Path("data/prepared")
HEAD_FEATURES_DIR = Path("data/features/head")
HEAD_FILE = Path("models/head.keras")
MODEL_FILE = Path("models/model.keras")
METRICS_FILE = Path("metrics/evaluate.json")
PER_CLASS_FILE = Path("metrics/per_class.json")
CONFUSION_FILE = Path("metrics/confusion.csv")


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


def write_confusion(path: Path, truth: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
    """One row per test image (actual, predicted), the input of DVC's confusion template."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[t], class_names[p]) for t, p in zip(truth, predicted))


def main() -> None:
    params = load_params()
    class_names = load_json(PREPARED_DIR / "classes.json")
    y_test = load_array(PREPARED_DIR / "test_y.npy", mmap=False)
    batch = params.evaluate.batch_size

    head_probabilities = load_model(HEAD_FILE).predict(load_array(HEAD_FEATURES_DIR / "test.npy"), batch_size=batch, verbose=0)
    model_probabilities = load_model(MODEL_FILE).predict(load_array(PREPARED_DIR / "test_x.npy"), batch_size=batch, verbose=0)
    head, finetuned = scores(y_test, head_probabilities), scores(y_test, model_probabilities)
    save_json(METRICS_FILE, {
        "head": {"accuracy": head["accuracy"], "loss": head["loss"]},
        "finetuned": finetuned,
    })

    truth, predicted = y_test.argmax(axis=1), model_probabilities.argmax(axis=1)
    report = classification_report(truth, predicted, labels=np.arange(len(class_names)),
                                   target_names=class_names, output_dict=True, zero_division=0)
    save_json(PER_CLASS_FILE, {name: report[name] for name in class_names})
    write_confusion(CONFUSION_FILE, truth, predicted, class_names)
    print(f"evaluate: test accuracy head {head['accuracy']:.4f}, fine-tuned {finetuned['accuracy']:.4f} "
          f"(macro F1 {finetuned['macro_f1']:.4f}) on {len(y_test)} images")


if __name__ == "__main__":
    run_stage(main)
