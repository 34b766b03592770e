"""Where images come from: tensorflow-datasets, scikit-learn's bundled digits, or an image folder.

Sources (`data.dataset`): any tensorflow-datasets name with (image, label) supervised keys, pinned
to its version (cifar10:3.0.2), `digits` (scikit-learn's bundled 8x8 digits: the offline dataset),
or `folder`: `data.folder`, holding one sub-folder of images per class. Each is written to
data/raw/ as uint8 images and int labels while it is read, so memory does not grow with the
dataset (digits, 1,797 small images, in one go); source.json says what was read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlpipe.core.arrays import load_array, open_rows, read_rows, row_appender, save_array
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import DataParams
from tlpipe.core.paths import (
    RAW_DIR,
    classes_file,
    raw_files,
    raw_images,
    raw_labels,
    source_file,
)
from tlpipe.core.runtime import UserError, first_line
from tlpipe.data.folders import write_folder
from tlpipe.data.network import ensure_tfds_prepared, tfds_data_dir


@dataclass
class RawDataset:
    train_images: np.ndarray  # uint8, (N, H, W, C) with C 1 or 3
    train_labels: np.ndarray  # int64, (N,)
    class_names: list[str]  # digits has no test split of its own: prepare holds one out


def load_digits() -> RawDataset:
    """scikit-learn's 1,797 bundled 8x8 grey digits, scaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return RawDataset(
        images, digits.target.astype(np.int64), [str(name) for name in digits.target_names]
    )


def write_tfds_split(
    builder: Any, split: str, *, image_size: int | None, out_dir: Path = RAW_DIR
) -> None:
    """One split's (image, label) pairs to `out_dir` as uint8 images and int64 labels, streamed
    a batch at a time."""
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    image_key = builder.info.supervised_keys[0]
    shape = tuple(builder.info.features[image_key].shape)
    if image_size is None and None in shape:
        raise UserError(
            f"data.image_size: {builder.name} images differ in size; "
            "set data.image_size (e.g. 150) to resize them while reading"
        )
    row_shape = shape if image_size is None else (image_size, image_size, shape[-1])
    labels = []
    with row_appender(raw_images(split, out_dir), row_shape, np.uint8) as append:
        for images, batch_labels in tfds.as_numpy(dataset.batch(256)):
            if image_size is not None:
                images = np.stack([_resized(image, image_size) for image in images])
            append(images.astype(np.uint8))
            labels.append(batch_labels.astype(np.int64))
    save_array(raw_labels(split, out_dir), np.concatenate(labels) if labels else np.zeros(0, int))


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """One uint8 image (H, W, C) resized to (size, size, C), bilinear."""
    picture = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    resized = np.asarray(picture.resize((size, size), Image.Resampling.BILINEAR))
    return resized.reshape(size, size, image.shape[-1])


def write_tfds(name: str, image_size: int | None, out_dir: Path = RAW_DIR) -> tuple[list[str], str]:
    """A tensorflow-datasets dataset's train split (and test split, where it has one) to
    `out_dir`; returns the class names and the dataset's version.

    `name` carries the version (cifar10:3.0.2, as tfds.builder takes it), so that a
    tensorflow-datasets upgrade that moves a dataset to another version is a params change DVC
    shows, not a silent swap of the images.
    """
    import tensorflow_datasets as tfds

    data_dir = tfds_data_dir()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"data.dataset: got {name!r}, which is not a tensorflow-datasets name, 'digits' or "
            "'folder' (see https://www.tensorflow.org/datasets/catalog)"
        ) from None
    except AssertionError as error:  # tfds: "... Dataset x cannot be loaded at version v, only: w."
        reason = first_line(error)
        raise UserError(
            f"data.dataset: got {name!r}; the installed tensorflow-datasets {tfds.__version__} "
            f"says: {reason[reason.find('Dataset ') :]}"
        ) from None
    if ":" not in name:
        raise UserError(
            f"data.dataset: got {name!r} without a version; pin it (the installed "
            f"tensorflow-datasets {tfds.__version__} prepares {name}:{builder.version}) so that "
            "an upgrade shows as a changed parameter"
        )
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise UserError(
            f"data.dataset: {name} has no (image, label) supervised keys; "
            "pick an image-classification dataset"
        )
    label_feature = builder.info.features[keys[1]]
    if not hasattr(label_feature, "names"):
        raise UserError(f"data.dataset: {name}'s label '{keys[1]}' is not a class label")
    ensure_tfds_prepared(builder, data_dir / "downloads" / "manual")
    try:
        write_tfds_split(builder, "train", image_size=image_size, out_dir=out_dir)
    except ValueError as error:  # tfds: unknown split
        raise UserError(
            f"data.dataset: {name} has no 'train' split ({first_line(error)})"
        ) from None
    if "test" in builder.info.splits:
        write_tfds_split(builder, "test", image_size=image_size, out_dir=out_dir)
    else:
        for path in (raw_images("test", out_dir), raw_labels("test", out_dir)):
            path.unlink(missing_ok=True)  # left by an earlier dataset
    return list(label_feature.names), str(builder.version)


