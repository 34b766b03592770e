"""Running the frozen conv base once over every image, streaming two caches to .npy.

One forward pass gives both: the activations at the freeze boundary (the last layer before
`finetune.unfreeze_from`), so fine-tuning trains the top block without recomputing the frozen
layers, and the conv base's output, the input of the dense head.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tlpipe.core.arrays import array_writer, release_rows
from tlpipe.core.runtime import UserError


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse before writing if the feature files will not fit on the disk."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise UserError(
            f"features: need {needed_bytes / 2**30:.2f} GiB in {folder} "
            f"but only {free / 2**30:.2f} GiB "
            "is free; free some space or lower prepare.image_size / data.limit"
        )


def compile_forward(
    bottom: keras.Model, top: keras.Model
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """One traced graph returning (boundary activations, conv-base output) for any batch size.

    Compile once and pass it to every `extract_features` call, so several splits pay for tracing
    only once. The layers compute in the precision they have when it is first called (see
    `tlpipe.compute.precision.computing_in`).
    """
    spec = tf.TensorSpec((None, *bottom.input.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec])
    def forward(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        at_boundary = bottom(images, training=False)
        at_output = top(at_boundary, training=False)
        # Under mixed precision the layers return bfloat16/float16; the caches hold float32 values.
        return tf.cast(at_boundary, tf.float32), tf.cast(at_output, tf.float32)

    return forward


def extract_features(
    bottom: keras.Model,
    top: keras.Model,
    images: np.ndarray,
    *,
    batch_size: int,
    boundary_path: Path,
    head_path: Path,
    label: str,
    dtype: str = "float32",
    forward: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None = None,
) -> float:
    """Stream `images` through bottom then top; write both outputs; return images per second.

    While the conv base runs on one batch (TensorFlow's own threads, GIL released), one helper
    thread reads the next batch and another writes the previous batch's outputs, so disk I/O
    overlaps compute. Memory stays flat in the number of images: input and output pages are
    released once used (see `release_rows`) and at most three batches are in flight. Both caches
    are stored as `dtype` (float32 or float16). `forward` is `compile_forward(bottom, top)`,
    compiled here if not given.
    """
    forward = forward or compile_forward(bottom, top)
    n = len(images)
    boundary_shape = (n, *bottom.output.shape[1:])
    head_shape = (n, *top.output.shape[1:])

    def read(start: int) -> tf.Tensor:
        stop = min(start + batch_size, n)
        batch = tf.constant(np.asarray(images[start:stop], dtype=np.float32))
        release_rows(images, start, stop)
        return batch

    def write(start: int, at_boundary: tf.Tensor, at_output: tf.Tensor) -> None:
        stop = start + len(at_boundary)
        for out, rows in ((boundary_out, at_boundary), (head_out, at_output)):
            out[start:stop] = rows.numpy()
            release_rows(out, start, stop)

    started = time.perf_counter()
    with (
        array_writer(boundary_path, boundary_shape, dtype) as boundary_out,
        array_writer(head_path, head_shape, dtype) as head_out,
        tqdm(total=n, unit="img", desc=f"features {label}", mininterval=2.0) as progress,
    ):
        run_overlapped(n, batch_size, read=read, compute=forward, write=write, progress=progress)
    return n / max(time.perf_counter() - started, 1e-9)


def run_overlapped(
    n: int,
    batch_size: int,
    *,
    read: Callable[[int], tf.Tensor],
    compute: Callable[[tf.Tensor], tuple[tf.Tensor, ...]],
    write: Callable[..., None],
    progress: tqdm,
) -> None:
    """For each batch of rows [start, start + batch_size): `read(start)` a batch ahead in one
    helper thread, `compute(batch)` here, `write(start, *outputs)` a batch behind in another;
    at most one write in flight, and a failed read or write re-raised here."""
    with (
        ThreadPoolExecutor(1, thread_name_prefix="features-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="features-write") as writer,
    ):
        next_batch = reader.submit(read, 0) if n else None
        written = None
        for start in range(0, n, batch_size):
            batch = next_batch.result()
            if start + batch_size < n:
                next_batch = reader.submit(read, start + batch_size)
            outputs = compute(batch)
            if written is not None:
                written.result()  # re-raise a failed write; keep at most one write in flight
            written = writer.submit(write, start, *outputs)
            progress.update(len(batch))
        if written is not None:
            written.result()
