"""The fine-tuned model's mistakes on the test split.

Plain numpy on what earlier stages wrote (labels, test probabilities): fastai's
`ClassificationInterpretation.top_losses` and `most_confused`, without a model in memory.
"""

from __future__ import annotations

import numpy as np

# Below this, a probability counts as 0 in a loss (as Keras's categorical_crossentropy clips).
EPSILON = 1e-7


def losses(truth: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each image's cross-entropy loss: -log p(true class). (N,) from (N,) labels, (N, C)."""
    chosen = probabilities[np.arange(len(truth)), truth]
    return -np.log(np.clip(chosen, EPSILON, 1.0))


def top_losses(truth: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Rows of the `count` images with the highest loss, highest first (ties in row order)."""
    loss = losses(truth, probabilities)
    return np.lexsort((np.arange(len(loss)), -loss))[:count]


def most_confused(
    truth: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) of every confusion that happened, most frequent first (ties
    by class order), as fastai's `most_confused`."""
    n = len(class_names)
    counts = np.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
    np.fill_diagonal(counts, 0)
    actual, guessed = np.nonzero(counts)
    order = np.lexsort((guessed, actual, -counts[actual, guessed]))
    return [
        (class_names[actual[i]], class_names[guessed[i]], int(counts[actual[i], guessed[i]]))
        for i in order
    ]