def write_dataset(params: DataParams, out_dir: Path = RAW_DIR) -> list[str]:
    """The dataset `data.dataset` names (digits, an image folder, or a tensorflow-datasets name)
    to `out_dir`; returns the class names, also written to classes.json, and writes what was read
    (name, exact version) to source.json."""
    import importlib.metadata

    if params.is_digits:
        write_raw(load_digits(), out_dir)
        class_names = load_json(classes_file(out_dir))
        source = {"dataset": "digits", "scikit-learn": importlib.metadata.version("scikit-learn")}
    elif params.image_folder is not None:
        class_names = write_folder(params.image_folder, params.image_size, out_dir)
        source = {"dataset": "folder", "folder": params.folder}
    else:
        class_names, version = write_tfds(params.dataset, params.image_size, out_dir)
        source = {
            "dataset": params.dataset.split(":")[0],
            "version": version,
            "tensorflow-datasets": importlib.metadata.version("tensorflow-datasets"),
        }
    if params.image_folder is None:
        raw_files(out_dir).unlink(missing_ok=True)  # left by an earlier folder dataset
    save_json(classes_file(out_dir), class_names)
    save_json(source_file(out_dir), source)
    return class_names


def limit_training(limit: int | None, seed: int, out_dir: Path = RAW_DIR) -> None:
    """Keep a seeded, class-stratified sample of `limit` of the training images in `out_dir`."""
    labels = load_array(raw_labels("train", out_dir), mmap=False)
    if limit is None or limit >= len(labels):
        return
    from sklearn.model_selection import train_test_split  # here: most of the start-up time

    classes = len(np.unique(labels))
    keep, _ = train_test_split(
        np.arange(len(labels)),
        train_size=limit,
        stratify=labels if limit >= classes else None,
        random_state=seed,
    )
    keep = np.sort(keep)
    images = open_rows(raw_images("train", out_dir))
    with row_appender(images.path, images.shape[1:], images.dtype) as append:
        for start in range(0, len(keep), 256):
            append(read_rows(images, keep[start : start + 256]))
    save_array(raw_labels("train", out_dir), labels[keep])
    if raw_files(out_dir).exists():
        files = load_json(raw_files(out_dir))
        save_json(raw_files(out_dir), [files[row] for row in keep])


def write_raw(dataset: RawDataset, out_dir: Path = RAW_DIR) -> None:
    """An in-memory dataset (digits) as .npy arrays (training images and labels) and
    classes.json; a test split left by an earlier dataset is deleted."""
    save_array(raw_images("train", out_dir), dataset.train_images)
    save_array(raw_labels("train", out_dir), dataset.train_labels)
    for path in (raw_images("test", out_dir), raw_labels("test", out_dir)):
        path.unlink(missing_ok=True)  # left by an earlier dataset
    save_json(classes_file(out_dir), dataset.class_names)
