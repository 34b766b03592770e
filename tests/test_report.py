from __future__ import annotations

import numpy as np
from PIL import Image

from tlpipe.outputs.report import per_class_markdown, plot_samples, sample_order


def test_samples_put_misclassified_first():
    truth = np.array([0, 1, 2, 0, 1])
    predicted = np.array([0, 2, 2, 1, 1])
    assert sample_order(truth, predicted, 4).tolist() == [1, 3, 0, 2]


def test_samples_picture_is_a_png(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    plot_samples(
        images,
        np.array([0, 1, 0, 1, 0]),
        np.array([1, 1, 0, 1, 0]),
        confidence=np.full(5, 0.9),
        class_names=["cat", "dog"],
        path=tmp_path / "samples.png",
    )
    with Image.open(tmp_path / "samples.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_per_class_table_names_every_class():
    row = {"precision": 0.5, "recall": 1.0, "f1-score": 0.6667, "support": 2}
    report = {"cat": row, "dog": row, "macro avg": row, "weighted avg": row, "accuracy": 0.75}
    table = per_class_markdown(report, ["cat", "dog"])
    assert (
        "| cat | 0.5000 | 1.0000 | 0.6667 | 2 |" in table
        and "| dog |" in table
        and "accuracy: 0.7500" in table
    )
