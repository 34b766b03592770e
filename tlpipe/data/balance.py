"""How many images each class has, and the one-line warning when the classes are far apart."""

from __future__ import annotations

import numpy as np

IMBALANCE_WARNING = 10.0  # prepare warns above this ratio of largest to smallest class


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """Images per class, every class named (0 for a class with none)."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


def imbalance(counts: dict[str, int]) -> tuple[float, str, str]:
    """(largest class / smallest class, largest's name, smallest's name); inf if one has none."""
    largest = max(counts, key=lambda name: (counts[name], name))
    smallest = min(counts, key=lambda name: (counts[name], name))
    ratio = counts[largest] / counts[smallest] if counts[smallest] else float("inf")
    return ratio, largest, smallest


def imbalance_warning(counts: dict[str, int]) -> str | None:
    """One warning line when the largest class has more than IMBALANCE_WARNING times the
    smallest's training images, else None."""
    ratio, largest, smallest = imbalance(counts)
    if ratio <= IMBALANCE_WARNING:
        return None
    return (
        f"warning: the classes are imbalanced: {largest!r} has {counts[largest]} training images, "
        f"{smallest!r} {counts[smallest]} ({ratio:.1f}x, above {IMBALANCE_WARNING:g}x); accuracy "
        "will favour the large classes: see the per-class recall in metrics/report/per_class.md"
    )
