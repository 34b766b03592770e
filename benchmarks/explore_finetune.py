"""Where a cached fine-tuning epoch spends its time (the study behind RESULTS.md, fine-tuning part).

    python benchmarks/explore_finetune.py epochs [SPEC ...]   # seconds per epoch, cached vs full pass
    python benchmarks/explore_finetune.py step                # one cached train step, taken apart

A SPEC is `cached|full,BATCH,JIT` (default: cached,64,0 full,64,0 cached,256,0 full,256,0);
JIT=1 compiles the train step with XLA. Environment: EXPLORE_N images (1280), EXPLORE_DETERMINISM
(1: op determinism on, as in the stages). Same model as the stage: VGG16 (random weights) frozen up
to block4_pool, block5 and the dense head trained with the stage's optimizer.
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

from stages.backbone import boundary_layer  # noqa: E402
from stages.finetune import build_finetune_models, compile_for_finetuning  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.train import build_head  # noqa: E402

N = int(os.environ.get("EXPLORE_N", "1280"))
CLASSES = 10


def models() -> tuple[keras.Model, keras.Model, np.ndarray, np.ndarray, np.ndarray]:
    """(trainable top on block4_pool activations, full model, images, activations, one-hot labels)."""
    keras.utils.set_random_seed(0)
    if os.environ.get("EXPLORE_DETERMINISM", "1") == "1":
        tf.config.experimental.enable_op_determinism()
    params = load_params(ROOT / "params.yaml")
    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    head = build_head(backbone.output.shape[1:], CLASSES, params.train)
    boundary = boundary_layer(backbone, "block5_conv1")
    trainable, full = build_finetune_models(backbone, head, boundary)
    x = np.random.default_rng(0).uniform(-124, 152, (N, 32, 32, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.random.default_rng(1).integers(0, CLASSES, N), CLASSES)
    activations = keras.Model(backbone.input, backbone.get_layer(boundary).output).predict(x, batch_size=128, verbose=0)
    return trainable, full, x, activations, y


def epochs(specs: list[str]) -> None:
    trainable, full, x, activations, y = models()
    lr = load_params(ROOT / "params.yaml").lr
    for spec in specs:
        which, batch, jit = spec.split(",")
        model, inputs = (trainable, activations) if which == "cached" else (full, x)
        batch = int(batch)
        compile_for_finetuning(model, lr)
        model.jit_compile = jit == "1"
        model.fit(inputs[: 2 * batch], y[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # trace
        times = []
        for _ in range(3):
            started = time.perf_counter()
            model.fit(inputs, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)
            times.append(time.perf_counter() - started)
        print(f"{spec:<16} {min(times):7.3f} s/epoch  {N / min(times):7.0f} img/s", flush=True)


def step() -> None:
    """Forward, forward+backward, optimizer update and the whole step on one batch of 64."""
    trainable, _, _, activations, y = models()
    xa, ya = tf.constant(activations[:64]), tf.constant(y[:64])
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
        epochs(sys.argv[2:] or ["cached,64,0", "full,64,0", "cached,256,0", "full,256,0"])
