"""The `export` stage: SavedModel, LiteRT and ONNX files that predict what `tlpipe predict` does,
each run by its own runtime in a fresh process, and the model card.

The unit tests check the pieces that make this hold: the in-graph resize against `prepare`'s, and
the canonical form that makes tf2onnx's output the same bytes every time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from tests.helpers import (
    OFFLINE,
    REPO,
    SMALL_ANALYZE,
    UP_TO_DATE,
    VENV_BIN,
    copy_project,
    run,
    stages_that_ran,
)
from tlpipe.core import export_formats
from tlpipe.data.images import to_model_input
from tlpipe.outputs.export import canonical_onnx, resize_pixels
from tlpipe.outputs.export_scores import size_in_bytes

# The tiny offline pipeline, smaller still: the model only has to exist, not to be good.
QUICK = ["-S", "data.limit=200", "-S", "train.epochs=1", "-S", "finetune.epochs=1"]
QUICK += SMALL_ANALYZE
FORMATS = {
    "saved_model": "models/export/saved_model",
    "litert": "models/export/model.tflite",
    "onnx": "models/export/model.onnx",
}
CLIENTS = {**FORMATS, "tflite": FORMATS["litert"], "opencv": FORMATS["onnx"]}  # run_exported.py
# export.formats' default: the float files and the quantized LiteRT ones (params.yaml)
DEFAULT_FILES = {
    "saved_model",
    "model.tflite",
    "model_float16.tflite",
    "model_int8.tflite",
    "model.onnx",
}
TOLERANCE = 1e-4  # float32 probabilities


@pytest.mark.parametrize(
    ("height", "width", "channels", "size"),
    [(8, 8, 1, 32), (32, 32, 3, 32), (33, 32, 3, 32), (45, 60, 3, 32), (480, 640, 3, 48)],
)
def test_in_graph_resize_matches_prepare(height, width, channels, size):
    """Up, down, and not at all: the same whole pixel values as `prepare`, except where its
    unrounded value sits on half a level (the products sum in another order than
    tf.image.resize), and there one level off."""
    import tensorflow as tf

    images = np.random.default_rng(height).integers(
        0, 256, (2, height, width, channels), dtype=np.uint8
    )
    expected = to_model_input(images, size)
    got = resize_pixels(images, size).numpy()
    assert got.shape == expected.shape == (2, size, size, 3)
    assert np.abs(got - expected).max() <= 1.0
    unrounded = tf.image.resize(images.astype(np.float32), (size, size), antialias=True).numpy()
    off = got[..., :channels] != expected[..., :channels]
    assert np.all(np.abs(unrounded[off] % 1.0 - 0.5) < 1e-3)
    if (height, width) == (size, size):
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("side", [8, 16])
def test_in_graph_resize_run_as_a_graph_is_exact_where_its_arithmetic_is(side):
    """Enlarging by a power of two makes every weight, product and sum exact, and about one pixel
    in twenty lands exactly on half a level: the graph a SavedModel runs (TensorFlow's graph
    optimiser applied) must round each as `prepare` does. With `1.0 / x` in the graph, the
    optimiser's approximate Reciprocal put 2-4 % of the pixels a level off."""
    import tensorflow as tf

    images = np.random.default_rng(side).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    as_graph = tf.function(
        lambda images: resize_pixels(images, 32),
        input_signature=[tf.TensorSpec((None, None, None, None), tf.uint8)],
    )
    assert np.array_equal(as_graph(images).numpy(), to_model_input(images, 32))


def two_conversions() -> list[onnx.ModelProto]:
    """One small graph as tf2onnx might write it twice: constants and nodes named from counters
    in another order, the nodes listed in another (valid) order."""
    models = []
    for numbering, order, reverse_constants in (
        ((7, 9), (0, 1, 2, 3), False),
        ((12, 3), (1, 0, 3, 2), True),
    ):
        bias, scale = (f"const_fold_opt__{n}" for n in numbering)
        constants = [
            helper.make_tensor(bias, TensorProto.FLOAT, [1], [0.5]),
            helper.make_tensor(scale, TensorProto.FLOAT, [1], [2.0]),
        ]
        n = numbering[0]
        nodes = [
            helper.make_node("Add", ["x:0", bias], [f"left__{n}"], name=f"add__{n}"),
            helper.make_node("Mul", ["x:0", scale], ["right"], name="mul"),
            helper.make_node("Relu", [f"left__{n}"], ["left_relu"], name="relu"),
            helper.make_node("Sub", ["left_relu", "right"], ["y:0"], name="sub"),
        ]
        graph = helper.make_graph(
            [nodes[i] for i in order],
            "g",
            [helper.make_tensor_value_info("x:0", TensorProto.FLOAT, ["unk__1", 3, 3, 1])],
            [helper.make_tensor_value_info("y:0", TensorProto.FLOAT, ["unk__2", 3, 3, 1])],
            constants[::-1] if reverse_constants else constants,
        )
        models.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return models


