"""Where images come from: tensorflow-datasets, scikit-learn's bundled digits, or an image folder.

Sources (`data.dataset`): any tensorflow-datasets name with (image, label) supervised keys, pinned
to its version (cifar10:3.0.2), `digits` (scikit-learn's bundled 8x8 digits: the offline dataset),
or `folder`: `data.folder`, holding one sub-folder of images per class. Each is written to
data/raw/ as uint8 images and int labels while it is read, so memory does not grow with the
dataset (digits, 1,797 small images, in one go); source.json says what was read.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from tlpipe.core.arrays import load_array, open_rows, read_rows, row_appender, save_array
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import DataParams
from tlpipe.core.paths import RAW_DIR, classes_file, raw_images, raw_labels, source_file
from tlpipe.core.runtime import OFFLINE_DEMO, UserError
from tlpipe.data.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE, ImageTooLarge, read_image


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


def write_folder(folder: Path, image_size: int | None, out_dir: Path = RAW_DIR) -> list[str]:
    """A folder with one sub-folder of images per class (JPEG, PNG, ...), classes sorted by name,
    written to `out_dir` one image at a time; returns the class names.

    Files that are not images by suffix are ignored; image files that cannot be decoded, or that
    declare more than MAX_IMAGE_PIXELS, are skipped with a counted warning, and class folders left
    without an image are named in a warning. Links are followed only within the folder (see
    `_check_link`); class names must fit on one line (see `check_class_name`). Images of
    different sizes need `data.image_size`.
    """
    check_folder(folder)  # every link and class name, before any image is decoded
    class_dirs = _class_dirs(folder)
    labels: list[int] = []
    class_names: list[str] = []
    skipped: list[str] = []
    too_large: list[str] = []
    empty: list[str] = []  # class folders without a readable image: not a class
    with contextlib.ExitStack() as stack:
        append = None  # opened at the first decoded image, which sets the row shape
        for class_dir in class_dirs:
            decoded = 0
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                try:
                    image = read_image(path, image_size)
                except ImageTooLarge as error:
                    too_large.append(f"{path} ({error})")
                    continue
                except UNREADABLE_IMAGE:
                    skipped.append(str(path))
                    continue
                if append is None:
                    shape = image.shape
                    append = stack.enter_context(row_appender(raw_images("train", out_dir), shape))
                if image.shape != shape:
                    sizes = sorted([shape, image.shape])
                    examples = ", ".join(f"{w}x{h}" for h, w, _ in sizes)
                    raise UserError(
                        f"data.image_size: images in {folder} differ in size ({examples}, ...); "
                        "set data.image_size (e.g. 150) to resize them while reading"
                    )
                append(image[np.newaxis])
                decoded += 1
            if decoded:
                labels.extend([len(class_names)] * decoded)
                class_names.append(class_dir.name)
            else:
                empty.append(str(class_dir))
        if skipped:
            print(
                f"warning: skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}",
                file=sys.stderr,
            )
        if too_large:
            print(
                f"warning: skipped {len(too_large)} image file(s) over the size limit, "
                f"e.g. {too_large[0]}",
                file=sys.stderr,
            )
        if empty:
            shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
            print(
                f"warning: left out {len(empty)} class folder(s) without a readable image, so "
                f"not classes: {shown}",
                file=sys.stderr,
            )
        if len(class_names) < 2:
            raise UserError(
                f"data.folder: {folder} has {len(class_names)} class folder(s) with readable "
                "images; expected at least 2 sub-folders of JPEG/PNG images, one per class"
            )
    save_array(raw_labels("train", out_dir), np.asarray(labels, dtype=np.int64))
    return class_names


def _class_dirs(folder: Path) -> list[Path]:
    """The class folders of an image folder, sorted by name (hidden ones are not classes)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


def check_folder(folder: Path) -> dict[str, str]:
    """Check what `write_folder` will read of `folder` without decoding an image: every link
    (class folders and the image files in them) must stay inside it (`_check_link`), and every
    class name must fit on one line (`check_class_name`). Returns the links, each path relative
    to `folder` -> where it leads, relative too: what DVC's hash of the folder does not see (it
    skips links to folders), for the `check` stage to record."""
    root = folder.resolve()
    links = {}
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        _check_link(entry, root, folder)
        if not entry.is_dir():
            continue
        check_class_name(entry)
        for path in [entry, *sorted(entry.iterdir())]:
            if path != entry and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            _check_link(path, root, folder)
            if path.is_symlink():
                target = path.resolve().relative_to(root)
                links[path.relative_to(folder).as_posix()] = target.as_posix()
    return links


# Characters a class name must not hold: it becomes one line of labels.txt and a tab-separated
# column of `tlpipe predict`. Controls (tab, newline, ...), line and paragraph separators (which
# str.splitlines() also breaks at), and surrogates (bytes of a name that are not UTF-8).
NOT_IN_CLASS_NAMES = ("Cc", "Zl", "Zp", "Cs")


