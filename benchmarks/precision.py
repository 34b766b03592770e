"""bfloat16 (Keras mixed precision, as `features.precision` / `finetune.precision: bfloat16` run
it through `tlpipe.compute.precision.computing_in`) against float32, on the same work, alternating:

- the features stage's path over uint8 images at 64 px (block5 on 4x4 maps, where padding taps no
  longer dominate), each precision's rate against the 4096^2 matmul of its own dtype;
- one cached fine-tuning epoch (block5 and the head, the stage's builders) at 64 and 150 px;
- one filter gradient of block5 at 150 px in TensorFlow's float32 and bfloat16 kernels and in
  `filter_gradient_by_taps`, which bfloat16 training uses instead.

Where this CPU (or ONEDNN_MAX_CPU_ISA) has no native bfloat16, bfloat16 is emulated and slow: the
rows say so, and quick mode runs the least work that still gives each figure.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import numpy as np

from benchmarks.features import conv_macs_per_image, stage_path
from benchmarks.finetune import models
from benchmarks.harness import (
    CLASSES,
    SEED,
    UNFREEZE_FROM,
    Context,
    best_of,
    conv_base,
    matmul_gflops,
    matmul_run,
    write_pixels,
)
from benchmarks.table import EMULATED, Row, bfloat16_note
from tlpipe.core.runtime import first_line

FEATURES_SIZE = 64
FINETUNE_SIZES = (64, 150)
PRECISIONS = ("float32", "bfloat16")
SIZES = {
    "quick": dict(n=256, finetune_n=1536, reps=3),
    "full": dict(n=512, finetune_n=3072, reps=3),
}


def finetune_epochs(ctx: Context, n: int, stack: ExitStack) -> dict[str, Callable[[], object]]:
    """One cached fine-tuning epoch per (size, precision) on random boundary activations, warm."""
    from tlpipe.compute.precision import computing_in
    from tlpipe.compute.training import compile_classifier

    rng, epochs = np.random.default_rng(SEED), {}
    for size in FINETUNE_SIZES:
        count = n if size == FEATURES_SIZE else n // 2
        for precision in PRECISIONS:
            trainable, _, _ = models(size, UNFREEZE_FROM)
            x = np.abs(rng.normal(0, 1, (count, *trainable.input.shape[1:]))).astype(np.float32)
            y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, count)]
            stack.enter_context(computing_in(trainable, precision))
            compile_classifier(trainable, 1e-4)
            warm = 2 * ctx.finetune_batch
            trainable.fit(x[:warm], y[:warm], batch_size=ctx.finetune_batch, verbose=0)
            epochs[f"finetune_{size}_{precision}"] = lambda m=trainable, x=x, y=y: m.fit(
                x, y, batch_size=ctx.finetune_batch, epochs=1, shuffle=True, verbose=0
            )
    return epochs


def filter_gradients(batch_size: int) -> dict[str, Callable[[], object]]:
    """One filter gradient of a block5 convolution at 150 px ((batch, 9, 9, 512) in and out, 3x3
    kernel) in TensorFlow's float32 and bfloat16 kernels and by taps in bfloat16, warm."""
    import tensorflow as tf

    from tlpipe.compute.precision import filter_gradient_by_taps

    shape = (batch_size, 9, 9, 512)
    inputs = tf.random.stateless_normal(shape, seed=(5, 6))
    output_gradient = tf.random.stateless_normal(shape, seed=(7, 8))

    def kernel(dtype: str, by_taps: bool = False) -> Callable[[], object]:
        x, dy = tf.cast(inputs, dtype), tf.cast(output_gradient, dtype)
        if by_taps:
            fn = tf.function(lambda: filter_gradient_by_taps(x, dy, (3, 3), "same"))
        else:
            fn = tf.function(
                lambda: tf.raw_ops.Conv2DBackpropFilter(
                    input=x,
                    filter_sizes=(3, 3, 512, 512),
                    out_backprop=dy,
                    strides=(1, 1, 1, 1),
                    padding="SAME",
                )
            )
        fn()  # traces, and warms oneDNN's primitive cache
        return lambda: fn().numpy()

    return {
        "tensorflow_float32": kernel("float32"),
        "tensorflow_bfloat16": kernel("bfloat16"),
        "taps_bfloat16": kernel("bfloat16", by_taps=True),
    }


