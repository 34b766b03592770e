"""The analyze stage on the offline demo's data: label noise and leaks put there on purpose, found
or not, and the stage's wall time against the features stage's on the same images.

One run of the demo's stages, each as DVC runs it (`python -m stages.<name>`, in a child), with
two injections:
- after download, FLIP of the training labels (seeded) move to a random other class;
- after prepare, LEAKS test images are copied over as many training images (with their labels),
  as a careless merge of two folders would.
Precision and recall are those of label_issues.csv against the flipped labels analyze checks
(the training and validation splits'); leak recall, of duplicates.csv's train/test pairs.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Context, run_child
from benchmarks.table import Row
from tests.project import write_params

FLIP = 0.05
LEAKS = 20
SEED = 11
SIZES = {"quick": (32,), "full": (32, 150)}  # px: the demo's, and the Keras guide's
DEMO = {  # the Makefile's DEMO_PARAMS; fine-tuning kept short: analyze reads its model only
    "data.dataset": "digits",
    "backbone.weights": "none",
    "finetune.unfreeze_from": "block4_conv1",
    "lr": 1e-4,
    "finetune.epochs": 2,
}
STAGES = ("download", "prepare", "features", "train", "finetune", "evaluate", "analyze")


def flip_labels(root: Path, rng: np.random.Generator) -> set[int]:
    """Move FLIP of data/raw's training labels to another class; the raw rows moved."""
    path = root / "data/raw/train_labels.npy"
    labels = np.load(path)
    rows = rng.choice(len(labels), int(FLIP * len(labels)), replace=False)
    labels[rows] = (labels[rows] + rng.integers(1, labels.max() + 1, len(rows))) % (
        labels.max() + 1
    )
    np.save(path, labels)
    return set(rows.tolist())


def leak_test_images(root: Path, rng: np.random.Generator) -> tuple[set[int], set[int]]:
    """Copy LEAKS test images and labels over training rows: (test rows, train rows) used."""
    prepared = root / "data/prepared"
    test_rows = rng.choice(len(np.load(prepared / "test_y.npy")), LEAKS, replace=False)
    train_rows = rng.choice(len(np.load(prepared / "train_y.npy")), LEAKS, replace=False)
    for part in ("x", "y"):
        train = np.load(prepared / f"train_{part}.npy", mmap_mode="r+")
        train[train_rows] = np.load(prepared / f"test_{part}.npy")[test_rows]
        train.flush()
    return set(test_rows.tolist()), set(train_rows.tolist())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def scores(root: Path, flipped: set[int], leaked: set[int], overwritten: set[int]) -> dict:
    """Label-issue precision and recall, leak recall, from the files analyze wrote."""
    index = {s: np.load(root / f"data/prepared/{s}_index.npy") for s in ("train", "val")}
    # the flipped labels analyze can see: in train or val, not overwritten by a leaked copy
    checked = {
        (split, int(row))
        for split in index
        for row in np.flatnonzero(np.isin(index[split], list(flipped)))
        if not (split == "train" and row in overwritten)
    }
    issues = read_csv(root / "metrics/analysis/label_issues.csv")
    found = {(row["split"], int(row["row"])) for row in issues}
    pairs = read_csv(root / "metrics/analysis/duplicates.csv")
    leaks = {int(p["row_b"]) for p in pairs if (p["split_a"], p["split_b"]) == ("train", "test")}
    return {
        "flipped_checked": len(checked),
        "issues_found": len(found),
        "issue_precision": round(len(found & checked) / max(len(found), 1), 3),
        "issue_recall": round(len(found & checked) / max(len(checked), 1), 3),
        "leak_recall": round(len(leaks & leaked) / LEAKS, 3),
        "false_leaks": len(leaks - leaked),
    }


def measure(workdir: Path, size: int) -> dict:
    root = write_params(workdir / f"analysis-{size}", DEMO | {"prepare.image_size": size})
    rng = np.random.default_rng(SEED)
    seconds = {}
    for stage in STAGES:
        started = time.perf_counter()
        run_child("stage", root, module=f"stages.{stage}")
        seconds[stage] = time.perf_counter() - started  # process start and TensorFlow's import too
        if stage == "download":
            flipped = flip_labels(root, rng)
        elif stage == "prepare":
            leaked, overwritten = leak_test_images(root, rng)
    return scores(root, flipped, leaked, overwritten) | {
        "features_s": round(seconds["features"], 1),
        "analyze_s": round(seconds["analyze"], 1),
        "analyze_over_features": round(seconds["analyze"] / seconds["features"], 3),
    }


def run(ctx: Context) -> tuple[dict, list[Row]]:
    result = {f"{size}px": measure(ctx.workdir, size) for size in SIZES[ctx.mode]}
    rows = []
    for size, r in result.items():
        rows += [
            Row(
                f"label issues vs {FLIP:.0%} flipped labels, {size}",
                f"P {r['issue_precision']:.2f} R {r['issue_recall']:.2f}",
                f"{r['issues_found']} listed, {r['flipped_checked']} flipped in train/val",
            ),
            Row(
                f"leak recall, {LEAKS} test images copied into train, {size}",
                f"{r['leak_recall']:.0%}",
                f"{r['false_leaks']} other pairs reported (target 100 %)",
            ),
            Row(
                f"analyze / features wall time, {size}",
                f"{r['analyze_over_features']:.2f}x",
                f"{r['analyze_s']:.0f} s / {r['features_s']:.0f} s (target <= 0.25)",
            ),
        ]
    return result, rows
