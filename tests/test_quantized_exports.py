"""Quantized exports (`export.formats`): float16 and int8 LiteRT files, int8 ONNX, each checked on
images by its own runtime in a fresh process (metrics/export.json), the same bytes every time.

A small convolutional model stands in for VGG16 here: the conversions and the checks are the
stage's own code (tlpipe/outputs/export.py, quantize.py, export_scores.py); the demo's figures
are in benchmarks/RESULTS.md (#quantized-exports) and tests/test_export.py runs the stage.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tlpipe.core import export_formats
from tlpipe.core.export_formats import FORMAT_NAMES, FORMATS, check_runtimes, formats_to_build
from tlpipe.core.runtime import UserError
from tlpipe.outputs.export import export_model, use_pure_python_protobuf
from tlpipe.outputs.export_scores import score_exports, size_in_bytes
from tlpipe.outputs.quantize import calibration_sample, nodes_before_first_conv

SIZE, CLASSES = 32, 4


def test_each_format_is_built_after_what_it_is_made_from():
    assert formats_to_build(["onnx_int8"]) == ["saved_model", "litert", "onnx", "onnx_int8"]
    assert formats_to_build(["litert_int8", "saved_model"]) == ["saved_model", "litert_int8"]
    for name in FORMAT_NAMES:
        order = formats_to_build([name])
        made_from = FORMATS[name].made_from
        assert order[-1] == name
        assert made_from is None or order.index(made_from) < order.index(name)


def test_a_missing_runtime_is_named_with_its_install_command(monkeypatch):
    real = export_formats.importlib.util.find_spec
    monkeypatch.setattr(
        export_formats.importlib.util,
        "find_spec",
        lambda name: None if name == "onnxruntime" else real(name),
    )
    check_runtimes(["saved_model", "litert_int8"])  # no ONNX: onnxruntime is not needed
    with pytest.raises(UserError) as raised:
        check_runtimes(["saved_model", "onnx"])
    assert str(raised.value) == (
        "export.formats: onnx needs the onnxruntime package, which is not installed: "
        "pip install onnxruntime==1.31.1"
    )


def test_the_calibration_sample_is_seeded_in_split_order_and_bounded():
    images = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    first, again = calibration_sample(images, 10, seed=3), calibration_sample(images, 10, seed=3)
    assert first.shape == (10, 1, 1, 1)
    assert np.array_equal(first, again)
    assert np.all(np.diff(first.ravel().astype(int)) > 0)  # distinct rows, in the split's order
    assert not np.array_equal(first, calibration_sample(images, 10, seed=4))
    with pytest.raises(UserError) as raised:
        calibration_sample(images, 51, seed=3)
    assert str(raised.value) == (
        "export.calibration_images: 51 is more than the 50 training images; allowed: 1 to 50"
    )


def test_what_computes_the_first_convolutions_input_stays_float():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108).tolist())
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["resized"], name="resize"),
        helper.make_node("Sub", ["resized", "a"], ["normalised"], name="normalise"),
        helper.make_node("Conv", ["normalised", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w"], ["c2"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 4, 4, 4])],
        [weight],
    )
    assert nodes_before_first_conv(helper.make_model(graph)) == ["normalise", "resize"]


def small_model():
    """Normalise, three convolutions, pooling, softmax over CLASSES: a VGG16 in miniature, with
    enough weights (56k) that they, not the graph, make most of each file."""
    import keras

    keras.utils.set_random_seed(0)
    images = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.Dense(CLASSES, activation="softmax")(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Every format of the small model, twice (two folders), and the first folder's scores."""
    use_pure_python_protobuf()
    root = tmp_path_factory.mktemp("quantized")
    model = small_model()
    images = np.random.default_rng(1).integers(0, 256, (96, SIZE, SIZE, 3), dtype=np.uint8)
    folders = []
    for name in ("first", "second"):
        folder = root / name
        folder.mkdir()
        export_model(
            model,
            folder,
            image_size=SIZE,
            class_names=[f"c{i}" for i in range(CLASSES)],
            formats=list(FORMAT_NAMES),
            calibration=calibration_sample(images, 32, seed=0),
        )
        folders.append(folder)
    test = root / "test_x.npy"
    np.save(test, images[32:])
    reference = model.predict(images[32:].astype(np.float32), verbose=0).argmax(axis=1)
    labels = reference.copy()
    labels[:8] = (labels[:8] + 1) % CLASSES  # 8 of 64 "wrong" labels: accuracy is measured
    scores = score_exports(folders[0], list(FORMAT_NAMES), test, labels, reference)
    return folders[0], folders[1], scores


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_every_converted_format_is_the_same_bytes_when_exported_again(exported):
    """In one process: the SavedModel records the process's own object names, so it is compared
    across processes instead (tests/test_reproducibility.py, test_storage.py)."""
    first, second, _ = exported
    for name in FORMAT_NAMES[1:]:
        assert digest(first / FORMATS[name].file) == digest(second / FORMATS[name].file), name


def test_int8_files_hold_int8_tensors_and_are_smaller_than_their_float_file(exported):
    first, _, scores = exported
    files = scores["files"]
    assert list(files) == list(FORMAT_NAMES)
    for name in ("litert_int8", "onnx_int8"):
        row = files[name]
        assert row["bytes"] == size_in_bytes(first / FORMATS[name].file)
        assert row["size_ratio"] * files[FORMATS[name].compared_with]["bytes"] == pytest.approx(
            row["bytes"], rel=1e-3
        )
    # Measured 0.34, 0.41 and 0.54 here (the graph and per-channel scales weigh more in a small
    # model than in VGG16: benchmarks/RESULTS.md#quantized-exports).
    assert files["litert_int8"]["size_ratio"] < 0.45
    assert files["onnx_int8"]["size_ratio"] < 0.5
    assert files["litert_float16"]["size_ratio"] < 0.6
    onnx_model = onnx.load(str(first / "model_int8.onnx"))
    ops = {node.op_type for node in onnx_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [t for t in onnx_model.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(weights) >= 4  # the three convolutions' and the dense layer's weights are int8
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(first / "model_int8.tflite"))
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    ops = {  # op -> the dtype of its first input
        op["op_name"]: dtypes[op["inputs"][0]] for op in interpreter._get_ops_details()
    }
    assert ops["CONV_2D"] == ops["FULLY_CONNECTED"] == np.int8
    assert ops["BATCH_MATMUL"] == np.float32  # the resize, left float32


def test_each_file_in_its_runtime_answers_as_the_model_does(exported):
    _, _, scores = exported
    for name, row in scores["files"].items():
        assert all(isinstance(value, int | float) for value in row.values())  # dvc metrics diff
        assert row["latency_ms"] > 0
        if not FORMATS[name].compared_with:  # float32: the same classes
            assert row["agreement"] == 1.0, name
            assert row["accuracy"] == 56 / 64, name
        else:  # quantized: nearly all of them, on a random model with close classes
            assert row["agreement"] >= 0.9, name
            assert abs(row["accuracy"] - 56 / 64) <= 0.1, name
