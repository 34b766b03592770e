"""Which number format the conv layers compute in: float32, or Keras mixed precision.

Mixed precision (`bfloat16` on CPUs that have it, `float16` on GPUs) keeps every variable in
float32 and computes in 16 bits, about twice the multiply-accumulates per cycle. A CPU without
native bfloat16 instructions emulates them and runs slower than float32; float16 is only fast on
a GPU. `effective_precision` falls back to float32 there, with one line saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras

from tlpipe.params import Precision

# CPU flags (as /proc/cpuinfo spells them) of native bfloat16 arithmetic: AVX-512 BF16, Intel AMX.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
MIXED_POLICY = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def effective_precision(
    requested: Precision, *, flags: frozenset[str], has_gpu: bool
) -> tuple[Precision, str | None]:
    """The precision to run, and the reason when it is not the one requested."""
    if requested == "bfloat16" and not has_gpu and not flags & BFLOAT16_CPU_FLAGS:
        return "float32", (
            "precision bfloat16 needs a CPU with native bfloat16 (flag avx512_bf16 or amx_bf16 "
            "in /proc/cpuinfo) or a GPU; this machine has neither, where bfloat16 runs slower "
            "than float32: running float32"
        )
    if requested == "float16" and not has_gpu:
        return "float32", (
            "precision float16 is for GPUs (no GPU found; on CPUs use bfloat16): running float32"
        )
    return requested, None


def choose_precision(requested: Precision, *, stage: str) -> Precision:
    """`effective_precision` on this machine, saying in one line when it falls back."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    precision, reason = effective_precision(requested, flags=cpu_flags(), has_gpu=has_gpu)
    if reason:
        print(f"{stage}: {reason}")
    return precision


@contextmanager
def computing_in(model: keras.Model, precision: Precision) -> Iterator[keras.Model]:
    """Within the block, `model`'s layers compute in `precision` (variables stay float32).

    The backbone's normalisation and the final classifier layer stay float32, so inputs are
    normalised and probabilities (and the loss) computed at full precision. On leaving, every
    layer has its own float32 policy back (the same object, so a model saved afterwards is the
    same file as one that never left float32).
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
    try:
        yield model
    finally:
        for layer, policy in zip(layers, own_policies, strict=True):
            layer.dtype_policy = policy


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """`model` and every layer in it, nested models included."""
    found = [model]
    for layer in model.layers:
        found += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def _keeps_float32(layer: keras.layers.Layer) -> bool:
    from tlpipe.normalization import BackboneNormalization

    return isinstance(layer, BackboneNormalization | keras.layers.InputLayer)


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer that produces `model`'s output, looking inside nested models."""
    layer = model
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
    return layer
