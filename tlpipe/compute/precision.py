"""Which number format the conv layers compute in: float32, or Keras mixed precision.

Mixed precision (`bfloat16` on CPUs that have it, `float16` on GPUs) keeps every variable in
float32 and computes in 16 bits, about twice the multiply-accumulates per cycle. A CPU without
native bfloat16 instructions emulates them and runs slower than float32; float16 is only fast on
a GPU. `effective_precision` falls back to float32 there, with one line saying why.

Training in bfloat16 on a CPU also swaps one kernel. oneDNN's bfloat16 kernel for the filter
gradient of a channels-last convolution is slower than its float32 kernel on AVX-512 BF16 CPUs,
which held a bfloat16 fine-tuning epoch to little more than float32's speed. Each kernel tap's
filter gradient is one matrix product of the input and output-gradient rows it pairs, and
oneDNN's bfloat16 matmul is fast, so `computing_in` gives trainable stride-1 convolutions that
gradient (`filter_gradient_by_taps`) while they compute in bfloat16 on a CPU: about twice
float32's speed an epoch (benchmarks/RESULTS.md, "bfloat16 training at twice float32").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
import tensorflow as tf

from tlpipe.core.cpu import BFLOAT16_FLAGS, kernel_flags
from tlpipe.core.params import Precision

MIXED_POLICY = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def effective_precision(
    requested: Precision, *, flags: frozenset[str], has_gpu: bool
) -> tuple[Precision, str | None]:
    """The precision to run, and the reason when it is not the one requested."""
    if requested == "bfloat16" and not has_gpu and not flags & BFLOAT16_FLAGS:
        return "float32", (
            "precision bfloat16 needs a CPU with native bfloat16 (flag avx512_bf16 or amx_bf16 "
            "in /proc/cpuinfo, and ONEDNN_MAX_CPU_ISA not below AVX512_CORE_BF16) or a GPU; this "
            "machine has neither, where bfloat16 runs slower than float32: running float32"
        )
    if requested == "float16" and not has_gpu:
        return "float32", (
            "precision float16 is for GPUs (no GPU found; on CPUs use bfloat16): running float32"
        )
    return requested, None


def choose_precision(requested: Precision, *, stage: str) -> Precision:
    """`effective_precision` on this machine, saying in one line when it falls back."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    precision, reason = effective_precision(requested, flags=kernel_flags(), has_gpu=has_gpu)
    if reason:
        print(f"{stage}: {reason}")
    return precision


@contextmanager
def computing_in(model: keras.Model, precision: Precision) -> Iterator[keras.Model]:
    """Within the block, `model`'s layers compute in `precision` (variables stay float32).

    The backbone's normalisation and the final classifier layer stay float32, so inputs are
    normalised and probabilities (and the loss) computed at full precision. In bfloat16 on a CPU,
    trainable stride-1 convolutions take their filter gradient from `filter_gradient_by_taps`.
    On leaving, every layer has its own float32 policy back (the same object, so a model saved
    afterwards is the same file as one that never left float32) and its own convolution.
    """
    if precision == "float32":
        yield model
        return
    last = _output_layer(model)
    layers = [
        layer for layer in _all_layers(model) if layer is not last and not _keeps_float32(layer)
    ]
    own_policies = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = MIXED_POLICY[precision]
    by_taps = []
    if precision == "bfloat16" and not tf.config.list_physical_devices("GPU"):
        by_taps = [layer for layer in layers if _gradient_by_taps_fits(layer)]
    for layer in by_taps:  # an instance attribute, over the class's method until deleted
        layer.convolution_op = _convolution_with_tap_gradient(layer)
    try:
        yield model
    finally:
        for layer in by_taps:
            del layer.convolution_op
        for layer, policy in zip(layers, own_policies, strict=True):
            layer.dtype_policy = policy


def filter_gradient_by_taps(
    inputs: tf.Tensor, output_gradient: tf.Tensor, kernel_size: tuple[int, int], padding: str
) -> tf.Tensor:
    """The kernel gradient of a stride-1, undilated, channels-last 2-D convolution ("same" or
    "valid" padding) as one matrix product per kernel tap.

    Tap (i, j) pairs each output position with the input pixel i, j away from its window's
    corner; the gradient of that tap's (in, out) weights is the sum over those pairs of
    input row x output-gradient row: (in, N) @ (N, out). Only pairs whose input pixel is real
    are multiplied: the padding zeros are left out.
    """
    height, width, channels = inputs.shape[1:]
    out_height, out_width, out_channels = output_gradient.shape[1:]
    pad_top, pad_left = ((k - 1) // 2 if padding == "same" else 0 for k in kernel_size)
    taps = []
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            top, bottom = max(0, pad_top - i), min(out_height, height - i + pad_top)
            left, right = max(0, pad_left - j), min(out_width, width - j + pad_left)
            rows = inputs[
                :,
                top + i - pad_top : bottom + i - pad_top,
                left + j - pad_left : right + j - pad_left,
            ]
            gradient_rows = output_gradient[:, top:bottom, left:right]
            taps.append(
                tf.matmul(
                    tf.reshape(rows, (-1, channels)),
                    tf.reshape(gradient_rows, (-1, out_channels)),
                    transpose_a=True,
                )
            )
    return tf.reshape(tf.stack(taps), (*kernel_size, channels, out_channels))


def _gradient_by_taps_fits(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a trainable convolution `filter_gradient_by_taps` computes."""
    return (
        isinstance(layer, keras.layers.Conv2D)
        and layer.trainable
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid")
    )


def _convolution_with_tap_gradient(layer: keras.layers.Conv2D):
    """`layer`'s own convolution, with the filter gradient of `filter_gradient_by_taps`."""
    own_convolution = type(layer).convolution_op
    padding = layer.padding.upper()

    @tf.custom_gradient
    def convolve(inputs: tf.Tensor, kernel: tf.Tensor):
        def gradient(output_gradient: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            input_gradient = tf.nn.conv2d_transpose(
                output_gradient, kernel, tf.shape(inputs), strides=1, padding=padding
            )
            kernel_gradient = filter_gradient_by_taps(
                inputs, output_gradient, tuple(layer.kernel_size), layer.padding
            )
            return input_gradient, kernel_gradient

        return own_convolution(layer, inputs, kernel), gradient

    def convolution_op(inputs: tf.Tensor, kernel) -> tf.Tensor:
        # the variable read as a tensor of the compute dtype, so the gradient reaches it by a cast
        return convolve(inputs, tf.cast(keras.ops.convert_to_tensor(kernel), inputs.dtype))

    return convolution_op


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """`model` and every layer in it, nested models included."""
    found = [model]
    for layer in model.layers:
        found += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def _keeps_float32(layer: keras.layers.Layer) -> bool:
    from tlpipe.core.normalization import BackboneNormalization

    return isinstance(layer, BackboneNormalization | keras.layers.InputLayer)


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces `model`'s output, looking inside nested models."""
    layer = model
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
    return layer
