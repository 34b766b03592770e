"""Test-time augmentation (tlpipe/compute/tta.py): in the helper, the evaluate stage and `tlpipe
predict --tta`, on tiny random-weight Keras models."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tests.helpers import VENV_BIN, run, save_random_model
from tests.project import write_params, write_prepared
from tlpipe.compute.archives import load_model, save_model
from tlpipe.compute.streaming import batches
from tlpipe.compute.temperature import with_temperature
from tlpipe.compute.tta import TTA_CHOICES, predict_probabilities
from tlpipe.core import paths
from tlpipe.core.arrays import open_rows
from tlpipe.core.params import EvaluateParams
from tlpipe.data.images import to_model_input

SIZE = 16  # px: the tiny models' input
CLASSES = ["cat", "dog", "horse"]


def left_half_model(classes: int = 2, seed: int = 0) -> keras.Model:
    """Random weights on the left half of the image only: its mirror is another input to it."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    left = keras.layers.Cropping2D(((0, 0), (0, SIZE // 2)))(inputs)  # drop the right columns
    pooled = keras.layers.AveragePooling2D(4)(keras.layers.Rescaling(1 / 255)(left))
    flat = keras.layers.Flatten()(pooled)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(flat))


def images(n: int, seed: int = 0) -> np.ndarray:
    """Random pixel values 0-255 as float32, as the models take them."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_flip_is_the_mean_of_the_image_and_its_mirror_computed_by_hand():
    model, x = left_half_model(), images(10)
    plain = keras.ops.convert_to_numpy(model(x))
    mirror = keras.ops.convert_to_numpy(model(x[:, :, ::-1, :]))  # columns reversed
    got = predict_probabilities(model, x, "flip")
    assert got.dtype == np.float32 and got.shape == (10, 2)
    np.testing.assert_allclose(got, (plain + mirror) / 2, rtol=0, atol=1e-6)


def test_a_model_reading_the_left_half_answers_differently_with_flip_and_none_is_plain():
    model, x = left_half_model(), images(10)
    plain = model.predict(x, verbose=0)
    np.testing.assert_array_equal(predict_probabilities(model, x, "none"), plain)
    flipped = predict_probabilities(model, x, "flip")
    assert np.abs(flipped - plain).max() > 1e-3, np.abs(flipped - plain).max()
    # a left-right symmetric image is its own mirror: flip changes nothing
    symmetric = (x + x[:, :, ::-1, :]) / 2
    np.testing.assert_allclose(
        predict_probabilities(model, symmetric, "flip"),
        model.predict(symmetric, verbose=0),
        rtol=0,
        atol=1e-6,
    )


def test_streamed_batches_are_mirrored_like_an_array(tmp_path):
    model, x = left_half_model(), images(11)
    np.save(tmp_path / "x.npy", x.astype(np.uint8))
    streamed = batches(open_rows(tmp_path / "x.npy"), batch_size=4)  # 4 + 4 + 3 rows
    np.testing.assert_array_equal(
        predict_probabilities(model, streamed, "none"), model.predict(streamed, verbose=0)
    )
    np.testing.assert_allclose(
        predict_probabilities(model, streamed, "flip"),
        predict_probabilities(model, x, "flip"),
        rtol=0,
        atol=1e-6,
    )


def test_the_params_key_and_the_helper_accept_the_same_values():
    assert typing.get_args(EvaluateParams.model_fields["tta"].annotation) == TTA_CHOICES
    with pytest.raises(ValueError, match="tta must be one of none, flip; got 'rotate'"):
        predict_probabilities(left_half_model(), images(1), "rotate")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict[str, Path]:
    """The evaluate stage run with evaluate.tta none and flip on one tiny project: 12 random test
    images, a left-half model ending in temperature 1.5, a dense head on random features."""
    runs = {}
    for tta in TTA_CHOICES:
        root = tmp_path_factory.mktemp(tta)
        write_params(root, {"data.dataset": "digits", "evaluate.tta": tta})
        write_prepared(root, {"test": 12}, SIZE)
        (root / paths.RAW_DIR).mkdir(parents=True)
        np.save(root / paths.raw_images("train"), images(12, seed=1).astype(np.uint8))
        features = np.random.default_rng(2).normal(size=(12, 4)).astype(np.float32)
        (root / paths.head_features("test")).parent.mkdir(parents=True)
        np.save(root / paths.head_features("test"), features)
        head_in = keras.Input((4,))
        head = keras.Model(head_in, keras.layers.Dense(2, activation="softmax")(head_in))
        save_model(head, root / paths.HEAD_FILE)
        save_model(with_temperature(left_half_model(), 1.5), root / paths.MODEL_FILE)
        info = {"backbone": "vgg16", "image_size": SIZE, "classes": ["a", "b"], "temperature": 1.5}
        (root / paths.MODEL_INFO_FILE).write_text(json.dumps(info))
        result = run([str(VENV_BIN / "python"), "-m", "stages.evaluate"], root, check=True)
        (root / "stdout.txt").write_text(result.stdout)
        runs[tta] = root
    return runs


@pytest.mark.parametrize("tta", TTA_CHOICES)
def test_evaluate_scores_the_averaged_probabilities(evaluated, tta):
    root = evaluated[tta]
    model = load_model(root / paths.MODEL_FILE)
    x = np.load(root / paths.prepared_images("test")).astype(np.float32)
    truth = np.load(root / paths.prepared_labels("test")).argmax(axis=1)
    plain = model.predict(x, verbose=0)
    expected = plain if tta == "none" else (plain + model.predict(x[:, :, ::-1], verbose=0)) / 2
    saved = np.load(root / paths.TEST_PROBABILITIES_FILE)  # what analyze reads
    np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-6)
    finetuned = json.loads((root / paths.METRICS_FILE).read_text())["finetuned"]
    assert finetuned["accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == truth))
    assert finetuned.get("tta", "none") == tta and ("tta" in finetuned) == (tta == "flip")
    said = (root / "stdout.txt").read_text()
    assert ("each averaged with its mirror (evaluate.tta: flip)" in said) == (tta == "flip")


@pytest.fixture(scope="module")
def predict_dir(tmp_path_factory) -> Path:
    """models/model.keras + model.json (a random VGG16 at 32 px) and two photos."""
    root = tmp_path_factory.mktemp("predict")
    save_random_model(root, CLASSES, units=8)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "photos/a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "photos/b.png")
    return root


def tlpipe_predict(root: Path, *args: str):
    return run([str(VENV_BIN / "tlpipe"), "predict", *args], root, check=False)


def test_predict_with_flip_prints_the_mean_of_both_views(predict_dir):
    result = tlpipe_predict(predict_dir, "--tta", "flip", "--json", "--top-k", "3", "photos")
    assert result.returncode == 0, result.stderr
    model = load_model(predict_dir / "models/model.keras")
    for entry in json.loads(result.stdout):
        pixels = np.asarray(Image.open(predict_dir / entry["path"]).convert("RGB"))[np.newaxis]
        x = to_model_input(pixels, 32)
        plain = model.predict(x, verbose=0)[0]
        expected = (plain + model.predict(x[:, :, ::-1], verbose=0)[0]) / 2
        got = {p["class"]: p["probability"] for p in entry["predictions"]}
        for index, name in enumerate(CLASSES):
            assert got[name] == pytest.approx(float(expected[index]), abs=1e-5)


def test_predict_refuses_an_unknown_tta_in_one_line_before_loading_anything(predict_dir):
    result = tlpipe_predict(predict_dir, "--tta", "bogus", "photos")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "tlpipe predict: error: argument --tta: invalid choice: 'bogus' "
        "(choose from 'none', 'flip')"
    )