def measure(ctx: Context, native: bool) -> dict:
    sizes = SIZES[ctx.mode]
    cut = 1.0 if native or ctx.mode == "full" else 0.25  # emulated bfloat16: the least work
    n = max(ctx.batch_size, int(ctx.count(sizes["n"]) * cut))
    reps = sizes["reps"] if cut == 1.0 else 1
    path = write_pixels(ctx.workdir / "bf16_x.npy", n, FEATURES_SIZE, seed=2)
    base = conv_base(FEATURES_SIZE)
    runs = {}
    for precision in PRECISIONS:
        runs[f"features_{precision}"], _ = stage_path(
            base, path, batch_size=ctx.batch_size, precision=precision, workdir=ctx.workdir
        )
        runs[f"matmul_{precision}"] = matmul_run(precision)
    with ExitStack() as stack:
        floor = (4 if cut == 1.0 else 2) * ctx.finetune_batch
        finetune_n = max(floor, int(ctx.count(sizes["finetune_n"]) * cut))
        runs |= finetune_epochs(ctx, finetune_n, stack)
        best = best_of(runs, reps)
    best |= best_of(filter_gradients(ctx.finetune_batch), 10 if cut == 1.0 else 3)
    macs = conv_macs_per_image(base, real_pixels_only=True)
    result = {"n": n, "finetune_n": finetune_n, "native_bfloat16": native}
    for precision in PRECISIONS:
        img_s = n / best[f"features_{precision}"]
        ceiling = matmul_gflops(
            precision, rounds=10 if cut == 1.0 else 2, within=best[f"matmul_{precision}"]
        )
        result[precision] = {
            "features_img_s": round(img_s, 1),
            "ceiling_gflops": round(ceiling, 1),
            "efficiency": round(2 * macs * img_s / 1e9 / ceiling, 3),
        }
        for size in FINETUNE_SIZES:
            result[precision][f"finetune_epoch_s_{size}"] = round(
                best[f"finetune_{size}_{precision}"], 3
            )
    result["filter_gradient_ms"] = {
        name: round(1000 * best[name], 1)
        for name in ("tensorflow_float32", "tensorflow_bfloat16", "taps_bfloat16")
    }
    return result


def run(ctx: Context) -> tuple[dict, list[Row]]:
    native = ctx.results["machine"]["native_bfloat16"]
    try:
        r = measure(ctx, native)
    except Exception as error:  # oneDNN capped below bfloat16 refuses its bfloat16 kernels
        if native:
            raise
        reason = first_line(error)[:160]
        return {"failed": reason}, [Row("bfloat16 / float32", "n/a", f"{EMULATED}; {reason}")]
    f32, bf16 = r["float32"], r["bfloat16"]
    r["bf16_features_speedup"] = round(bf16["features_img_s"] / f32["features_img_s"], 2)
    for size in FINETUNE_SIZES:
        key = f"finetune_epoch_s_{size}"
        r[f"bf16_finetune_speedup_{size}"] = round(f32[key] / bf16[key], 2)
    rows = [
        Row(
            f"{p} features at {FEATURES_SIZE} px, stage path",
            f"{r[p]['features_img_s']:.1f} img/s",
            f"efficiency {r[p]['efficiency']:.3f} of the {p} matmul's {r[p]['ceiling_gflops']:.0f} "
            "GFLOP/s",
            absolute=True,
        )
        for p in PRECISIONS
    ]
    rows.append(
        Row(
            f"bfloat16 / float32 features at {FEATURES_SIZE} px",
            f"{r['bf16_features_speedup']:.2f}x",
            bfloat16_note("throughput ratio (target >= 1.7)", native),
        )
    )
    for size in FINETUNE_SIZES:
        target = " (target >= 1.5)" if size == 150 else ""
        rows.append(
            Row(
                f"cached fine-tuning epoch at {size} px, bf16 / f32",
                f"{r[f'bf16_finetune_speedup_{size}']:.2f}x",
                bfloat16_note(f"speed ratio{target}", native),
            )
        )
    ms = r["filter_gradient_ms"]
    rows.append(
        Row(
            "block5 filter gradient 150 px, f32 / bf16 kernel / bf16 taps",
            f"{ms['tensorflow_float32']:.0f}/{ms['tensorflow_bfloat16']:.0f}/"
            f"{ms['taps_bfloat16']:.0f} ms",
            bfloat16_note(f"batch {ctx.finetune_batch}", native),
            absolute=True,
        )
    )
    return r, rows
