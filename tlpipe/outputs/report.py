"""What people look at: test scores, the confusion matrix's rows, per-class tables and sample
predictions. (The training curves and the confusion matrix are drawn by `dvc plots show` from the
.tsv/.csv files, not here.)"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    log_loss,
    precision_recall_fscore_support,
)

from tlpipe.core.files import atomic_path
from tlpipe.core.jsonfiles import save_json

SAMPLES = 24  # test images shown in samples.png


def scores(y_onehot: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, cross-entropy loss and macro precision/recall/F1 of predicted probabilities."""
    truth = y_onehot.argmax(axis=1)
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "loss": float(log_loss(truth, probabilities, labels=np.arange(y_onehot.shape[1]))),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def write_report(
    truth: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    *,
    test_images: Callable[[np.ndarray], np.ndarray],
    out_dir: Path,
) -> None:
    """Per-class scores (JSON and Markdown), confusion.csv for DVC's confusion template, and
    samples.png; `test_images(rows)` gives the pictures of test rows."""
    predicted = probabilities.argmax(axis=1)
    report = classification_report(
        truth,
        predicted,
        labels=np.arange(len(class_names)),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    save_json(out_dir / "per_class.json", {name: report[name] for name in class_names})
    with atomic_path(out_dir / "per_class.md") as temporary:
        temporary.write_text(per_class_markdown(report, class_names))
    write_confusion_rows(out_dir / "confusion.csv", truth, predicted, class_names=class_names)
    rows = sample_order(truth, predicted, SAMPLES)
    plot_samples(
        test_images(rows),
        truth[rows],
        predicted[rows],
        confidence=probabilities[rows, predicted[rows]],
        class_names=class_names,
        path=out_dir / "samples.png",
    )


def write_confusion_rows(
    path: Path, truth: np.ndarray, predicted: np.ndarray, *, class_names: list[str]
) -> None:
    """One row per test image (actual, predicted), the input of DVC's confusion template."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["actual", "predicted"])
        writer.writerows(
            (class_names[t], class_names[p]) for t, p in zip(truth, predicted, strict=True)
        )


def save_figure(figure: plt.Figure, path: Path) -> None:
    """Write `figure` as a PNG atomically, without a timestamp or software name in its metadata, so
    reruns give identical bytes; then close it."""
    with atomic_path(path) as temporary:
        figure.savefig(
            temporary, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None}
        )
    plt.close(figure)


def sample_order(truth: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` test images, misclassified ones first, each group in test order."""
    wrong = np.flatnonzero(truth != predicted)
    right = np.flatnonzero(truth == predicted)
    return np.concatenate([wrong, right])[:count]


def plot_samples(
    images: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    *,
    confidence: np.ndarray,
    class_names: list[str],
    path: Path,
) -> None:
    """A grid of test images titled 'predicted (p) / true', misclassified in red."""
    columns = min(6, len(images))
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, t, p, c in zip(axes.flat, images, truth, predicted, confidence, strict=False):
        axis.imshow(
            image.squeeze(-1) if image.shape[-1] == 1 else image,
            cmap="gray",
            interpolation="nearest",
        )
        axis.set_title(
            f"{class_names[p]} ({c:.2f})\ntrue: {class_names[t]}",
            fontsize=9,
            color="black" if t == p else "red",
        )
    figure.suptitle("Test predictions (misclassified first, in red)")
    save_figure(figure, path)


def per_class_markdown(report: dict[str, dict[str, float]], class_names: list[str]) -> str:
    """sklearn's classification_report(output_dict=True) as a Markdown table."""
    lines = [
        "| class | precision | recall | f1-score | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in [*class_names, "macro avg", "weighted avg"]:
        row = report[name]
        lines.append(
            f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1-score']:.4f} "
            f"| {int(row['support'])} |"
        )
    lines.append(f"\naccuracy: {report['accuracy']:.4f}")
    return "\n".join(lines) + "\n"
