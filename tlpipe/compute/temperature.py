"""Temperature scaling: one scalar that makes the fine-tuned model's probabilities mean what they
say (Guo et al., "On Calibration of Modern Neural Networks", 2017).

A fine-tuned CNN is over-confident: of the test images it gives 0.99, fewer than 99 % are right.
Dividing its logits z by a temperature T > 1 softens every prediction alike, so the order of the
classes, and with it the accuracy, cannot change. The model ends in a softmax, so the layer works
on its probabilities p: log p = z - logsumexp(z), and softmax(log p / T) = softmax(z / T), since
the subtracted constant cancels. `fit_temperature` picks T on the validation split by minimising
the negative log-likelihood (one convex problem in log T, solved by bounded Brent search:
deterministic). The layer is registered with Keras, so models holding it load in safe mode once
this module is imported (`tlpipe.compute.archives.load_model` does that), and it is part of every
exported graph (log, divide, softmax: built-ins of every runtime the exports target).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

TINY = 1e-30  # floor under a probability before its log: float32 softmax can underflow to 0
BOUNDS = (0.05, 20.0)  # the temperatures searched; beyond them the model is broken, not mistuned


@keras.saving.register_keras_serializable(package="tlpipe")
class TemperatureScaling(keras.layers.Layer):
    """Class probabilities in -> the same probabilities at temperature `temperature` out."""

    def __init__(self, temperature: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(temperature, float | int) and temperature > 0):
            raise ValueError(f"temperature must be a positive number; got {temperature!r}")
        self.temperature = float(temperature)

    def call(self, probabilities: Any) -> Any:
        log_p = keras.ops.log(keras.ops.maximum(keras.ops.cast(probabilities, "float32"), TINY))
        return keras.ops.softmax(log_p / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """`model` (probabilities out) followed by a `TemperatureScaling` layer, as one model."""
    scaled = TemperatureScaling(temperature, name="temperature")(model.output)
    return keras.Model(model.input, scaled, name=model.name)


def without_temperature(model: keras.Model) -> keras.Model:
    """`model` without its last layer if that is a `TemperatureScaling`, else `model`."""
    last = model.layers[-1]
    if not isinstance(last, TemperatureScaling):
        return model
    return keras.Model(model.input, last.input, name=model.name)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(N, classes) probabilities at `temperature`, in float64: what the layer computes.
    `apply_temperature(p, 1 / T)` undoes a layer of temperature T."""
    log_p = np.log(np.maximum(np.asarray(probabilities, np.float64), TINY)) / temperature
    log_p -= log_p.max(axis=1, keepdims=True)
    exp = np.exp(log_p)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean -log p[true class] over the rows of (N, classes) `probabilities`."""
    picked = np.asarray(probabilities, np.float64)[np.arange(len(truth)), truth]
    return float(-np.mean(np.log(np.maximum(picked, TINY))))


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The temperature in BOUNDS minimising the validation NLL of `probabilities` (N, classes)
    for integer classes `truth` (N,), to 4 significant digits (the loss is flat there)."""
    from scipy.optimize import minimize_scalar

    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    if probabilities.ndim != 2 or truth.shape != (len(probabilities),) or not len(truth):
        raise ValueError(
            f"expected probabilities (N, classes) and truth (N,), N > 0; "
            f"got {probabilities.shape} and {truth.shape}"
        )

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probabilities, math.exp(log_t)), truth)

    bounds = (math.log(BOUNDS[0]), math.log(BOUNDS[1]))
    found = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-5})
    return float(f"{math.exp(found.x):.4g}")
