"""The deployable model: the fine-tuned model behind an input that takes images of any size.

`serving_model` puts the resize of `images.to_model_input` (bilinear, antialiased, rounded to whole
pixel values, grey repeated to three channels) in front of models/model.keras, whose first layer
is already the backbone's normalisation. `export_model` writes it in the `export.formats` asked
for (tlpipe/core/export_formats.py: a TensorFlow SavedModel, LiteRT flatbuffers in float32,
float16 and int8 (litert.py), ONNX graphs in float32 and int8 (quantize.py)), each taking uint8
pixels (batch, height, width, 1 or 3) and returning class probabilities, plus labels.txt: using
them needs neither tlpipe nor Keras.

The resize is two matrix products rather than `tf.image.resize(antialias=True)`: its
ScaleAndTranslate op is neither a LiteRT built-in nor an ONNX op. The matrices hold the weights
ScaleAndTranslate computes for its triangle kernel, computed in the graph from the input's size;
the products sum in another order, so a pixel that lands within about 1e-4 of half a level can
round the other way (tests/test_export.py).

ScaleAndTranslate takes three reciprocals (of the scale, the kernel width and each row's weight
sum). Written `1.0 / x`, two clients computed them wrongly: TensorFlow's graph optimiser (which a
loaded SavedModel runs, eager Keras does not) rewrites a division of the constant 1 into its
Reciprocal op, 1 ulp low here (1/1 = 0.99999994), so the weights of an exact resize came out just
short and every pixel on half a level (2-4 % of them when enlarging 8 or 16 px by a power of two)
rounded down. And the default XNNPACK delegate of TensorFlow 2.21's `tf.lite.Interpreter`, on a
model whose input shape is dynamic, returns the mean for `1.0 / tf.reduce_sum(...)` when the sum's
input is computed in the graph: the weights became nonsense, and the probabilities with them, with
no error (ai_edge_litert 2.3.0 and the delegate-free interpreter were right). Each reciprocal is
now `(x / x) / x`: correctly rounded everywhere and matched by neither rewrite
(tests/test_export_clients.py runs the files in every client).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlpipe.core.export_formats import FORMATS, formats_to_build
from tlpipe.core.paths import LABELS_NAME
from tlpipe.core.runtime import UserError, first_line
from tlpipe.outputs.litert import convert_to_litert, convert_to_litert_int8
from tlpipe.outputs.quantize import quantize_onnx
from tlpipe.startup import CONVERTER_NOTICE, start_up_notices_dropped

if TYPE_CHECKING:
    import keras
    import numpy as np
    import onnx
    import tensorflow as tf

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
INPUT_DIMS = ("batch", "height", "width", "channels")  # the ONNX input's named dimensions
ONNX_OPSET = 17  # onnxruntime 1.x and most other ONNX runtimes support it
RESIZE_LAYER = "resize_to_model_input"  # the layer in front, named in its ops' tensor names


def use_pure_python_protobuf() -> None:
    """Make this process use protobuf's pure-Python backend, if protobuf is not loaded yet.

    tf2onnx rewrites every node's attributes in each of its (about 36) optimisation passes.
    protobuf's default upb backend keeps every replaced copy of the weights in its arena until the
    whole model is freed: 3.5 GB peak for VGG16, against 1.1 GB with the pure-Python backend,
    which also spent less CPU time on the whole export here.
    """
    if "google.protobuf" not in sys.modules:
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"


def correctly_rounded_reciprocal(x: tf.Tensor) -> tf.Tensor:
    """1 / x, rounded as a float32 division is, in every runtime that runs the exports.

    Written `1.0 / x`, it is not: TensorFlow's graph optimiser turns a division of the constant 1
    into its Reciprocal op, which is 1 ulp low on this CPU (1/1 = 0.99999994), and TFLite's
    XNNPACK delegate, on a model whose input shape is dynamic, returns the mean instead of
    `1.0 / tf.reduce_sum(...)`. The numerator x / x (exactly 1, not a constant) matches neither.
    """
    return (x / x) / x


def resize_weights(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """(out_size, in_size) float32 matrix of the antialiased bilinear resize along one axis.

    TensorFlow's ScaleAndTranslate arithmetic (triangle kernel, antialias, no translation), step
    by step in float32, each reciprocal a division as it computes them: when shrinking, the
    kernel widens by 1/scale so every source pixel counts.
    """
    import tensorflow as tf

    sources = tf.cast(in_size, tf.float32)
    scale = tf.cast(out_size, tf.float32) / sources
    inverse_scale = correctly_rounded_reciprocal(scale)
    kernel_scale = tf.maximum(inverse_scale, 1.0)
    sample_at = (tf.range(out_size, dtype=tf.float32) + 0.5) * inverse_scale
    source_at = tf.range(sources, dtype=tf.float32) + 0.5
    offset = source_at[tf.newaxis, :] - sample_at[:, tf.newaxis]
    distance = tf.abs(offset * correctly_rounded_reciprocal(kernel_scale))
    weights = tf.maximum(1.0 - distance, 0.0)
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    return weights * correctly_rounded_reciprocal(total)


def resize_pixels(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (batch, height, width, 1|3) -> float32 (batch, size, size, 3) whole pixel values.

    Height first, then width, as ScaleAndTranslate does, each as one plain 2-D matrix product:
    TensorFlow 2.21's oneDNN kernel returns wrong values for a 4-D by 2-D (broadcast) product.
    """
    import tensorflow as tf

    pixels = tf.cast(images, tf.float32)
    shape = tf.shape(pixels)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    by_row = tf.reshape(tf.transpose(pixels, [1, 0, 2, 3]), [height, -1])
    rows = tf.reshape(
        tf.matmul(resize_weights(height, size), by_row), [size, batch, width, channels]
    )
    by_column = tf.reshape(tf.transpose(rows, [2, 1, 0, 3]), [width, -1])
    columns = tf.reshape(
        tf.matmul(resize_weights(width, size), by_column), [size, batch, size, channels]
    )
    resized = tf.transpose(columns, [1, 2, 0, 3])
    whole = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
    return tf.broadcast_to(whole, tf.stack([batch, size, size, 3]))  # grey -> 3 equal channels


