"""Where images come from: tensorflow-datasets, scikit-learn's bundled digits, or an image folder.

Sources (`data.dataset`): any tensorflow-datasets name with (image, label) supervised keys,
`digits` (scikit-learn's bundled 8x8 digits: the offline dataset), or a folder holding one
sub-folder of images per class. Each is read into a `RawDataset` of uint8 images and int labels.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from tlpipe.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE, read_image
from tlpipe.params import DataParams
from tlpipe.paths import RAW_DIR, classes_file, raw_images, raw_labels
from tlpipe.runtime import OFFLINE_DEMO, UserError
from tlpipe.storage import save_array, save_json


@dataclass
class RawDataset:
    train_images: np.ndarray  # uint8, (N, H, W, C) with C 1 or 3
    train_labels: np.ndarray  # int64, (N,)
    class_names: list[str]
    test_images: np.ndarray | None = None  # the dataset's own test split, where it has one
    test_labels: np.ndarray | None = None


def load_digits() -> RawDataset:
    """scikit-learn's 1,797 bundled 8x8 grey digits, scaled from 0-16 to 0-255."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    return RawDataset(
        images, digits.target.astype(np.int64), [str(name) for name in digits.target_names]
    )


def load_folder(folder: Path, image_size: int | None) -> RawDataset:
    """A folder with one sub-folder of images per class (JPEG, PNG, ...), classes sorted by name.

    Files that are not images by suffix are ignored; image files that cannot be decoded are skipped
    with a counted warning. Images of different sizes need `data.image_size`.
    """
    class_dirs = sorted(
        path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    images: list[np.ndarray] = []
    labels: list[int] = []
    class_names: list[str] = []
    skipped: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        decoded = []
        for path in files:
            try:
                decoded.append(read_image(path, image_size))
            except UNREADABLE_IMAGE:
                skipped.append(str(path))
        if not decoded:
            continue
        images.extend(decoded)
        labels.extend([len(class_names)] * len(decoded))
        class_names.append(class_dir.name)
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}",
            file=sys.stderr,
        )
    if len(class_names) < 2:
        raise UserError(
            f"data.dataset: {folder} has {len(class_names)} class folder(s) with readable images; "
            "expected at least 2 sub-folders of JPEG/PNG images, one per class"
        )
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for h, w, _ in sorted(sizes)[:2])
        raise UserError(
            f"data.image_size: images in {folder} differ in size ({examples}, ...); "
            "set data.image_size (e.g. 150) to resize them while reading"
        )
    return RawDataset(np.stack(images), np.asarray(labels, dtype=np.int64), class_names)


def tfds_data_dir() -> Path:
    """tensorflow-datasets' data folder: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def unreachable_host(urls: list[str], timeout: float = 3.0) -> str | None:
    """The first host among `urls` that cannot be reached in `timeout` seconds, else None."""
    for url in urls:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError:
            return parsed.hostname
    return None


def ensure_tfds_prepared(builder, manual_dir: Path) -> None:
    """Download and prepare a tfds dataset, failing fast with instructions when offline.

    tfds retries a failed download for minutes; so before starting, check that every archive is
    either placed in `manual_dir` (tfds then uses it and verifies its checksum) or reachable.
    """
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    url_infos = builder.url_infos or {}
    to_fetch = {
        url: info for url, info in url_infos.items() if not (manual_dir / info.filename).exists()
    }
    host = unreachable_host(list(to_fetch))
    if host is not None:
        files = ", ".join(sorted(info.filename for info in to_fetch.values()))
        raise UserError(
            f"could not reach {host} to download {builder.name} (no network?). Put {files} in "
            f"{manual_dir}/ (checksum-verified), or run the offline demo: {OFFLINE_DEMO}"
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )


def read_tfds_split(builder, split: str, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All (image, label) pairs of one split as uint8 images and int64 labels."""
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    image_key = builder.info.supervised_keys[0]
    shape = builder.info.features[image_key].shape
    if None not in shape and image_size is None:
        batches = list(tfds.as_numpy(dataset.batch(1024)))
        return (
            np.concatenate([b[0] for b in batches]).astype(np.uint8),
            np.concatenate([b[1] for b in batches]).astype(np.int64),
        )
    if image_size is None:
        raise UserError(
            f"data.image_size: {builder.name} images differ in size; "
            "set data.image_size (e.g. 150) "
            "to resize them while reading"
        )
    images, labels = [], []
    for image, label in tfds.as_numpy(dataset):
        picture = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
        images.append(
            np.asarray(picture.resize((image_size, image_size), Image.Resampling.BILINEAR))
        )
        labels.append(label)
    stacked = np.stack(images).astype(np.uint8)
    return (stacked[..., np.newaxis] if stacked.ndim == 3 else stacked), np.asarray(
        labels, dtype=np.int64
    )


def load_tfds(name: str, image_size: int | None) -> RawDataset:
    """A tensorflow-datasets dataset's train split (and test split, where it has one)."""
    import tensorflow_datasets as tfds

    data_dir = tfds_data_dir()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"data.dataset: got {name!r}, which is not a tensorflow-datasets name, 'digits' or an "
            "existing folder (see https://www.tensorflow.org/datasets/catalog)"
        ) from None
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
        train_images, train_labels = read_tfds_split(builder, "train", image_size)
    except ValueError as error:  # tfds: unknown split
        raise UserError(
            f"data.dataset: {name} has no 'train' split ({str(error).splitlines()[0]})"
        ) from None
    dataset = RawDataset(train_images, train_labels, list(label_feature.names))
    if "test" in builder.info.splits:
        dataset.test_images, dataset.test_labels = read_tfds_split(builder, "test", image_size)
    return dataset


def load_dataset(params: DataParams) -> RawDataset:
    """The dataset `data.dataset` names: digits, an image folder, or a tensorflow-datasets name."""
    if params.is_digits:
        return load_digits()
    if params.folder is not None:
        return load_folder(params.folder, params.image_size)
    return load_tfds(params.dataset, params.image_size)


def limit_training(dataset: RawDataset, limit: int | None, seed: int) -> RawDataset:
    """Keep a seeded, class-stratified sample of `limit` training images."""
    if limit is None or limit >= len(dataset.train_labels):
        return dataset
    from sklearn.model_selection import (
        train_test_split,  # here, not on top: it is most of the start-up time
    )

    keep, _ = train_test_split(
        np.arange(len(dataset.train_labels)),
        train_size=limit,
        stratify=dataset.train_labels if limit >= len(dataset.class_names) else None,
        random_state=seed,
    )
    keep = np.sort(keep)
    dataset.train_images = dataset.train_images[keep]
    dataset.train_labels = dataset.train_labels[keep]
    return dataset


def write_raw(dataset: RawDataset, out_dir: Path = RAW_DIR) -> None:
    """The dataset as .npy arrays (images, labels per split) and classes.json in `out_dir`."""
    save_array(raw_images("train", out_dir), dataset.train_images)
    save_array(raw_labels("train", out_dir), dataset.train_labels)
    if dataset.test_images is not None:
        save_array(raw_images("test", out_dir), dataset.test_images)
        save_array(raw_labels("test", out_dir), dataset.test_labels)
    save_json(classes_file(out_dir), dataset.class_names)
