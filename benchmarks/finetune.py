"""Fine-tuning from the cache against fine-tuning on images, with the finetune stage's own parts.

`build_head`, `build_finetune_models` and `compile_classifier` build and compile the models as
stages/finetune.py does; both feed them `tlpipe.compute.streaming.batches` over .npy files, as
the stage does with and without `finetune.augment` (the augmentation layers aside): one epoch on
the cached boundary activations against one epoch of the full model on uint8 images. Also: the
demo's fine-tuning epoch fed from memory, from a float32 cache and from a float16 cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    CLASSES,
    SEED,
    UNFREEZE_FROM,
    Context,
    best_of,
    conv_base,
    write_pixels,
)
from benchmarks.table import Row

# images at each size (scaled to the machine in quick mode); epochs are timed one by one
SIZES = {"quick": {32: 1280, 64: 384, 150: 96}, "full": {32: 3072, 64: 768, 150: 192}}
DEMO_TRAIN = 1257  # the demo's training images: digits less its test and val splits
DEMO_UNFREEZE = "block4_conv1"


def models(size: int, unfreeze_from: str):
    """(trainable part, full model, bottom): the stage's models on a seeded random VGG16."""
    from tlpipe.compute.training import build_finetune_models, build_head
    from tlpipe.core.backbone import boundary_layer, split_at
    from tlpipe.core.params import load_params

    base = conv_base(size)
    train = load_params().train
    head = build_head(base.output.shape[1:], CLASSES, units=train.units, dropout=train.dropout)
    boundary = boundary_layer(base, unfreeze_from)
    trainable, full = build_finetune_models(base, head, boundary)
    return trainable, full, split_at(base, boundary)[0]


def epoch_seconds(model, dataset, *, reps: int) -> list[float]:
    """Wall time of each of `reps` epochs, timed by a callback, so fit()'s set-up is left out."""
    import keras

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.times.append(time.perf_counter() - self.started)

    timer = EpochTimes()
    timer.times = []  # seconds per epoch
    model.fit(dataset, epochs=reps, shuffle=False, verbose=0, callbacks=[timer])
    return timer.times


def cached_vs_full(workdir: Path, *, size: int, n: int, reps: int, batch_size: int):
    """(cached epoch s, full epoch s), block5 and the head training; the two alternate."""
    from tlpipe.compute.streaming import batches
    from tlpipe.compute.training import compile_classifier
    from tlpipe.core.arrays import open_rows, save_array

    trainable, full, bottom = models(size, UNFREEZE_FROM)
    pixels = write_pixels(workdir / f"ft{size}_x.npy", n, size, seed=size)  # (n, s, s, 3) uint8
    at_boundary = bottom.predict(np.load(pixels), batch_size=64, verbose=0)  # (n, s/16, s/16, 512)
    save_array(workdir / f"ft{size}_b.npy", at_boundary.astype(np.float32))
    labels = np.eye(CLASSES, dtype=np.float32)[np.random.default_rng(SEED).integers(0, CLASSES, n)]
    save_array(workdir / f"ft{size}_y.npy", labels)
    y = open_rows(workdir / f"ft{size}_y.npy")
    feeds = {}
    for name, model, x in (("cached", trainable, f"ft{size}_b.npy"), ("full", full, pixels.name)):
        compile_classifier(model, 1e-4)
        feeds[name] = (model, batches(open_rows(workdir / x), y, batch_size=batch_size, seed=SEED))
        model.fit(feeds[name][1].take(2), verbose=0)  # traces the train step outside the timing
    times = {name: [] for name in feeds}
    for _ in range(reps):  # alternate, so that a slow spell hits both alike
        for name, (model, dataset) in feeds.items():
            times[name] += epoch_seconds(model, dataset, reps=1)
    return min(times["cached"]), min(times["full"])


def stream_vs_memory(workdir: Path, *, n: int, reps: int, batch_size: int) -> dict[str, float]:
    """Seconds per epoch of the demo's fine-tuning (block4 unfrozen, on `n` cached 4x4x256
    activations at 32 px; the demo has 1,257) fed from NumPy arrays in memory, from a float32 .npy
    and from a float16 .npy through `tlpipe.compute.streaming.batches`; epochs alternate."""
    from tlpipe.compute.streaming import batches
    from tlpipe.compute.training import compile_classifier
    from tlpipe.core.arrays import open_rows

    trainable, _, _ = models(32, DEMO_UNFREEZE)
    rng = np.random.default_rng(SEED)
    x = rng.normal(0, 1, (n, *trainable.input.shape[1:])).astype(np.float32)  # (n, 4, 4, 256)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    np.save(workdir / "stream_y.npy", y)
    streamed = {}
    for dtype in ("float32", "float16"):
        np.save(workdir / f"stream_x_{dtype}.npy", x.astype(dtype))
        rows = open_rows(workdir / f"stream_x_{dtype}.npy")
        streamed[dtype] = batches(
            rows, open_rows(workdir / "stream_y.npy"), batch_size=batch_size, seed=SEED
        )
    compile_classifier(trainable, 1e-4)
    trainable.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)

    def memory() -> None:
        trainable.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)

    feeds = {"memory": memory}
    for dtype, dataset in streamed.items():
        feeds[f"stream_{dtype}"] = lambda d=dataset: trainable.fit(
            d, epochs=1, shuffle=False, verbose=0
        )
    return best_of(feeds, reps)


def run(ctx: Context) -> tuple[dict, list[Row]]:
    result, rows = {}, []
    for size, n in SIZES[ctx.mode].items():
        count = ctx.count(n, floor=ctx.finetune_batch)
        reps = 2 if ctx.mode == "quick" else 3
        cached, full = cached_vs_full(
            ctx.workdir, size=size, n=count, reps=reps, batch_size=ctx.finetune_batch
        )
        result[f"finetune_speedup_{size}"] = round(full / cached, 2)
        result[f"finetune_epochs_s_{size}"] = [round(cached, 3), round(full, 3), count]
        bound = {32: " (bound ~2.6x there)", 150: " (target >= 3.5)"}.get(size, "")
        rows.append(
            Row(
                f"epoch at {size} px, full model / cached, {count} images",
                f"{full / cached:.2f}x",
                f"{full:.2f} / {cached:.2f} s{bound}",
            )
        )
    epochs = stream_vs_memory(
        ctx.workdir,
        n=ctx.count(DEMO_TRAIN, floor=4 * ctx.finetune_batch),
        reps=2 if ctx.mode == "quick" else 5,
        batch_size=ctx.finetune_batch,
    )
    result["finetune_epoch_speedup"] = result["finetune_speedup_32"]
    result["stream_epochs_s"] = {name: round(s, 3) for name, s in epochs.items()}
    result["stream_vs_memory_epoch"] = round(epochs["memory"] / epochs["stream_float32"], 3)
    float16 = epochs["stream_float32"] / epochs["stream_float16"]
    rows += [
        Row(
            "demo epoch, streamed float32 cache / memory",
            f"{result['stream_vs_memory_epoch']:.3f}x",
            "speed relative to in-memory arrays (target >= 0.9)",
        ),
        Row("demo epoch, float16 cache / float32 cache", f"{float16:.3f}x", "speed ratio"),
    ]
    return result, rows