def serving_model(model: keras.Model, image_size: int) -> keras.Model:
    """`model` (pixels at image_size x image_size, normalisation inside) behind a resize from any
    size: uint8 (batch, height, width, 1|3) -> {"probabilities": (batch, classes)}."""
    import keras

    class ResizeToModelInput(keras.layers.Layer):
        def call(self, images: Any) -> Any:
            return resize_pixels(images, image_size)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], image_size, image_size, 3)

    images = keras.Input((None, None, None), dtype="uint8", name=INPUT_NAME)
    pixels = ResizeToModelInput(name=RESIZE_LAYER)(images)
    return keras.Model(images, {OUTPUT_NAME: model(pixels)}, name="serving")


def save_saved_model(serving: keras.Model, path: Path) -> None:
    """`serving` as a SavedModel whose `serving_default` signature maps `images` to
    `probabilities`. Each variable is stored once (Keras's `model.export` stores two copies), and
    fingerprint.pb loses its random uuid, so that equal models give equal bytes."""
    import tensorflow as tf
    from tensorflow.core.protobuf import fingerprint_pb2

    module = tf.Module()
    module.weights = [weight.value for weight in serving.weights]  # the tf.Variables it reads
    module.serve = tf.function(
        lambda images: serving(images, training=False),
        input_signature=[tf.TensorSpec((None, None, None, None), tf.uint8, name=INPUT_NAME)],
        autograph=False,
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    fingerprint_file = path / "fingerprint.pb"
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(fingerprint_file.read_bytes())
    fingerprint.ClearField("uuid")
    fingerprint_file.write_bytes(fingerprint.SerializeToString())


def convert_to_onnx(litert: Path, path: Path) -> None:
    """The LiteRT model as ONNX (tf2onnx), put in canonical form, checked by onnx's checker."""
    import onnx
    import tf2onnx

    with warnings.catch_warnings():
        # tf2onnx reads the flatbuffer's shapes with tf.lite.Interpreter, which warns that it is
        # deprecated: nothing a user of this stage can act on.
        warnings.simplefilter("ignore", UserWarning)
        with start_up_notices_dropped(CONVERTER_NOTICE):
            model, _ = tf2onnx.convert.from_tflite(str(litert), opset=ONNX_OPSET)
    canonical_onnx(model)
    try:
        onnx.checker.check_model(model, full_check=True)  # e.g. ops tf2onnx could not convert
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise UserError(f"ONNX conversion failed: {first_line(error)}") from None
    onnx.save(model, str(path))


def canonical_onnx(model: onnx.ModelProto) -> None:
    """Rename and reorder tf2onnx's graph in place so that one model always gives one file.

    tf2onnx's optimisers visit nodes in an order that changes from run to run (sets of objects):
    the counters in the names of folded constants advance differently, and of two merged
    duplicates either name may survive. So every name is derived from what it computes instead:
    a constant from its bytes, a node from its op, attributes and (already canonical) inputs; the
    nodes are listed in topological order, ties by that name. Input and output become `images`
    and `probabilities`, with named dimensions.
    """
    import onnx

    graph = model.graph
    renames = {graph.input[0].name: INPUT_NAME}
    for tensor in graph.initializer:
        content = onnx.TensorProto()
        content.CopyFrom(tensor)
        content.name = ""
        digest = hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()
        renames[tensor.name] = f"const_{digest[:16]}"
    producers = {output for node in graph.node for output in node.output}
    pending = {id(node): node for node in graph.node}
    ready: dict[str, Any] = {}  # canonical name -> a node whose inputs all have theirs
    order: list = []
    while pending or ready:
        for node in list(pending.values()):
            if all(name in renames or name not in producers for name in node.input):
                digest = hashlib.sha256(_node_key(node, renames)).hexdigest()
                name = f"{node.op_type}_{digest[:16]}"
                while name in ready or any(done.name == name for done in order):
                    name += "_"  # the same computation twice: both kept
                ready[name] = pending.pop(id(node))
        name = min(ready)
        node = ready.pop(name)
        node.name = name
        renames |= {output: f"{name}:{index}" for index, output in enumerate(node.output)}
        order.append(node)
    renames[graph.output[0].name] = OUTPUT_NAME
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = renames.get(value.name, value.name)
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, INPUT_DIMS, strict=True):
        dim.dim_param = name
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = INPUT_DIMS[0]

    _replace(graph.node, order)
    unique = {tensor.name: tensor for tensor in graph.initializer}  # equal bytes: one constant
    _replace(graph.initializer, [unique[name] for name in sorted(unique)])
    _replace(graph.value_info, sorted(graph.value_info, key=lambda value: value.name))


