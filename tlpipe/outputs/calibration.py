"""How far the model's confidence is from its accuracy: expected calibration error (ECE) and the
reliability diagram, before and after the temperature `finetune` fitted (compute/temperature.py).

ECE as Guo et al. (2017) define it: the test images are put in 15 equal-width bins by their top
probability (bin m holds confidences in ((m-1)/15, m/15]); ECE is the mean over images of
|accuracy - mean confidence| of their bin. 0 is a model whose 0.8s are right 80 % of the time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tlpipe.core.files import atomic_path
from tlpipe.outputs.report import plt, save_figure

ECE_BINS = 15


def calibration_bins(
    truth: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per confidence bin: its bounds, image count, mean top probability and accuracy (both 0
    for an empty bin)."""
    confidence = np.asarray(probabilities, np.float64).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(truth)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        members = which == m
        count = int(members.sum())
        rows.append(
            {
                "lower": m / bins,
                "upper": (m + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return rows


def ece_of_bins(rows: list[dict[str, float]]) -> float:
    """Sum over `calibration_bins` rows of (share of images) x |accuracy - confidence|."""
    total = sum(row["count"] for row in rows)
    return float(
        sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows)
    )


def expected_calibration_error(
    truth: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of `probabilities` (N, classes) for integer classes `truth`."""
    return ece_of_bins(calibration_bins(truth, probabilities, bins))


def write_reliability(
    out_dir: Path, binned: dict[str, list[dict[str, float]]], *, temperature: float
) -> None:
    """reliability.csv (one row per model and bin) and reliability.png (accuracy against
    confidence per non-empty bin, the diagonal a calibrated model lies on) for each of `binned`
    ({label: `calibration_bins` of its test probabilities}, e.g. before and after the
    temperature)."""
    columns = ("lower", "upper", "count", "confidence", "accuracy")
    with atomic_path(out_dir / "reliability.csv") as temporary, open(temporary, "w") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["model", *columns])
        for label, rows in binned.items():
            writer.writerows([label, *(f"{row[key]:.6g}" for key in columns)] for row in rows)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for label, rows in binned.items():
        used = [row for row in rows if row["count"]]
        ece = ece_of_bins(rows)
        axis.plot(
            [row["confidence"] for row in used],
            [row["accuracy"] for row in used],
            marker="o",
            label=f"{label} (ECE {ece:.3f})",
        )
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
    axis.set_title(f"Reliability, test split ({ECE_BINS} bins; temperature {temperature:g})")
    axis.legend(loc="upper left")
    save_figure(figure, out_dir / "reliability.png")