def check_class_name(class_dir: Path) -> None:
    """Refuse a class folder whose name would not stay one field of one line."""
    bad = [char for char in class_dir.name if unicodedata.category(char) in NOT_IN_CLASS_NAMES]
    if bad:
        shown = repr(class_dir.name).strip("'\"")
        raise UserError(
            f"data.folder: the class folder {class_dir.parent}/{shown} has {bad[0]!a} in its "
            "name; class names become lines of labels.txt and tab-separated fields of "
            "`tlpipe predict`: rename it without tabs, line breaks or other control characters"
        )


def _check_link(path: Path, root: Path, folder: Path) -> None:
    """Refuse an entry of the image folder that is a link looping, leading nowhere or leading
    outside the folder (`root` is the folder resolved): the dataset would otherwise take in files
    from elsewhere (which `dvc push` would then share), or walk in circles."""
    if not path.is_symlink():
        return
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        raise UserError(
            f"data.dataset: {path} is a link that loops or leads nowhere; class folders and "
            f"images must be files or folders inside {folder} (links within it are followed)"
        ) from None
    if not target.is_relative_to(root):
        raise UserError(
            f"data.dataset: {path} links to {target}, outside {folder}; class folders and "
            f"images must be inside {folder}: copy them in, or point data.dataset at a folder "
            "that holds them"
        )


def tfds_data_dir() -> Path:
    """tensorflow-datasets' data folder: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def unreachable_host(urls: list[str], timeout: float = 3.0) -> str | None:
    """The first host among `urls` that cannot be reached in `timeout` seconds (and the proxy
    tried), else None.

    Reached the way tensorflow-datasets' downloader (requests) will: through the proxy that
    HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for the URL unless NO_PROXY exempts its host, else
    directly.
    """
    from requests.utils import get_environ_proxies, select_proxy

    for url in urls:
        parsed = urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        proxy = select_proxy(url, get_environ_proxies(url))  # as requests picks it
        try:
            if proxy:
                _ask_proxy(proxy, url, timeout=timeout)
            else:
                socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError:
            via = f" through the proxy {_without_password(proxy)}" if proxy else ""
            return f"{parsed.hostname}{via}"
    return None


def _ask_proxy(proxy: str, url: str, *, timeout: float) -> None:
    """Raise OSError unless the HTTP(S) proxy `proxy` reaches `url`'s host, asked as requests
    asks it: for an https URL, a tunnel (CONNECT host:port answered 200); for an http URL, the
    request itself (HEAD url; a 502/503/504 gateway error means the proxy could not reach it).

    A SOCKS proxy is not checked (requests needs PySocks for it): tensorflow-datasets then tries.
    """
    target = urlparse(url)
    via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    if via.scheme not in ("http", "https"):
        return
    headers = {}
    if via.username:
        credentials = f"{unquote(via.username)}:{unquote(via.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    kind = http.client.HTTPSConnection if via.scheme == "https" else http.client.HTTPConnection
    connection = kind(
        via.hostname, via.port or (443 if via.scheme == "https" else 80), timeout=timeout
    )
    try:
        if target.scheme == "https":
            connection.set_tunnel(target.hostname, target.port or 443, headers=headers)
            connection.connect()  # sends CONNECT; OSError("Tunnel connection failed: ...")
        else:
            connection.request("HEAD", url, headers=headers)
            status = connection.getresponse().status
            if status in (502, 503, 504):
                raise OSError(f"the proxy answered {status}")
    finally:
        connection.close()


def _without_password(proxy: str) -> str:
    parsed = urlparse(proxy)
    return proxy.replace(f":{parsed.password}@", ":***@") if parsed.password else proxy


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
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        )
    except NonMatchingChecksumError:
        raise UserError(
            f"an archive in {manual_dir}/ does not match the checksum tensorflow-datasets "
            f"records for {builder.name}; it was not unpacked: replace it with the official file"
        ) from None


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
        reason = str(error).splitlines()[0]
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
            f"data.dataset: {name} has no 'train' split ({str(error).splitlines()[0]})"
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


def write_raw(dataset: RawDataset, out_dir: Path = RAW_DIR) -> None:
    """An in-memory dataset as .npy arrays (images, labels per split) and classes.json."""
    save_array(raw_images("train", out_dir), dataset.train_images)
    save_array(raw_labels("train", out_dir), dataset.train_labels)
    for path in (raw_images("test", out_dir), raw_labels("test", out_dir)):
        path.unlink(missing_ok=True)  # left by an earlier dataset
    if dataset.test_images is not None:
        save_array(raw_images("test", out_dir), dataset.test_images)
        save_array(raw_labels("test", out_dir), dataset.test_labels)
    save_json(classes_file(out_dir), dataset.class_names)