def _node_key(node: Any, renames: dict[str, str]) -> bytes:
    """What a node computes: its op, its inputs' canonical names, its attributes."""
    inputs = ",".join(renames.get(name, name) for name in node.input)
    head = f"{node.domain}:{node.op_type}:{inputs}:{len(node.output)}:".encode()
    return head + b"".join(a.SerializeToString(deterministic=True) for a in node.attribute)


def _replace(field: Any, items: list) -> None:
    """Refill a repeated protobuf field with `items` (copies: clearing it frees the originals)."""
    copies = [type(item).FromString(item.SerializeToString()) for item in items]
    del field[:]
    field.extend(copies)


def export_model(
    model: keras.Model,
    folder: Path,
    *,
    image_size: int,
    class_names: list[str],
    formats: list[str],
    calibration: np.ndarray | None = None,
) -> None:
    """`formats` (tlpipe/core/export_formats.py) of `model` (resize inside), and labels.txt, in
    `folder`. `calibration`: the int8 formats' sample, uint8 (n, image_size, image_size, 3).
    A format only needed to make another (the LiteRT file for ONNX) is built too, for
    `remove_unrequested` to delete once the files are checked."""

    def file(name: str) -> Path:
        return folder / FORMATS[name].file

    build = {
        "saved_model": lambda: save_saved_model(
            serving_model(model, image_size), file("saved_model")
        ),
        "litert": lambda: convert_to_litert(file("saved_model"), file("litert")),
        "litert_float16": lambda: convert_to_litert(
            file("saved_model"), file("litert_float16"), float16=True
        ),
        "litert_int8": lambda: convert_to_litert_int8(
            file("saved_model"),
            file("litert_int8"),
            calibration,
            INPUT_NAME,
            RESIZE_LAYER,
            float_litert=file("litert"),  # its tensor names, if that file was built already
        ),
        "onnx": lambda: convert_to_onnx(file("litert"), file("onnx")),
        "onnx_int8": lambda: quantize_onnx(
            file("onnx"), file("onnx_int8"), calibration, INPUT_NAME
        ),
    }
    for name in formats_to_build(formats):
        build[name]()
    (folder / LABELS_NAME).write_text("".join(f"{name}\n" for name in class_names))


def remove_unrequested(folder: Path, formats: list[str]) -> None:
    """Delete the files only built to make (and measure against) the requested `formats`."""
    for name in formats_to_build(formats):
        if name not in formats:
            path = folder / FORMATS[name].file
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
