"""The backbone cut, the feature stream and the boundary cache on a small random VGG16."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlpipe.compute.archives import load_model, save_model
from tlpipe.compute.features import extract_features
from tlpipe.compute.training import build_finetune_models, build_head
from tlpipe.core.arrays import load_array
from tlpipe.core.backbone import boundary_layer, split_at
from tlpipe.core.runtime import UserError, seed_everything


@pytest.fixture(scope="module")
def vgg16():
    seed_everything(0)
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(0, 50, size=(10, 32, 32, 3)).astype(np.float32)


def test_boundary_is_the_layer_before_the_first_trainable_one(vgg16):
    assert boundary_layer(vgg16, "block5_conv1") == "block4_pool"
    assert boundary_layer(vgg16, "block4_conv1") == "block3_pool"
    with pytest.raises(
        UserError, match=r"finetune.unfreeze_from: got 'block9_conv1', which is not a layer"
    ):
        boundary_layer(vgg16, "block9_conv1")
    with pytest.raises(UserError, match="at least the first layer"):
        boundary_layer(vgg16, "block1_conv1")


def test_streamed_features_equal_the_plain_forward_pass(vgg16, images, tmp_path):
    bottom, top = split_at(vgg16, "block4_pool")
    np.save(tmp_path / "x.npy", images)
    rate = extract_features(
        bottom,
        top,
        np.load(tmp_path / "x.npy", mmap_mode="r"),
        batch_size=4,
        boundary_path=tmp_path / "boundary.npy",
        head_path=tmp_path / "head.npy",
        label="test",
    )
    assert rate > 0
    at_boundary, at_output = (
        load_array(tmp_path / "boundary.npy"),
        load_array(tmp_path / "head.npy"),
    )
    assert at_boundary.shape == (10, 2, 2, 512) and at_output.shape == (10, 1, 1, 512)
    np.testing.assert_allclose(at_output, vgg16.predict(images, verbose=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(at_boundary, bottom.predict(images, verbose=0), rtol=1e-4, atol=1e-4)


def test_fine_tuning_on_cached_activations_is_the_full_model(vgg16, images, tmp_path):
    seed_everything(1)
    backbone = keras.models.clone_model(vgg16)
    backbone.set_weights(vgg16.get_weights())
    head = build_head((1, 1, 512), 3, units=16, dropout=0.5)
    trainable, full = build_finetune_models(backbone, head, "block4_pool")
    bottom, _ = split_at(backbone, "block4_pool")
    cached = bottom.predict(images, verbose=0)
    trainable.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="categorical_crossentropy")
    trainable.fit(
        cached, keras.utils.to_categorical(np.arange(10) % 3, 3), epochs=1, batch_size=5, verbose=0
    )
    # Training on the cache changed the shared layers of the full model, and only the unfrozen ones.
    assert not np.allclose(
        backbone.get_layer("block5_conv1").get_weights()[0],
        vgg16.get_layer("block5_conv1").get_weights()[0],
    )
    np.testing.assert_array_equal(
        backbone.get_layer("block4_conv3").get_weights()[0],
        vgg16.get_layer("block4_conv3").get_weights()[0],
    )
    np.testing.assert_allclose(
        full.predict(images, verbose=0), trainable.predict(cached, verbose=0), rtol=1e-4, atol=1e-6
    )
    # The saved model gives the same predictions after a round trip through a .keras file.
    save_model(full, tmp_path / "model.keras")
    reloaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), full.predict(images, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert [layer.trainable for layer in reloaded.layers if layer.name.startswith("block4")] == [
        False
    ] * 4


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"model\.keras is not a usable Keras model"):
        load_model(tmp_path / "model.keras")


def test_augmentation_is_seeded_and_only_active_in_training():
    from tlpipe.compute.training import build_augmentation

    images = np.random.default_rng(0).normal(0, 50, size=(4, 32, 32, 3)).astype(np.float32)
    first = build_augmentation(7)(images, training=True)
    again = build_augmentation(7)(images, training=True)
    np.testing.assert_allclose(first, again)
    assert not np.allclose(first, images)
    np.testing.assert_array_equal(build_augmentation(7)(images, training=False), images)


def test_features_refuses_to_start_when_the_disk_is_too_small(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from tlpipe.compute.features import check_free_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 9 * 2**30, 2**30))
    check_free_space(tmp_path, 2**29)  # fits
    with pytest.raises(
        UserError, match=r"features: need 2\.00 GiB in .* but only 1\.00 GiB is free"
    ):
        check_free_space(tmp_path, 2 * 2**30)
