"""The features figure: the stage's own extraction against the notebook's loop and a peer engine.

On the same uint8 images (N, 32, 32, 3) and the conv base `build_conv_base` returns (its
normalisation layer included), alternating within each round:

- naive: the textbook loop, `conv_base.predict(batch)` on batches of 20 copied into an array;
- pipeline: `tlpipe.compute.features.extract_features` split at the freeze boundary, under
  `computing_in(features.precision as chosen for this CPU)`, reading a memory-mapped .npy and
  streaming both caches to .npy, exactly as stages/features.py runs it;
- onnxruntime: the same conv base exported to ONNX by tf2onnx, on the same images (the peer);
- the float32 4096^2 matmul, the ceiling the pipeline's compute rate is held against.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    UNFREEZE_FROM,
    Context,
    best_of,
    conv_base,
    matmul_gflops,
    matmul_run,
    write_pixels,
)
from benchmarks.table import Row

IMAGE_SIZE = 32
NAIVE_BATCH = 20  # seed 003's batch_size
SIZES = {"quick": dict(n=1280, reps=3), "full": dict(n=3072, reps=3)}


def conv_macs_per_image(model, *, real_pixels_only: bool = False) -> int:
    """Multiply-accumulates of every Conv2D layer for one image: H_out*W_out*C_out*kH*kW*C_in.

    With `real_pixels_only`, the taps of a "same" convolution that fall on its zero padding are not
    counted: oneDNN does not compute them, and on the 2x2 and 4x4 maps of block5 at 32 px they are
    more than half of all taps, which made the all-taps count exceed the machine's ceiling.
    """
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            k_h, k_w, c_in, c_out = layer.kernel.shape
            if real_pixels_only and layer.padding == "same" and layer.strides == (1, 1):
                macs += taps_on_pixels(height, k_h) * taps_on_pixels(width, k_w) * c_in * c_out
            else:
                macs += height * width * c_out * k_h * k_w * c_in
    return int(macs)


def taps_on_pixels(n: int, k: int) -> int:
    """Kernel taps over all n output positions of one axis that land inside the input (stride 1,
    "same" padding: k // 2 zeros on each side)."""
    r = k // 2
    return sum(min(p + r, n - 1) - max(p - r, 0) + 1 for p in range(n))


def naive_loop(base, images: np.ndarray) -> tuple[Callable[[], None], np.ndarray]:
    """(run, its output array): predict() on batches of 20, float32 as a notebook runs it."""
    out = np.empty((len(images), *base.output.shape[1:]), np.float32)  # (N, 1, 1, 512)

    def run() -> None:
        for start in range(0, len(images), NAIVE_BATCH):
            out[start : start + NAIVE_BATCH] = base.predict(
                images[start : start + NAIVE_BATCH], verbose=0
            )

    base.predict(images[:NAIVE_BATCH], verbose=0)  # warm-up: builds and traces predict
    return run, out


def stage_path(base, images_path: Path, *, batch_size: int, precision: str, workdir: Path):
    """(run, head-features file): stages/features.py's calls on a memory-mapped input, warm."""
    from tlpipe.compute.features import compile_forward, extract_features
    from tlpipe.compute.precision import computing_in
    from tlpipe.core.arrays import load_array
    from tlpipe.core.backbone import boundary_layer, split_at

    bottom, top = split_at(base, boundary_layer(base, UNFREEZE_FROM))
    images = load_array(images_path)  # (N, 32, 32, 3) uint8, memory-mapped as the stage reads it
    outputs = dict(boundary_path=workdir / "boundary.npy", head_path=workdir / "head.npy")
    with computing_in(base, precision):
        forward = compile_forward(bottom, top)  # traced once, as for the stage's three splits
        extract_features(
            bottom,
            top,
            images[: 2 * batch_size],
            batch_size=batch_size,
            label="warm-up",
            forward=forward,
            **outputs,
        )

    def run() -> None:
        with computing_in(base, precision):
            extract_features(
                bottom,
                top,
                images,
                batch_size=batch_size,
                label="bench",
                forward=forward,
                **outputs,
            )

    return run, outputs["head_path"]


def onnx_peer(base, images: np.ndarray, *, batch_size: int) -> tuple[Callable[[], None], list]:
    """(run, its output batches): the conv base as ONNX (tf2onnx from a tf.function taking uint8,
    as `tlpipe predict` and the exports do) in onnxruntime, batches of `batch_size`, warm."""
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec((None, *base.input.shape[1:]), tf.uint8, name="images")
    function = tf.function(lambda pixels: base(tf.cast(pixels, tf.float32), training=False))
    model, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17)
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    name, outputs = session.get_inputs()[0].name, []

    def run() -> None:
        outputs.clear()
        for start in range(0, len(images), batch_size):
            outputs.append(session.run(None, {name: images[start : start + batch_size]})[0])

    session.run(None, {name: images[:batch_size]})  # warm-up
    return run, outputs


