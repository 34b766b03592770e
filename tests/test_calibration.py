"""Temperature scaling (compute/temperature.py) and calibration error (outputs/calibration.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from tlpipe.compute.archives import load_model, save_model
from tlpipe.compute.temperature import (
    TemperatureScaling,
    apply_temperature,
    fit_temperature,
    with_temperature,
    without_temperature,
)
from tlpipe.outputs.calibration import (
    calibration_bins,
    expected_calibration_error,
    write_reliability,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def over_confident(true_temperature: float, n: int = 20_000, classes: int = 5, seed: int = 0):
    """(model probabilities softmax(z), labels drawn from softmax(z / true_temperature)): a model
    whose logits are `true_temperature` times too large."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (n, classes))
    labels_p = softmax(z / true_temperature)
    truth = (labels_p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return softmax(z), truth


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    probabilities, truth = over_confident(2.5)
    assert fit_temperature(probabilities, truth) == pytest.approx(2.5, rel=0.05)
    probabilities, truth = over_confident(0.5)  # under-confident: T < 1 sharpens
    assert fit_temperature(probabilities, truth) == pytest.approx(0.5, rel=0.05)


def test_the_fit_is_deterministic_and_lowers_the_error():
    probabilities, truth = over_confident(2.5, n=2_000)
    temperature = fit_temperature(probabilities, truth)
    assert fit_temperature(probabilities, truth) == temperature
    calibrated = apply_temperature(probabilities, temperature)
    before = expected_calibration_error(truth, probabilities)
    after = expected_calibration_error(truth, calibrated)
    assert after < before / 2, (before, after)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))


def test_the_layer_computes_what_numpy_does_and_keeps_the_argmax():
    probabilities, _ = over_confident(2.5, n=500)
    probabilities = probabilities.astype(np.float32)
    layer = TemperatureScaling(2.5)
    out = keras.ops.convert_to_numpy(layer(probabilities))
    np.testing.assert_allclose(out, apply_temperature(probabilities, 2.5), atol=1e-6)
    np.testing.assert_array_equal(out.argmax(axis=1), probabilities.argmax(axis=1))
    # undone by 1 / T; and a probability of exactly 0 (float32 underflow) gives no NaN
    np.testing.assert_allclose(apply_temperature(out, 1 / 2.5), probabilities, atol=1e-5)
    assert np.isfinite(keras.ops.convert_to_numpy(layer(np.array([[1.0, 0.0]])))).all()


@pytest.mark.parametrize("bad", [0, -1.0, "2"])
def test_a_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        TemperatureScaling(bad)


def test_a_calibrated_model_saves_loads_in_safe_mode_and_strips(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs), name="m")
    calibrated = with_temperature(model, 1.7)
    save_model(calibrated, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")  # safe mode: the layer is registered
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), calibrated.predict(x, verbose=0))
    assert loaded.layers[-1].temperature == 1.7
    np.testing.assert_allclose(
        without_temperature(loaded).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    assert without_temperature(model) is model


def test_ece_of_constructed_cases():
    # Every top probability 0.8 and 80 % right: calibrated.
    probabilities = np.tile([[0.8, 0.2]], (10, 1))
    truth = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(truth, probabilities) == pytest.approx(0.0)
    # 0.9 confident and 60 % right: 0.3 off.
    probabilities = np.tile([[0.9, 0.1]], (10, 1))
    truth = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(truth, probabilities) == pytest.approx(0.3)
    # Half the images in each of two bins: the mean of the two gaps.
    probabilities = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 4)
    truth = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # 100 % and 50 % right
    assert expected_calibration_error(truth, probabilities) == pytest.approx((0.05 + 0.05) / 2)


def test_bins_are_right_closed_and_count_every_image():
    probabilities = np.array([[1.0, 0.0], [1 / 15, 14 / 15], [0.5, 0.5], [0.6, 0.4]])
    rows = calibration_bins(np.array([0, 1, 0, 0]), probabilities)
    assert len(rows) == 15 and sum(row["count"] for row in rows) == 4
    assert rows[14]["count"] == 1 and rows[13]["count"] == 1  # 1.0 in (14/15, 1]; 14/15 below
    assert rows[7]["count"] == 1 and rows[8]["count"] == 1  # 0.5 in (7/15, 8/15]; 0.6 above


def test_reliability_files_are_reproducible(tmp_path):
    probabilities, truth = over_confident(2.5, n=300)
    curves = {"uncalibrated": probabilities, "fine-tuned": apply_temperature(probabilities, 2.5)}
    binned = {label: calibration_bins(truth, p) for label, p in curves.items()}
    write_reliability(tmp_path / "a", binned, temperature=2.5)
    write_reliability(tmp_path / "b", binned, temperature=2.5)
    for name in ("reliability.csv", "reliability.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines = (tmp_path / "a/reliability.csv").read_text().splitlines()
    assert lines[0] == "model,lower,upper,count,confidence,accuracy"
    assert len(lines) == 1 + 2 * 15
    assert Image.open(tmp_path / "a/reliability.png").format == "PNG"
