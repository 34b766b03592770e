"""LiteRT files: the SavedModel converted by TensorFlow's TFLiteConverter, as float32, with float16
weights, or as int8 (weights and activations) calibrated on training images.

Built-in ops only: a file that needed TensorFlow ops (the Flex delegate) would not run in the
plain ai-edge-litert interpreter. The converter's notices are kept off the terminal and its
failures become one line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tlpipe.core.runtime import UserError, first_line
from tlpipe.startup import CONVERTER_NOTICE, start_up_notices_dropped

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf


def litert_converter(saved_model: Path) -> tf.lite.TFLiteConverter:
    """A converter of the SavedModel to LiteRT built-in ops only."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def converted(convert: Callable[[], bytes]) -> bytes:
    """The flatbuffer `convert` makes, with the converter's notices off the terminal and its
    failures as one line."""
    try:
        with warnings.catch_warnings(), start_up_notices_dropped(CONVERTER_NOTICE):
            # int8: the calibration runs tf.lite.Interpreter, which warns that it is deprecated.
            warnings.simplefilter("ignore", UserWarning)
            return convert()
    except Exception as error:  # the converter raises its own ConverterError, or others
        raise UserError(f"LiteRT conversion failed: {first_line(error)}") from None


def convert_to_litert(saved_model: Path, path: Path, *, float16: bool = False) -> None:
    """The SavedModel as a LiteRT flatbuffer, float32, or with its weights stored as float16 (half
    the bytes; computed in float32)."""
    import tensorflow as tf

    converter = litert_converter(saved_model)
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converted(converter.convert))


def convert_to_litert_int8(
    saved_model: Path,
    path: Path,
    samples: np.ndarray,
    input_name: str,
    float_layer: str,
    *,
    float_litert: Path | None = None,
) -> None:
    """The SavedModel as LiteRT with int8 weights and activations (uint8 pixels in, float32
    probabilities out, as the float file), calibrated on `samples` (n, size, size, 3) uint8 fed
    as `input_name`. The ops of the layer named `float_layer` (the resize in front) stay float32:
    TensorFlow's selective quantization, a deny list of those ops' output tensors
    (quantize.py says why). The tensor names come from the float conversion: `float_litert`'s
    file if it exists, else converted here."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    if float_litert is not None and float_litert.is_file():
        float_model = float_litert.read_bytes()
    else:
        float_model = converted(litert_converter(saved_model).convert)
    tensors = Interpreter(model_content=float_model).get_tensor_details()
    resize = [tensor["name"] for tensor in tensors if float_layer in tensor["name"]]
    if not resize:  # a converter that names tensors otherwise: do not quantize the resize silently
        raise UserError(
            f"LiteRT int8 conversion failed: no tensor of the {float_layer} layer found"
        )
    converter = litert_converter(saved_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,  # for the float32 resize
    ]
    converter.representative_dataset = lambda: ({input_name: image[None]} for image in samples)

    def quantize() -> bytes:
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=converter.representative_dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=resize),
        )
        return debugger.get_nondebug_quantized_model()

    path.write_bytes(converted(quantize))
