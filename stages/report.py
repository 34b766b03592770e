"""Pictures and tables people look at: training curves, confusion matrix, sample predictions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from stages.storage import atomic_path


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def plot_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    """Loss and accuracy per epoch, train and validation side by side (Keras History.history)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, history[metric], "o-", label="train")
        axis.plot(epochs, history[f"val_{metric}"], "s-", label="validation")
        best = int(np.argmin(history["val_loss"]))
        axis.axvline(best + 1, color="grey", linestyle=":", label=f"best val loss (epoch {best + 1})")
        axis.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, path)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    """Counts of true (rows) vs predicted (columns) classes, with class names on both axes."""
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({int(matrix.sum())} test images)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axis.text(column, row, int(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    _save(figure, path)


def sample_order(truth: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` test images, misclassified ones first, each group in test order."""
    wrong = np.flatnonzero(truth != predicted)
    right = np.flatnonzero(truth == predicted)
    return np.concatenate([wrong, right])[:count]


def plot_samples(
    images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
    class_names: list[str], path: Path,
) -> None:
    """A grid of test images titled 'predicted (p) / true', misclassified in red."""
    columns = min(6, len(images))
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, t, p, c in zip(axes.flat, images, truth, predicted, confidence):
        axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", interpolation="nearest")
        axis.set_title(f"{class_names[p]} ({c:.2f})\ntrue: {class_names[t]}", fontsize=9,
                       color="black" if t == p else "red")
    figure.suptitle("Test predictions (misclassified first, in red)")
    _save(figure, path)


def per_class_markdown(report: dict[str, dict[str, float]], class_names: list[str]) -> str:
    """sklearn's classification_report(output_dict=True) as a Markdown table."""
    lines = ["| class | precision | recall | f1-score | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in [*class_names, "macro avg", "weighted avg"]:
        row = report[name]
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1-score']:.4f} | {int(row['support'])} |")
    lines.append(f"\naccuracy: {report['accuracy']:.4f}")
    return "\n".join(lines) + "\n"
