from __future__ import annotations

import numpy as np
import pytest

from tlpipe.images import to_backbone_input
from tlpipe.params import PrepareParams
from tlpipe.runtime import UserError
from tlpipe.splits import split_indices, write_split
from tlpipe.storage import load_array

IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def test_grey_images_are_resized_to_three_channels_and_vgg16_normalised():
    grey = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    grey[1] = 255
    x = to_backbone_input(grey, 32, "vgg16")
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
    # 'caffe' normalisation: BGR, ImageNet mean subtracted from 0-255 values -- never divided by
    # 255.
    np.testing.assert_allclose(x[0, 5, 5], -IMAGENET_BGR_MEAN, atol=1e-4)
    np.testing.assert_allclose(x[1, 5, 5], 255.0 - IMAGENET_BGR_MEAN, atol=1e-3)


def test_colour_channels_are_swapped_to_bgr():
    red = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    red[..., 0] = 200  # R
    x = to_backbone_input(red, 32, "vgg16")
    np.testing.assert_allclose(x[0, 0, 0], [0 - 103.939, 0 - 116.779, 200 - 123.68], atol=1e-3)


PARAMS = PrepareParams(image_size=32, val_fraction=0.1, test_fraction=0.2)


def test_splits_are_disjoint_complete_stratified_and_seeded():
    labels = np.repeat(np.arange(5), [40, 60, 80, 100, 120])
    splits = split_indices(labels, has_test_split=False, params=PARAMS, seed=7)
    together = np.concatenate([splits["train"], splits["val"], splits["test"]])
    assert len(together) == len(labels) == len(np.unique(together))
    assert len(splits["test"]) == 80 and len(splits["val"]) == 40
    overall = np.bincount(labels) / len(labels)
    for part in splits.values():
        np.testing.assert_allclose(
            np.bincount(labels[part], minlength=5) / len(part), overall, atol=0.02
        )
    again = split_indices(labels, has_test_split=False, params=PARAMS, seed=7)
    other = split_indices(labels, has_test_split=False, params=PARAMS, seed=8)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["val"], other["val"])


def test_a_dataset_test_split_is_kept_and_only_validation_is_carved_from_train():
    labels = np.repeat(np.arange(4), 50)
    splits = split_indices(labels, has_test_split=True, params=PARAMS, seed=0)
    assert splits["test"] is None
    assert len(splits["val"]) == 20 and len(splits["train"]) == 180


def test_too_few_images_per_class_is_a_clear_error():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(UserError, match="smallest class has 1"):
        split_indices(labels, has_test_split=False, params=PARAMS, seed=0)


def test_write_split_streams_images_and_one_hot_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(300, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(300) % 3
    indices = np.arange(5, 290)  # more than one streaming batch
    write_split(
        images,
        labels,
        indices,
        split="train",
        n_classes=3,
        image_size=32,
        backbone="vgg16",
        out_dir=tmp_path,
    )
    x, y = load_array(tmp_path / "train_x.npy"), load_array(tmp_path / "train_y.npy")
    assert x.shape == (285, 32, 32, 3) and y.shape == (285, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=1), labels[indices])
    np.testing.assert_allclose(x[-1], to_backbone_input(images[289:290], 32, "vgg16")[0], atol=1e-5)
