from __future__ import annotations

import runpy
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import params_with
from tlpipe.core.arrays import load_array
from tlpipe.core.jsonfiles import load_json
from tlpipe.core.params import parse_params
from tlpipe.core.paths import raw_images, raw_labels, source_file
from tlpipe.core.runtime import UserError
from tlpipe.data.folders import write_folder
from tlpipe.data.sources import (
    RawDataset,
    limit_training,
    load_digits,
    write_dataset,
    write_raw,
    write_tfds,
)


def make_folder(root, sizes=((20, 16),), per_class=3):
    """cat/ and dog/ with PNG and JPEG images (one grey), a corrupt file and a stray text file."""
    rng = np.random.default_rng(0)
    for class_name in ("cat", "dog"):
        folder = root / class_name
        folder.mkdir(parents=True)
        for i in range(per_class):
            width, height = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i == 0:
                image.convert("L").save(folder / f"{i}.png")
            elif i == 1:
                image.save(folder / f"{i}.jpg", quality=95)
            else:
                image.convert("RGBA").save(folder / f"{i}.png")
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_digits_are_the_bundled_8x8_images_scaled_to_uint8():
    data = load_digits()
    assert data.train_images.shape == (1797, 8, 8, 1) and data.train_images.dtype == np.uint8
    assert data.train_images.max() == 255 and data.train_images.min() == 0
    assert data.class_names == [str(d) for d in range(10)]
    assert set(np.unique(data.train_labels)) == set(range(10))


def raw(folder: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    return load_array(raw_images(split, folder)), load_array(raw_labels(split, folder))


def test_folder_source_reads_png_jpeg_grey_and_rgba_and_skips_unreadable(tmp_path, capsys):
    class_names = write_folder(make_folder(tmp_path / "images"), None, tmp_path / "raw")
    images, labels = raw(tmp_path / "raw")
    assert class_names == ["cat", "dog"]
    assert images.shape == (6, 16, 20, 3) and images.dtype == np.uint8
    assert list(labels) == [0, 0, 0, 1, 1, 1]
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err


def test_folder_images_of_mixed_sizes_need_data_image_size(tmp_path):
    folder = make_folder(tmp_path / "images", sizes=((20, 16), (40, 30)))
    with pytest.raises(UserError, match=r"data.image_size: images in .* differ in size"):
        write_folder(folder, None, tmp_path / "raw")
    assert not raw_images("train", tmp_path / "raw").exists()
    write_folder(folder, 32, tmp_path / "raw")
    assert raw(tmp_path / "raw")[0].shape == (6, 32, 32, 3)


def test_folder_with_one_class_is_refused(tmp_path):
    folder = make_folder(tmp_path / "images")
    for path in (folder / "dog").iterdir():
        path.unlink()
    with pytest.raises(UserError, match="1 class folder"):
        write_folder(folder, None, tmp_path / "raw")


def test_limit_keeps_a_seeded_stratified_sample(tmp_path):
    labels = np.repeat(np.arange(4), 50)
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)
    kept = {}
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        write_raw(RawDataset(images, labels, ["a", "b", "c", "d"]), tmp_path / name)
        limit_training(40, seed, tmp_path / name)
        kept[name] = raw(tmp_path / name)
    first_images, first_labels = kept["first"]
    assert len(first_labels) == 40 and len(first_images) == 40
    assert np.bincount(first_labels).tolist() == [10, 10, 10, 10]
    np.testing.assert_array_equal(first_labels, labels[first_images[:, 0, 0, 0]])
    assert np.array_equal(first_images, kept["again"][0])
    assert not np.array_equal(first_images, kept["other"][0])


def test_tfds_source_through_mock_data_with_a_manually_placed_archive(
    tmp_path, monkeypatch, no_network
):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    # tfds verifies the checksum when it prepares
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"")
    with tfds.testing.mock_data(num_examples=12):
        class_names, version = write_tfds("cifar10:3.0.2", None, tmp_path / "raw")
        write_tfds("cifar10:3.0.2", 48, tmp_path / "resized")
    images, labels = raw(tmp_path / "raw")
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert raw(tmp_path / "resized")[0].shape == (12, 48, 48, 3)
    # mock_data does not know a dataset's splits in advance, so only `train` is read here.
    assert not raw_images("test", tmp_path / "raw").exists()
    assert len(class_names) == 10  # the mock carries no label names, only their number
    assert version == "3.0.2"
    assert labels.dtype == np.int64 and labels.max() < 10


def test_default_cifar10_offline_stops_at_once_with_instructions(
    in_tmp_project, monkeypatch, no_network, capsys
):
    monkeypatch.setenv("TFDS_DATA_DIR", str(in_tmp_project / "tfds"))
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("stages.download", run_name="__main__")
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "could not reach www.cs.toronto.edu to download cifar10" in err
    assert f"Put cifar-10-binary.tar.gz in {in_tmp_project / 'tfds'}/downloads/manual/" in err
    assert "make demo" in err
    assert elapsed < 30  # tfds on its own retries for minutes
    assert not (in_tmp_project / "data").exists()


def test_unknown_tfds_name_is_one_line(in_tmp_project):
    with pytest.raises(UserError, match="not a tensorflow-datasets name"):
        write_tfds("no_such_dataset_xyz", None)


def test_write_raw_round_trip_deletes_an_earlier_test_split(tmp_path):
    (tmp_path / "test_labels.npy").write_bytes(b"left by an earlier dataset")
    data = RawDataset(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"])
    write_raw(data, tmp_path)
    assert load_json(tmp_path / "classes.json") == ["a", "b"]
    assert load_array(tmp_path / "train_images.npy").shape == (4, 8, 8, 1)
    assert not (tmp_path / "test_labels.npy").exists()


def test_tfds_names_carry_their_version(tmp_path, monkeypatch):
    """A version tfds does not have (after an upgrade, say) stops download with the versions it
    has; a name without one is refused with the version to pin."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError) as error:
        write_tfds("cifar10:9.9.9", None, tmp_path / "raw")
    assert str(error.value) == (
        "data.dataset: got 'cifar10:9.9.9'; the installed tensorflow-datasets 4.9.10 says: "
        "Dataset cifar10 cannot be loaded at version 9.9.9, only: 3.0.2."
    )
    with pytest.raises(UserError) as error:
        write_tfds("cifar10", None, tmp_path / "raw")
    assert str(error.value).startswith(
        "data.dataset: got 'cifar10' without a version; pin it (the installed "
        "tensorflow-datasets 4.9.10 prepares cifar10:3.0.2)"
    )
    assert not (tmp_path / "raw").exists()


def test_the_dataset_and_its_exact_version_are_recorded(tmp_path, monkeypatch, no_network):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    (tmp_path / "downloads" / "manual").mkdir(parents=True)
    (tmp_path / "downloads" / "manual" / "cifar-10-binary.tar.gz").write_bytes(b"")
    params = parse_params(params_with("data.dataset", "cifar10:3.0.2")).data
    with tfds.testing.mock_data(num_examples=4):
        write_dataset(params, tmp_path / "raw")
    assert load_json(source_file(tmp_path / "raw")) == {
        "dataset": "cifar10",
        "version": "3.0.2",
        "tensorflow-datasets": "4.9.10",
    }
    write_dataset(parse_params(params_with("data.dataset", "digits")).data, tmp_path / "digits")
    assert load_json(source_file(tmp_path / "digits"))["dataset"] == "digits"