def measure(ctx: Context, precision: str) -> dict:
    """Throughputs of the four runs, best of `reps` alternating; the ceiling; the check that the
    stage path, the loop and the peer compute the same features."""
    sizes = SIZES[ctx.mode]
    n = ctx.count(sizes["n"], floor=256)
    images_path = write_pixels(ctx.workdir / "features_x.npy", n, IMAGE_SIZE, seed=1)
    images = np.load(images_path)  # in memory, for the notebook's loop and the peer
    base = conv_base(IMAGE_SIZE)
    naive, naive_out = naive_loop(base, images)
    pipeline, head_path = stage_path(
        base, images_path, batch_size=ctx.batch_size, precision=precision, workdir=ctx.workdir
    )
    peer, peer_out = onnx_peer(base, images, batch_size=ctx.batch_size)
    runs = {"naive": naive, "pipeline": pipeline, "onnxruntime": peer}
    best = best_of({**runs, "matmul": matmul_run(precision)}, sizes["reps"])
    scale = float(np.max(np.abs(naive_out))) or 1.0
    macs = conv_macs_per_image(base, real_pixels_only=True)
    img_s = {name: n / best[name] for name in runs}
    ceiling = matmul_gflops(precision, rounds=10, within=best["matmul"])
    return {
        "n_images": n,
        "precision": precision,
        **{f"{name}_img_s": round(rate, 1) for name, rate in img_s.items()},
        "speedup_vs_naive": round(img_s["pipeline"] / img_s["naive"], 2),
        "vs_onnxruntime": round(img_s["pipeline"] / img_s["onnxruntime"], 3),
        "gflop_per_image": round(2 * macs / 1e9, 4),
        "macs_all_taps": conv_macs_per_image(base),
        "pipeline_gflops": round(2 * macs * img_s["pipeline"] / 1e9, 1),
        "ceiling_gflops": round(ceiling, 1),
        "efficiency": round(2 * macs * img_s["pipeline"] / 1e9 / ceiling, 3),
        "max_rel_diff": round(float(np.max(np.abs(np.load(head_path) - naive_out))) / scale, 6),
        "peer_max_rel_diff": round(
            float(np.max(np.abs(np.concatenate(peer_out) - naive_out))) / scale, 6
        ),
    }


def run(ctx: Context) -> tuple[dict, list[Row]]:
    from tlpipe.compute.precision import choose_precision
    from tlpipe.core.params import load_params

    precision = choose_precision(load_params().features.precision, stage="benchmark features")
    r = measure(ctx, precision)
    # float32 must match the loop's float32 to rounding; bfloat16 carries 8 bits of mantissa.
    if r["max_rel_diff"] > (1e-4 if precision == "float32" else 0.1):
        raise SystemExit(f"the stage path differs from predict() by {r['max_rel_diff']:g}")
    rows = [
        Row("notebook loop, predict() x batch 20", f"{r['naive_img_s']:.1f} img/s", "float32"),
        Row(
            f"features stage path, batch {ctx.batch_size}",
            f"{r['pipeline_img_s']:.1f} img/s",
            f"{r['speedup_vs_naive']:.2f}x the loop (target >= 2.5), {precision}",
        ),
        Row(
            "peer: same conv base, ONNX in onnxruntime",
            f"{r['onnxruntime_img_s']:.1f} img/s",
            f"tlpipe at {r['vs_onnxruntime']:.2f}x the peer's throughput (the peer in float32)",
        ),
        Row(
            "conv base work per image",
            f"{r['gflop_per_image']:.3f} GFLOP",
            f"real pixels only ({r['macs_all_taps']:,} MACs counting padding taps)",
        ),
        Row(
            f"ceiling: {precision} matmul 4096^2",
            f"{r['ceiling_gflops']:.0f} GFLOP/s",
            f"stage path at {r['pipeline_gflops']:.0f}: efficiency {r['efficiency']:.3f}",
            absolute=True,
        ),
    ]
    return r, rows
