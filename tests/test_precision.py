"""Mixed precision: when bfloat16/float16 run, that the layers compute in them inside
`computing_in` and are float32 again after it, and how close bfloat16 features are to float32."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tlpipe.backbone import build_conv_base, split_at
from tlpipe.features import compile_forward
from tlpipe.precision import computing_in, cpu_flags, effective_precision
from tlpipe.runtime import seed_everything
from tlpipe.storage import save_model
from tlpipe.training import build_finetune_models, build_head, compile_classifier

WITH_BF16 = frozenset({"avx512f", "avx512_bf16"})
WITHOUT_BF16 = frozenset({"avx512f", "avx2"})


@pytest.mark.parametrize(
    ("requested", "flags", "has_gpu", "runs", "says"),
    [
        ("float32", WITHOUT_BF16, False, "float32", None),
        ("bfloat16", WITH_BF16, False, "bfloat16", None),
        ("bfloat16", frozenset({"amx_bf16"}), False, "bfloat16", None),
        ("bfloat16", WITHOUT_BF16, False, "float32", "needs a CPU with native bfloat16"),
        ("bfloat16", WITHOUT_BF16, True, "bfloat16", None),
        ("float16", WITH_BF16, False, "float32", "float16 is for GPUs"),
        ("float16", WITHOUT_BF16, True, "float16", None),
    ],
)
def test_precision_falls_back_to_float32_only_without_the_hardware(
    requested, flags, has_gpu, runs, says
):
    precision, reason = effective_precision(requested, flags=flags, has_gpu=has_gpu)
    assert precision == runs
    if says is None:
        assert reason is None
    else:
        assert says in reason and "running float32" in reason and "\n" not in reason


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\nbugs\t: x\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.fixture(scope="module")
def base() -> keras.Model:
    seed_everything(0)
    return build_conv_base("vgg16", "none", image_size=32)


def policies(model: keras.Model) -> dict[str, str]:
    return {layer.name: layer.dtype_policy.name for layer in model.layers}


def test_features_compute_in_bfloat16_inside_the_block_only(base):
    images = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3)).astype(np.float32)
    bottom, top = split_at(base, "block4_pool")
    at_boundary, at_output = (t.numpy() for t in compile_forward(bottom, top)(images))
    with computing_in(base, "bfloat16"):
        inside = policies(base)
        low_boundary, low_output = (t.numpy() for t in compile_forward(bottom, top)(images))
    assert inside["block1_conv1"] == "mixed_bfloat16" and inside["block5_conv3"] == "mixed_bfloat16"
    # The normalisation and the output layer keep float32; weights stay float32 throughout.
    assert inside["backbone_normalization"] == "float32" and inside["block5_pool"] == "float32"
    assert all(weight.dtype == "float32" for weight in base.weights)
    assert set(policies(base).values()) == {"float32"}
    assert low_boundary.dtype == np.float32 and low_output.dtype == np.float32
    relative = np.abs(low_output - at_output).mean() / np.abs(at_output).mean()
    assert 0 < relative < 0.03  # bfloat16 keeps 8 bits of mantissa: close, not equal
    assert np.abs(low_boundary - at_boundary).mean() / np.abs(at_boundary).mean() < 0.03


def test_fine_tuning_in_bfloat16_trains_float32_weights_and_a_float32_output(base):
    seed_everything(0)
    head = build_head(tuple(base.output.shape[1:]), 3, units=16, dropout=0.0)
    trainable, full = build_finetune_models(base, head, "block4_pool")
    labels = np.arange(32) % 3
    noise = np.random.default_rng(1).normal(size=(32, *trainable.input.shape[1:]))
    x = (noise + labels[:, None, None, None]).astype(np.float32)  # learnable: class shifts x
    y = keras.utils.to_categorical(labels, 3)
    with computing_in(trainable, "bfloat16"):
        compile_classifier(trainable, 1e-4)
        assert trainable.get_layer("head").layers[-1].dtype_policy.name == "float32"
        assert trainable.predict(x, verbose=0).dtype == np.float32
        history = trainable.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(weight.dtype == "float32" for weight in full.weights)
    for model in (trainable, full, base):
        assert all(
            layer.dtype_policy.name == "float32"
            for layer in model.layers
            if not isinstance(layer, keras.Model)
        )


def test_a_model_saved_after_computing_in_bfloat16_is_the_float32_file(base, tmp_path):
    save_model(base, tmp_path / "before.keras")
    with computing_in(base, "bfloat16"):
        pass
    save_model(base, tmp_path / "after.keras")
    assert (tmp_path / "before.keras").read_bytes() == (tmp_path / "after.keras").read_bytes()
