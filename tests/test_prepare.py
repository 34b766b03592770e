from __future__ import annotations

import keras
import numpy as np
import pytest

from tlpipe.core.arrays import load_array, open_rows
from tlpipe.core.backbone import BACKBONES, build_conv_base
from tlpipe.core.normalization import BackboneNormalization
from tlpipe.core.params import PrepareParams
from tlpipe.core.runtime import UserError, seed_everything
from tlpipe.data.images import to_model_input
from tlpipe.data.splits import split_indices, write_split

IMAGENET_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def test_grey_images_are_resized_to_three_channel_uint8_pixels():
    grey = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    grey[1] = 255
    x = to_model_input(grey, 32)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8
    assert (x[0] == 0).all() and (x[1] == 255).all()
    same_size = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(same_size, 32), same_size)


def test_vgg16_normalisation_in_the_graph_is_caffe_never_a_division_by_255():
    normalise = BackboneNormalization("vgg16")
    grey = to_model_input(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1), 32)
    x = np.asarray(normalise(grey))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 5, 5], -IMAGENET_BGR_MEAN, atol=1e-4)
    np.testing.assert_allclose(x[1, 5, 5], 255.0 - IMAGENET_BGR_MEAN, atol=1e-3)
    red = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    red[..., 0] = 200  # R
    expected = [0 - 103.939, 0 - 116.779, 200 - 123.68]  # channels swapped to BGR
    np.testing.assert_allclose(np.asarray(normalise(red))[0, 0, 0], expected, atol=1e-3)


@pytest.mark.parametrize("name", BACKBONES)
def test_uint8_pixels_and_the_layer_give_the_features_of_preprocessed_float_images(name):
    """The stored-uint8, normalised-in-the-graph path equals normalising in NumPy first."""
    seed_everything(0)
    base = build_conv_base(name, "none", image_size=32)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    module = getattr(keras.applications, BACKBONES[name].module)
    preprocessed = module.preprocess_input(pixels.astype(np.float32))
    after_normalisation = keras.Model(base.get_layer("backbone_normalization").output, base.output)
    np.testing.assert_allclose(
        base.predict(pixels, verbose=0),
        after_normalisation.predict(preprocessed, verbose=0),
        rtol=1e-4,
        atol=1e-4,
    )


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


def test_write_split_streams_uint8_images_and_one_hot_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(300, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", images)
    labels = np.arange(300) % 3
    indices = np.arange(5, 290)  # more than one streaming batch
    write_split(
        open_rows(tmp_path / "raw.npy"),
        labels,
        indices,
        split="train",
        n_classes=3,
        image_size=32,
        out_dir=tmp_path,
    )
    x, y = load_array(tmp_path / "train_x.npy"), load_array(tmp_path / "train_y.npy")
    assert x.shape == (285, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (285, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=1), labels[indices])
    np.testing.assert_array_equal(x[-1], to_model_input(images[289:290], 32)[0])
    np.testing.assert_array_equal(load_array(tmp_path / "train_index.npy"), indices)
