"""Seeded, class-stratified train/val/test splits, and writing them as model-ready arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.core.arrays import RowFile, array_writer, read_rows, release_rows, save_array
from tlpipe.core.params import PrepareParams
from tlpipe.core.paths import PREPARED_DIR, prepared_images, prepared_index, prepared_labels
from tlpipe.core.runtime import UserError
from tlpipe.data.images import to_model_input

BATCH = 256  # images resized at a time: memory stays flat in the number of images


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, held_out), `fraction` held out, classes kept in proportion."""
    from sklearn.model_selection import train_test_split

    try:
        rest, held_out = train_test_split(
            indices, test_size=fraction, stratify=labels[indices], random_state=seed
        )
    except ValueError as error:
        counts = np.bincount(labels[indices])
        key = "prepare.test_fraction" if what == "test" else "prepare.val_fraction"
        raise UserError(
            f"{key}: cannot hold out a stratified {what} split of {fraction:g} from "
            f"{len(indices)} images (smallest class has {counts[counts > 0].min()}): "
            f"{str(error).rstrip('.')}. Use more images per class (data.limit) or change the "
            "fraction"
        ) from None
    return np.sort(rest), np.sort(held_out)


def split_indices(
    train_labels: np.ndarray, *, has_test_split: bool, params: PrepareParams, seed: int
) -> dict[str, np.ndarray | None]:
    """Indices into the raw train array for train, val and (without a test split of the
    dataset's own) test; `test` is None when the dataset has its own test split."""
    pool = np.arange(len(train_labels))
    test = None
    if not has_test_split:
        pool, test = stratified_split(
            pool, train_labels, fraction=params.test_fraction, seed=seed, what="test"
        )
    val_of_pool = params.val_fraction / (1.0 if has_test_split else 1.0 - params.test_fraction)
    train, val = stratified_split(
        pool, train_labels, fraction=val_of_pool, seed=seed, what="validation"
    )
    return {"train": train, "val": val, "test": test}


def write_split(
    images: RowFile,
    labels: np.ndarray,
    indices: np.ndarray,
    *,
    split: str,
    n_classes: int,
    image_size: int,
    out_dir: Path = PREPARED_DIR,
) -> None:
    """Stream one split to `out_dir`: uint8 RGB images at the model's input size (rows
    `indices`, ascending, of `images`), one-hot labels, and the source rows."""
    import keras

    shape = (len(indices), image_size, image_size, 3)
    with array_writer(prepared_images(split, out_dir), shape, np.uint8) as x:
        for start in range(0, len(indices), BATCH):
            chunk = indices[start : start + BATCH]
            x[start : start + len(chunk)] = to_model_input(read_rows(images, chunk), image_size)
            release_rows(x, start, start + len(chunk))
    one_hot = keras.utils.to_categorical(labels[indices], n_classes).astype(np.float32)
    save_array(prepared_labels(split, out_dir), one_hot)
    save_array(prepared_index(split, out_dir), indices)