def test_canonical_onnx_gives_one_form_for_reordered_and_renumbered_graphs():
    first, second = two_conversions()
    assert first.SerializeToString() != second.SerializeToString()
    for model in (first, second):
        canonical_onnx(model)
        onnx.checker.check_model(model, full_check=True)
    assert first.SerializeToString() == second.SerializeToString()
    graph = first.graph
    assert [graph.input[0].name, graph.output[0].name] == ["images", "probabilities"]
    assert [dim.dim_param for dim in graph.input[0].type.tensor_type.shape.dim] == [
        "batch",
        "height",
        "width",
        "channels",
    ]
    position = {node.op_type: i for i, node in enumerate(graph.node)}
    assert position["Add"] < position["Relu"] < position["Sub"]
    assert position["Mul"] < position["Sub"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The quick offline pipeline, run to the end, with a folder of images of several sizes."""
    root = copy_project(tmp_path_factory.mktemp("export"))
    ran = run(["dvc", "exp", "run", *OFFLINE, *QUICK], root).output
    assert "export" in stages_that_ran(ran)
    digits = np.load(root / "data/raw/train_images.npy")  # 8x8 grey, as the dataset has them
    images = root / "images"
    images.mkdir()
    for i in range(3):  # grey, smaller than the model's 32x32
        Image.fromarray(digits[i, ..., 0]).save(images / f"digit{i}_8x8_grey.png")
    tint = np.array([1.0, 0.8, 0.5])
    for i, (width, height) in enumerate([(45, 60), (45, 60), (32, 32), (130, 97)], start=3):
        grown = Image.fromarray(digits[i, ..., 0]).resize((width, height), Image.Resampling.NEAREST)
        rgb = (np.asarray(grown, dtype=np.float64)[..., np.newaxis] * tint).astype(np.uint8)
        Image.fromarray(rgb).save(images / f"digit{i}_{width}x{height}_rgb.png")
    return root


@pytest.fixture(scope="module")
def expected(project: Path) -> dict[str, list[float]]:
    """{image path: probabilities} from `tlpipe predict`, every class."""
    classes = (project / "models/export/labels.txt").read_text().splitlines()
    result = run(
        [str(VENV_BIN / "tlpipe"), "predict", "--json", "--top-k", str(len(classes)), "images"],
        project,
    )
    probabilities = {}
    for item in json.loads(result.stdout):
        by_class = {p["class"]: p["probability"] for p in item["predictions"]}
        probabilities[item["path"]] = [by_class[name] for name in classes]
    assert len(probabilities) == 7
    return probabilities


def assert_same_predictions(got: dict, expected: dict) -> None:
    assert set(got) <= set(expected) and got
    for path, probabilities in got.items():
        want = np.array(expected[path])
        assert np.argmax(probabilities) == np.argmax(want), path
        gap = np.abs(np.array(probabilities) - want).max()
        print(f"{path}: {gap:.2e}")  # the figures in docs/exports.md (pytest -s)
        assert gap <= TOLERANCE, path


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_each_format_in_its_own_runtime_predicts_what_tlpipe_predict_does(project, expected, kind):
    paths = sorted(str(path.relative_to(project)) for path in (project / "images").iterdir())
    result = run(
        [sys.executable, str(REPO / "tests/run_exported.py"), kind, CLIENTS[kind], *paths],
        project,
    )
    answer = json.loads(result.stdout)
    assert set(answer["rgb"]) == set(expected)
    assert_same_predictions(answer["rgb"], expected)
    assert len(answer["grey"]) == 3  # the grey files fed as (1, 8, 8, 1): the same classes
    assert_same_predictions(answer["grey"], expected)
    assert "tlpipe" not in answer["imported"]  # so BackboneNormalization was never registered
    if kind not in ("saved_model", "tflite"):
        assert answer["imported"] == []  # not even TensorFlow


@pytest.mark.slow
def test_the_stage_is_up_to_date_and_writes_labels_and_a_model_card(project):
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == UP_TO_DATE
    assert (project / "models/export/labels.txt").read_text() == "".join(
        f"{digit}\n" for digit in range(10)
    )
    card = (project / "models/MODEL_CARD.md").read_text()
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    per_class = json.loads((project / "metrics/report/per_class.json").read_text())
    assert f"| fine-tuned | {metrics['finetuned']['accuracy']:.4f} |" in card
    for name, scores in per_class.items():
        assert f"| `{name}` | {scores['precision']:.4f} | {scores['recall']:.4f} |" in card
    assert "dataset: digits" in card and "limit: 200" in card and "epochs: 1" in card
    assert "resize to 32x32" in card
    assert "random weights" in card  # backbone.weights: none is named as a limit
    for path in FORMATS.values():
        assert f"`{path}`" in card


@pytest.mark.slow
def test_each_file_is_checked_on_the_test_split_in_its_own_runtime(project):
    scores = json.loads((project / "metrics/export.json").read_text())
    finetuned = json.loads((project / "metrics/evaluate.json").read_text())["finetuned"]
    files = scores["files"]
    exported = {path.name for path in (project / "models/export").iterdir()} - {"labels.txt"}
    assert {export_formats.FORMATS[name].file for name in files} == DEFAULT_FILES == exported
    assert scores["test_images"] == len(np.load(project / "data/prepared/test_y.npy"))
    card = (project / "models/MODEL_CARD.md").read_text()
    for name, row in files.items():
        file = export_formats.FORMATS[name].file
        assert row["bytes"] == size_in_bytes(project / "models/export" / file), name
        assert row["latency_ms"] > 0
        assert f"| `models/export/{file}` |" in card and f"| {row['accuracy']:.4f} |" in card
        if name in ("saved_model", "litert", "onnx"):  # float32: the Keras model's answers
            assert row["agreement"] == 1.0, name
            assert row["accuracy"] == round(finetuned["accuracy"], 4), name
        else:
            print(name, row)  # the quick model's figures (pytest -s)
            assert row["agreement"] >= 0.9, name
    assert files["litert_float16"]["size_ratio"] <= 0.51  # VGG16: weights are nearly all
    assert files["litert_int8"]["size_ratio"] <= 0.3
    assert "size_ratio" not in files["litert"]
