"""The trainable models and how they are fitted: the dense head, the fine-tuning cut, RMSprop with
cross-entropy, early stopping, and curves logged with DVCLive."""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from dvclive.utils import standardize_metric_name

from tlpipe.core.backbone import split_at
from tlpipe.core.runtime import UserError


def replica_scope(replicas: int, *, key: str) -> contextlib.AbstractContextManager:
    """The scope to build, compile and fit models in, for `replicas` devices of this machine.

    1: no scope at all, the single-device path. More: tf.distribute.MirroredStrategy over that
    many GPUs, or, without GPUs, over that many logical devices carved out of the CPU (each then
    gets a share of TensorFlow's threads). Each batch of the dataset is the global batch, split
    between the replicas. Call it before TensorFlow runs any op: devices cannot be reconfigured
    after. `key` names the param in errors (train.replicas, finetune.replicas).
    """
    if replicas == 1:
        return contextlib.nullcontext()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < replicas:
            raise UserError(
                f"{key}: got {replicas} but this machine has {len(gpus)} GPUs; "
                f"expected at most {len(gpus)}"
            )
        devices = [f"/gpu:{index}" for index in range(replicas)]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
        devices = [f"/cpu:{index}" for index in range(replicas)]
    strategy = tf.distribute.MirroredStrategy(devices)
    print(f"{key}: {replicas} replicas, MirroredStrategy over {', '.join(devices)}")
    return strategy.scope()


def build_head(
    input_shape: tuple[int, ...], n_classes: int, *, units: int, dropout: float
) -> keras.Model:
    """Flatten -> Dense(units, relu) -> Dropout -> Dense(n_classes, softmax)."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(n_classes, activation="softmax"),
        ],
        name="head",
    )


def build_finetune_models(
    backbone: keras.Model, head: keras.Model, boundary: str
) -> tuple[keras.Model, keras.Model]:
    """(trainable part on boundary activations, full model on images); they share their layers.

    Layers up to and including `boundary` are frozen; everything after it, and the head, trains,
    except BatchNormalization layers: they stay frozen, in inference mode, so that small
    fine-tuning batches do not overwrite the statistics the backbone learned.
    """
    bottom, top = split_at(backbone, boundary)
    for layer in bottom.layers:
        layer.trainable = False
    for layer in top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    activations = keras.Input(shape=top.input.shape[1:], name="boundary_activations")
    trainable = keras.Model(activations, head(top(activations)), name="finetune_top")
    full = keras.Model(backbone.input, head(backbone.output), name="finetuned")
    return trainable, full


def finetune_model(
    backbone: keras.Model, head: keras.Model, boundary: str, *, augment: bool, seed: int
) -> tuple[keras.Model, keras.Model]:
    """(the model fine-tuning fits, the full model it saves), as `build_finetune_models` cuts them.

    Without `augment`, the fitted model is the part above `boundary`, fed the activations cached
    there (`paths.boundary_features`). With it, the inputs change every epoch, so no cache can
    serve: the fitted model is seeded augmentation layers before the full model, fed the prepared
    images (`paths.prepared_images`). The finetune stage and `tlpipe lr-find` both fit this one.
    """
    trainable, full = build_finetune_models(backbone, head, boundary)
    if not augment:
        return trainable, full
    augmented = keras.Sequential(
        [keras.Input(shape=full.input.shape[1:]), build_augmentation(seed), full], name="augmented"
    )
    return augmented, full


def build_augmentation(seed: int) -> keras.Sequential:
    """Random flips, small shifts, rotations and zoom, each layer seeded."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 1),
            keras.layers.RandomRotation(0.05, seed=seed + 2),
            keras.layers.RandomZoom(0.1, seed=seed + 3),
        ],
        name="augmentation",
    )


def compile_classifier(model: keras.Model, lr: float) -> None:
    """RMSprop at learning rate `lr`, categorical cross-entropy, accuracy: head and fine-tuning."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def fit_logged(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    *,
    epochs: int,
    patience: int,
    live_dir: Path,
) -> keras.callbacks.History:
    """Fit on batches of (inputs, one-hot labels) with early stopping on val_loss (best weights
    restored); log every epoch to `live_dir`. `train` sets the order of each epoch (see
    `tlpipe.compute.streaming.batches`).

    DVCLive writes metrics.json and per-epoch .tsv curves; dvc.yaml declares them, so DVCLive is
    told not to edit dvc.yaml itself nor to create experiments of its own. metrics.json then holds
    the best epoch's values, those of the weights kept, not the last epoch's. `dvc plots show`
    draws the curves from the .tsv files.
    """
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    history = model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        shuffle=False,  # `train` orders each epoch itself
        callbacks=[stop, DVCLiveCallback(live=live)],
        verbose=2,
    )
    summarise_best_epoch(live, history.history, stop.best_epoch)
    return history


def summarise_best_epoch(live: Live, history: dict[str, list[float]], best_epoch: int) -> None:
    """Rewrite DVCLive's summary (the last epoch's values) with those of `best_epoch` (0-based)."""
    for name, values in history.items():
        split, metric = standardize_metric_name(name, "dvclive.keras").split("/", 1)
        live.summary.setdefault(split, {})[metric] = values[best_epoch]
    live.summary["best_epoch"] = best_epoch + 1
    live.make_summary()
