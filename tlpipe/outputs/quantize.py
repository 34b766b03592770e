"""int8 exports: the calibration sample and the ONNX int8 file (the LiteRT one: litert.py).

Static int8 quantization stores each tensor as int8 with a scale measured beforehand: the
calibration runs the float model on a sample of training images and records each activation's
range. The sample is drawn with the pipeline's seed, so the same params give the same ranges and
the same bytes.

The resize in front stays float32 in both files. Its ranges depend on the input's size, which
the calibration (at the model's own size) cannot see: quantized, a LiteRT file failed on 8x8
images (an int8 DIV by its zero point) and would move pixels by whole levels at other sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.core.runtime import UserError, first_line

if TYPE_CHECKING:
    import onnx


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of the training `images` (n, size, size, 3) uint8, drawn without replacement with
    `seed`, in their order in the split."""
    if count > len(images):
        raise UserError(
            f"export.calibration_images: {count} is more than the {len(images)} training images; "
            f"allowed: 1 to {len(images)}"
        )
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))
    return np.asarray(images[chosen], dtype=np.uint8)


def nodes_before_first_conv(model: onnx.ModelProto) -> list[str]:
    """The nodes the first convolution's input is computed by: the resize in front and the
    backbone's normalisation. Left float32, as in the LiteRT int8 file."""
    producer = {output: node for node in model.graph.node for output in node.output}
    first_conv = next(node for node in model.graph.node if node.op_type == "Conv")
    before, pending = {}, [first_conv.input[0]]
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in before:
            before[node.name] = node
            pending.extend(node.input)
    return sorted(before)


def quantize_onnx(float_model: Path, path: Path, samples: np.ndarray, input_name: str) -> None:
    """`float_model` as int8 ONNX in QDQ form (QuantizeLinear/DequantizeLinear pairs around each
    int8 op, which every ONNX runtime reads): per-channel int8 weights, int8 activations whose
    ranges are the min and max over `samples` (n, size, size, 3) uint8, one image at a time."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(samples)

        def get_next(self) -> dict | None:
            image = next(self.images, None)
            return None if image is None else {input_name: image[None]}

    excluded = nodes_before_first_conv(onnx.load(str(float_model)))
    # The quantizer logs (as warnings) that onnxruntime's pre-processing may help; it fuses ops
    # this graph does not have (batch normalisation), and the note is nothing a user can act on.
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            str(float_model),
            str(path),
            Samples(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    except Exception as error:  # onnxruntime raises plain exceptions of many kinds here
        raise UserError(f"ONNX int8 quantization failed: {first_line(error)}") from None
    finally:
        logging.disable(logging.NOTSET)
