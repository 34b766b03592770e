"""The analysis as files people read: CSV tables naming each image by where it came from, and
the Markdown summary (metrics/analysis/README.md)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.core.arrays import load_array
from tlpipe.core.files import atomic_path
from tlpipe.core.jsonfiles import load_json
from tlpipe.core.paths import RAW_DIR, prepared_index, raw_files, raw_images


@dataclass(frozen=True)
class Origins:
    """Where each prepared image came from: its file, relative to data.folder (folder datasets),
    or its row in the dataset's own split, as `train[123]` (every other dataset)."""

    index: dict[str, np.ndarray]  # split -> raw row of each prepared row
    files: list[str] | None  # raw training row -> file, for folder datasets
    raw_test: bool  # whether the dataset has a test split of its own

    @classmethod
    def load(cls, splits: Sequence[str], raw_dir: Path = RAW_DIR) -> Origins:
        files = load_json(raw_files(raw_dir)) if raw_files(raw_dir).exists() else None
        index = {split: load_array(prepared_index(split), mmap=False) for split in splits}
        return cls(index, files, raw_images("test", raw_dir).exists())

    def source(self, split: str, row: int) -> str:
        raw_row = int(self.index[split][row])
        raw_split = "test" if split == "test" and self.raw_test else "train"
        if self.files is not None and raw_split == "train":
            return self.files[raw_row]
        return f"{raw_split}[{raw_row}]"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file, atomically; floats as written by the caller (fixed decimals: same bytes)."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a Markdown table; `|` in a cell is escaped. No rows: one line saying so."""
    if not rows:
        return ["None."]
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def readme(summary: dict, confused: list[tuple], issues: list[list], leaks: list[list]) -> str:
    """metrics/analysis/README.md: the headline numbers, then the first rows of each table."""
    lines = [
        "# What the model gets wrong, and what looks wrong in the data",
        "",
        f"Written by the `analyze` stage ({summary['test_images']} test images, "
        f"{summary['classes']} classes). Every table lists its full contents in the CSV file "
        "named above it; `tlpipe issues` prints the label issues with commands to act on them.",
        "",
        f"- label issues: {summary['label_issues']} of {summary['checked_images']} training and "
        "validation labels look wrong (label_issues.csv, label_issues.png)",
        f"- duplicates: {summary['duplicates']['exact']} exact pixel copies, "
        f"{summary['duplicates']['near']} near-duplicates (duplicates.csv)",
        f"- leaks into the test split: {summary['leaks']['train_test']} test images have a copy "
        f"in the training split, {summary['leaks']['val_test']} in the validation split",
        f"- class balance: the largest class has {summary['imbalance_ratio']}x the smallest's "
        "training images",
        "",
        "## Most confused (most_confused.csv)",
        "",
        *markdown_table(["actual", "predicted", "test images"], confused[:10]),
        "",
        "## Label issues, most likely first (label_issues.csv)",
        "",
        *markdown_table(ISSUE_COLUMNS, issues[:10]),
        "",
        "## Test images with a copy in train or val (duplicates.csv)",
        "",
        *markdown_table(DUPLICATE_COLUMNS, leaks[:10]),
        "",
        "Pictures: top_losses.png, gradcam_mistakes.png, gradcam_classes.png, label_issues.png.",
    ]
    return "\n".join(lines) + "\n"


ISSUE_COLUMNS = ["rank", "split", "row", "source", "given", "suggested", "label_quality"]
DUPLICATE_COLUMNS = [
    "kind", "similarity", "split_a", "row_a", "source_a", "split_b", "row_b", "source_b"
]  # fmt: skip
TOP_LOSS_COLUMNS = ["rank", "row", "source", "actual", "predicted", "probability", "loss"]


def write_readme(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
