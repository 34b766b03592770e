"""Each exported file in each client a user would load it with, against `tlpipe predict`.

One random-init VGG16 (tests/helpers.py `save_random_model`) is exported once for the module; each
client then runs in a fresh process with only its own runtime (tests/run_exported.py) on images
smaller than, equal to and larger than the model's 32x32. docs/exports.md lists what this measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, VENV_BIN, run, save_random_model
from tlpipe.core.export_formats import FORMAT_NAMES

CLASSES = [f"class{i}" for i in range(10)]
SIZES = [(8, 8), (32, 32), (64, 64)]  # smaller than, equal to and larger than the model's input
CLIENTS = {  # client (tests/run_exported.py) -> the file it loads
    "saved_model": "export/saved_model",  # tf.saved_model.load
    "tflite": "export/model.tflite",  # tf.lite.Interpreter, default XNNPACK delegate
    "litert": "export/model.tflite",  # ai_edge_litert
    "onnx": "export/model.onnx",  # onnxruntime
    "opencv": "export/model.onnx",  # cv2.dnn.readNetFromONNX
}
# Every client computes the same whole pixel values as `tlpipe predict`; what is left is float32
# reassociation in the convolutions (measured at most 2.4e-6). One pixel a level off moves this
# model's probabilities by about 2e-5, and a wrong graph by 1e-2: both fail.
TOLERANCE = 1e-5
# The quantized files in the same clients. float16 weights are float32 rounded to 11 bits; int8
# files run int8 kernels, which two clients of one file must run alike (the same answers), while
# their distance from the float model is the quantization's (metrics/export.json measures it).
QUANTIZED_CLIENTS = {
    ("tflite", "export/model_float16.tflite"),
    ("litert", "export/model_float16.tflite"),
    ("tflite", "export/model_int8.tflite"),
    ("litert", "export/model_int8.tflite"),
    ("onnx", "export/model_int8.onnx"),
    ("opencv", "export/model_int8.onnx"),
}
FLOAT16_TOLERANCE = 1e-3
# int8: OpenCV's kernels round some products the other way from onnxruntime's, which moved an
# output by one step of the int8 softmax (1/255 = 3.9e-3). From the float model, measured 2.2e-3;
# a wrong graph (e.g. a quantized resize at a size it was not calibrated for) is off by 1e-1.
INT8_CLIENT_TOLERANCE = 4e-3
INT8_TOLERANCE = 2e-2

EXPORT = """
import sys
from pathlib import Path

import numpy as np

from tlpipe.outputs.export import export_model, use_pure_python_protobuf

use_pure_python_protobuf()
from tlpipe.compute.archives import load_model

root = Path(sys.argv[1])
(root / "export").mkdir()
model = load_model(root / "models/model.keras")
images = np.random.default_rng(1).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
formats = sys.argv[2].split(",")
export_model(
    model, root / "export", image_size=32, class_names=sys.argv[3:], formats=formats,
    calibration=images,
)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A folder with models/model.keras, its export/ and images/ of every size in SIZES."""
    root = tmp_path_factory.mktemp("clients")
    save_random_model(root, CLASSES, units=16)
    run([sys.executable, "-c", EXPORT, str(root), ",".join(FORMAT_NAMES), *CLASSES], root)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        for i in range(3):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{height}x{width}_{i}.png")
    return root


@pytest.fixture(scope="module")
def expected(exported: Path) -> dict[str, np.ndarray]:
    """{image path: probabilities} from `tlpipe predict`, every class."""
    options = ["--json", "--top-k", str(len(CLASSES)), "--model", "models/model.keras"]
    result = run([str(VENV_BIN / "tlpipe"), "predict", *options, "images"], exported)
    probabilities = {}
    for item in json.loads(result.stdout):
        by_class = {p["class"]: p["probability"] for p in item["predictions"]}
        probabilities[item["path"]] = np.array([by_class[name] for name in CLASSES])
    assert len(probabilities) == 3 * len(SIZES)
    return probabilities


def answers(exported: Path, client: str, file: str, paths: list[str]) -> dict[str, list[float]]:
    """{image path: probabilities} from `client` (tests/run_exported.py) loading `file`."""
    command = [sys.executable, str(REPO / "tests/run_exported.py"), client, file, *paths]
    return json.loads(run(command, exported).stdout)["rgb"]


def differences(exported: Path, expected: dict, client: str) -> dict[str, float]:
    """{"HxW": largest |probability - tlpipe predict's|} for `client`; asserts top-1 agreement."""
    got = answers(exported, client, CLIENTS[client], sorted(expected))
    assert set(got) == set(expected)
    largest: dict[str, float] = {}
    for path, probabilities in got.items():
        assert np.argmax(probabilities) == np.argmax(expected[path]), (client, path)
        size = Path(path).name.split("_")[0]
        gap = float(np.abs(np.array(probabilities) - expected[path]).max())
        largest[size] = max(largest.get(size, 0.0), gap)
    return largest


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_predicts_what_tlpipe_predict_does_at_every_size(exported, expected, client):
    largest = differences(exported, expected, client)
    print(f"{client}: {largest}")  # the figures in docs/exports.md (pytest -s)
    assert set(largest) == {f"{h}x{w}" for h, w in SIZES}
    assert max(largest.values()) <= TOLERANCE, (client, largest)


@pytest.fixture(scope="module")
def quantized(exported: Path, expected: dict) -> dict[tuple[str, str], dict]:
    """{(client, file): {image path: probabilities}} for each of QUANTIZED_CLIENTS."""
    paths = sorted(expected)
    return {pair: answers(exported, *pair, paths) for pair in sorted(QUANTIZED_CLIENTS)}


def test_float16_files_predict_what_tlpipe_predict_does_in_each_client(quantized, expected):
    for (client, file), got in quantized.items():
        if "float16" not in file:
            continue
        gaps = [np.abs(np.array(got[path]) - expected[path]).max() for path in expected]
        print(f"{client} {file}: {max(gaps):.2e}")  # docs/predict-and-export.md (pytest -s)
        assert max(gaps) <= FLOAT16_TOLERANCE, (client, file)
        for path in expected:
            assert np.argmax(got[path]) == np.argmax(expected[path]), (client, file, path)


@pytest.mark.parametrize("file", ["export/model_int8.tflite", "export/model_int8.onnx"])
def test_each_int8_file_answers_alike_in_both_its_clients_at_every_size(quantized, expected, file):
    first, second = (got for (_, name), got in sorted(quantized.items()) if name == file)
    gaps = [np.abs(np.array(first[path]) - np.array(second[path])).max() for path in expected]
    far = [np.abs(np.array(first[path]) - expected[path]).max() for path in expected]
    print(f"{file}: between clients {max(gaps):.2e}, from tlpipe predict {max(far):.2e}")
    assert max(gaps) <= INT8_CLIENT_TOLERANCE, file
    assert 0 < max(far) <= INT8_TOLERANCE, file  # quantized, and close at every size
