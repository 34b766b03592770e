"""Every supported backbone through the features -> head -> fine-tune path on tiny random data."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.helpers import params_with
from tlpipe.compute.features import extract_features
from tlpipe.compute.training import build_finetune_models, build_head
from tlpipe.core.arrays import load_array
from tlpipe.core.backbone import BACKBONES, boundary_layer, build_conv_base, split_at
from tlpipe.core.layers import FINETUNE_STARTS
from tlpipe.core.params import parse_params
from tlpipe.core.runtime import UserError, seed_everything
from tlpipe.data.images import to_model_input


def test_every_backbone_named_in_params_is_buildable():
    for name, spec in BACKBONES.items():
        raw = params_with("backbone.name", name)
        assert parse_params(raw).finetune.unfreeze_from == spec.last_block


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES)
def test_the_table_of_finetune_starts_is_where_the_built_backbone_can_be_cut(name):
    """params.py checks finetune.unfreeze_from against tlpipe/core/layers.py, without building a
    model: the table must be every layer the built model accepts, in order."""
    keras.backend.clear_session()  # layer names as a stage's fresh process gives them
    base = build_conv_base(name, "none", image_size=32)
    starts = []
    for layer in base.layers:
        try:
            split_at(base, boundary_layer(base, layer.name))
        except UserError:
            continue
        starts.append(layer.name)
    assert tuple(starts) == FINETUNE_STARTS[name], f"the {name} table is now: {' '.join(starts)}"


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_offline_run_on_tiny_data(name, tmp_path):
    seed_everything(0)
    rng = np.random.default_rng(0)
    grey_and_small = rng.integers(0, 256, size=(12, 20, 20, 1), dtype=np.uint8)
    x = to_model_input(grey_and_small, 32)
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
    y = keras.utils.to_categorical(np.arange(12) % 3, 3)

    base = build_conv_base(name, "none", image_size=32)
    boundary = boundary_layer(base, BACKBONES[name].last_block)
    bottom, top = split_at(base, boundary)
    np.save(tmp_path / "x.npy", x)
    extract_features(
        bottom,
        top,
        np.load(tmp_path / "x.npy", mmap_mode="r"),
        batch_size=5,
        boundary_path=tmp_path / "boundary.npy",
        head_path=tmp_path / "head.npy",
        label=name,
    )
    cached, features = load_array(tmp_path / "boundary.npy"), load_array(tmp_path / "head.npy")

    head = build_head(features.shape[1:], 3, units=8, dropout=0.5)
    head.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    head.fit(features, y, epochs=1, batch_size=4, verbose=0)
    trainable, full = build_finetune_models(base, head, boundary)
    trainable.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss="categorical_crossentropy")
    history = trainable.fit(cached, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # The model trained on cached activations is the full image model, BatchNorm included.
    np.testing.assert_allclose(
        full.predict(x, verbose=0), trainable.predict(cached, verbose=0), rtol=1e-3, atol=1e-5
    )
    assert not any(layer.trainable for layer in bottom.layers)
