"""Where a cached fine-tuning epoch spends its time (the study behind RESULTS.md, fine-tuning part).

    python benchmarks/explore_finetune.py epochs [BATCH ...] [--xla]  # s/epoch, cached vs full pass
    python benchmarks/explore_finetune.py step                          # one cached train step, taken apart

BATCH defaults to 64 256; --xla compiles the train steps with XLA (slow: use EXPLORE_N=256).
Environment: EXPLORE_N images (1280), EXPLORE_SIZE input size (32). The models, optimizer and
timing are those of `benchmarks/run.py` (`finetune_setup`, `measure_finetune`): the stage's
models on a seeded VGG16 frozen up to block4_pool, block5 and the dense head trained.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.run import finetune_setup, measure_finetune  # noqa: E402

N = int(os.environ.get("EXPLORE_N", "1280"))
SIZE = int(os.environ.get("EXPLORE_SIZE", "32"))


def random_images(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-124, 152, (n, SIZE, SIZE, 3)).astype(np.float32)


def epochs(batch_sizes: list[int], jit: bool) -> None:
    """Best of 3 epochs per batch size, cached and full epochs alternating, and their ratio."""
    images = random_images(N)
    for batch in batch_sizes:
        cached, full_pass = measure_finetune(images, N, 3, batch, jit)
        print(f"{SIZE}x{SIZE}, batch {batch}{', XLA' if jit else ''}: cached {cached:.3f} s/epoch, "
              f"full pass {full_pass:.3f} s/epoch, speedup {full_pass / cached:.2f}x ({N} images)", flush=True)


def step() -> None:
    """Forward, forward+backward, optimizer update and the whole step on one batch of 64."""
    trainable, _, activations, y = finetune_setup(random_images(64))
    xa, ya = tf.constant(activations), tf.constant(y)
    variables = trainable.trainable_variables
    loss = keras.losses.CategoricalCrossentropy()

    def ms(fn, n: int = 30) -> float:
        fn(), fn()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1000

    @tf.function
    def gradients():
        with tf.GradientTape() as tape:
            value = loss(ya, trainable(xa, training=True))
        return tape.gradient(value, variables)

    grads = gradients()
    print(f"trainable parameters {sum(int(np.prod(v.shape)) for v in variables):,}")
    print(f"forward              {ms(tf.function(lambda: trainable(xa, training=True))):6.1f} ms")
    print(f"forward+backward     {ms(gradients):6.1f} ms")
    for name, optimizer in [("RMSprop update", keras.optimizers.RMSprop(1e-5)), ("SGD update", keras.optimizers.SGD(1e-5))]:
        optimizer.build(variables)
        print(f"{name:<20} {ms(tf.function(lambda: optimizer.apply(grads, variables))):6.1f} ms")
    # the same RMSprop update as TensorFlow's fused kernel, for comparison
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]

    @tf.function
    def fused():
        for v, (ms_, mom), g in zip(variables, slots, grads):
            tf.raw_ops.ResourceApplyRMSProp(var=v.value.handle, ms=ms_.handle, mom=mom.handle, lr=1e-5, rho=0.9,
                                            momentum=0.0, epsilon=1e-7, grad=g)

    print(f"fused RMSprop kernel {ms(fused):6.1f} ms")
    optimizer = keras.optimizers.RMSprop(1e-5)
    optimizer.build(variables)

    @tf.function
    def train_step():
        optimizer.apply(gradients(), variables)

    print(f"whole train step     {ms(train_step):6.1f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["step"]:
        step()
    else:
        sizes = [int(a) for a in sys.argv[2:] if a != "--xla"]
        epochs(sizes or [64, 256], "--xla" in sys.argv)
