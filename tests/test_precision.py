"""Mixed precision: when bfloat16/float16 run, that the layers compute in them inside
`computing_in` and are float32 again after it, and how close bfloat16 features are to float32."""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlpipe.compute.archives import save_model
from tlpipe.compute.features import compile_forward
from tlpipe.compute.precision import (
    computing_in,
    effective_precision,
    filter_gradient_by_taps,
)
from tlpipe.compute.training import build_finetune_models, build_head, compile_classifier
from tlpipe.core.backbone import build_conv_base, split_at
from tlpipe.core.cpu import cpu_flags
from tlpipe.core.runtime import seed_everything

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


@pytest.mark.parametrize(
    ("height", "width", "kernel_size", "padding"),
    [
        (9, 9, (3, 3), "same"),  # VGG16's block5 at 150 px
        (2, 2, (3, 3), "same"),  # and at 32 px: most taps are padding
        (5, 7, (3, 3), "valid"),
        (4, 4, (2, 2), "same"),  # even kernels pad less on the top and left
        (7, 6, (4, 3), "valid"),
        (6, 5, (1, 1), "same"),
        (3, 3, (5, 5), "same"),  # a kernel wider than the image
    ],
)
def test_filter_gradient_by_taps_is_the_convolutions_kernel_gradient(
    height, width, kernel_size, padding
):
    rng = np.random.default_rng(height * width)
    inputs = tf.constant(rng.normal(size=(3, height, width, 4)), tf.float32)
    kernel = tf.Variable(rng.normal(size=(*kernel_size, 4, 5)), dtype=tf.float32)
    outputs_shape = tf.nn.conv2d(inputs, kernel, 1, padding.upper()).shape
    output_gradient = tf.constant(rng.normal(size=outputs_shape), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.conv2d(inputs, kernel, 1, padding.upper()) * output_gradient)
    expected = tape.gradient(loss, kernel).numpy()
    got = filter_gradient_by_taps(inputs, output_gradient, kernel_size, padding).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def gradient_ops(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[Counter, list]:
    """How many ops of each type the graph computing `model`'s loss gradients has; the gradients."""

    @tf.function
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    graph = gradients.get_concrete_function(x, y).graph
    return Counter(op.type for op in graph.get_operations()), [g.numpy() for g in gradients(x, y)]


def test_bfloat16_training_takes_filter_gradients_from_matmuls_and_gives_the_layers_back():
    seed_everything(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(9, 9, 16)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),  # stride 2: left as it is
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 9, 9, 16)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    float32_ops, float32_gradients = gradient_ops(model, x, y)
    with computing_in(model, "bfloat16"):
        bfloat16_ops, bfloat16_gradients = gradient_ops(model, x, y)
        stride_one, stride_two = model.layers[0], model.layers[1]
        assert "convolution_op" in vars(stride_one) and "convolution_op" not in vars(stride_two)
    # float32 keeps TensorFlow's kernels; in bfloat16 the stride-1 layer's filter gradient is
    # nine matmuls, one per tap of its 3x3 kernel
    assert float32_ops["Conv2DBackpropFilter"] == 2 and bfloat16_ops["Conv2DBackpropFilter"] == 1
    assert bfloat16_ops["MatMul"] == float32_ops["MatMul"] + 9
    assert not any("convolution_op" in vars(layer) for layer in model.layers)
    # TensorFlow's own bfloat16 kernels, for comparison: the same policies, no tap gradient
    for layer in model.layers[:-1]:
        layer.dtype_policy = "mixed_bfloat16"
    _, tensorflow_bfloat16_gradients = gradient_ops(model, x, y)
    for by_taps, by_tensorflow, full in zip(
        bfloat16_gradients, tensorflow_bfloat16_gradients, float32_gradients, strict=True
    ):
        assert by_taps.dtype == np.float32
        error, tensorflow_error = (np.abs(g - full).mean() for g in (by_taps, by_tensorflow))
        assert 0 < error <= 1.1 * tensorflow_error  # as close to float32 as bfloat16 gets
        assert error < 0.06 * np.abs(full).mean()
