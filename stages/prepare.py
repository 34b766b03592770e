"""Stage `prepare`: resize, 3 channels, backbone normalisation, one-hot, seeded stratified splits.

Reads data/raw/ and writes data/prepared/{train,val,test}_{x,y}.npy. A dataset's own test split is
kept as the test split; otherwise `prepare.test_fraction` of the images is held out. Images are
processed in batches and streamed to disk, so memory does not grow with the dataset.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from stages.backbone import to_backbone_input
from stages.params import PrepareParams, load_params
from stages.runtime import UserError, run_stage
from stages.storage import array_writer, load_array, load_json, save_array, save_json

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
BATCH = 256


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, held_out) with `fraction` held out, classes kept in proportion."""
    try:
        rest, held_out = train_test_split(
            indices, test_size=fraction, stratify=labels[indices], random_state=seed
        )
    except ValueError as error:
        counts = np.bincount(labels[indices])
        key = "prepare.test_fraction" if what == "test" else "prepare.val_fraction"
        raise UserError(
            f"{key}: cannot hold out a stratified {what} split of {fraction:g} from {len(indices)} images "
            f"(smallest class has {counts[counts > 0].min()}): {str(error).rstrip('.')}. Use more images per "
            "class (data.limit) or change the fraction"
        ) from None
    return np.sort(rest), np.sort(held_out)


def split_indices(
    train_labels: np.ndarray, has_test_split: bool, params: PrepareParams, seed: int
) -> dict[str, np.ndarray]:
    """Indices into the raw train (and, for `test` when `has_test_split`, raw test) arrays."""
    pool = np.arange(len(train_labels))
    test = None
    if not has_test_split:
        pool, test = stratified_split(pool, train_labels, params.test_fraction, seed, "test")
    val_of_pool = params.val_fraction / (1.0 if has_test_split else 1.0 - params.test_fraction)
    train, val = stratified_split(pool, train_labels, val_of_pool, seed, "validation")
    return {"train": train, "val": val, "test": test}


def write_split(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray, n_classes: int,
    image_size: int, backbone: str, out_dir: Path, split: str,
) -> None:
    """Stream one split's normalised images and one-hot labels to {split}_x.npy / {split}_y.npy."""
    with array_writer(out_dir / f"{split}_x.npy", (len(indices), image_size, image_size, 3), np.float32) as x:
        for start in range(0, len(indices), BATCH):
            chunk = indices[start : start + BATCH]
            x[start : start + len(chunk)] = to_backbone_input(images[chunk], image_size, backbone)
    save_array(out_dir / f"{split}_y.npy", keras.utils.to_categorical(labels[indices], n_classes).astype(np.float32))
    save_array(out_dir / f"{split}_index.npy", indices)  # rows of the raw source array, for tracing back


def main() -> None:
    params = load_params()
    class_names = load_json(RAW_DIR / "classes.json")
    train_images = load_array(RAW_DIR / "train_images.npy")
    train_labels = load_array(RAW_DIR / "train_labels.npy", mmap=False)
    has_test = (RAW_DIR / "test_images.npy").exists()
    present = np.unique(train_labels)
    if len(present) < 2:
        raise UserError(f"data.dataset: the training images hold {len(present)} class(es); need at least 2")

    indices = split_indices(train_labels, has_test, params.prepare, params.seed)
    sources = {"train": (train_images, train_labels), "val": (train_images, train_labels)}
    if has_test:
        test_labels = load_array(RAW_DIR / "test_labels.npy", mmap=False)
        sources["test"] = (load_array(RAW_DIR / "test_images.npy"), test_labels)
        indices["test"] = np.arange(len(test_labels))
    else:
        sources["test"] = (train_images, train_labels)

    for split in SPLITS:
        images, labels = sources[split]
        write_split(images, labels, indices[split], len(class_names), params.prepare.image_size,
                    params.backbone.name, PREPARED_DIR, split)
    save_json(PREPARED_DIR / "classes.json", class_names)
    sizes = ", ".join(f"{split} {len(indices[split])}" for split in SPLITS)
    print(f"prepare: {sizes} images at {params.prepare.image_size}x{params.prepare.image_size}x3 -> {PREPARED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
