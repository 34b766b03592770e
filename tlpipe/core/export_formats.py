"""The files the export stage can write (`export.formats`), what each is made from and runs in.

One row per format. The LiteRT files are converted from the SavedModel, the float ONNX file from
the float LiteRT file, the int8 ONNX file from the float ONNX file; a format the user did not ask
for but another is made from is built and then left out of models/export/. Every file's answers
are compared with the Keras model's, and a quantized file's size with its family's float file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass

from tlpipe.core.paths import LITERT_NAME, ONNX_NAME, SAVED_MODEL_NAME
from tlpipe.core.runtime import UserError


@dataclass(frozen=True)
class ExportFormat:
    name: str  # the value in export.formats
    file: str  # its name in models/export/
    runtime: str  # what loads it: a key of RUNTIMES
    made_from: str | None  # the format it is converted from
    compared_with: str | None  # a quantized format's float file, whose size it is compared with
    what: str  # the model card's description

    @property
    def calibrated(self) -> bool:
        """Whether making it needs the calibration sample (the int8 formats)."""
        return self.name.endswith("_int8")

    @property
    def modules(self) -> tuple[str, ...]:
        """The packages making it (beyond TensorFlow) and checking it need."""
        converting = ("tf2onnx", "onnx") if self.runtime == "onnxruntime" else ()
        return (*converting, RUNTIMES[self.runtime])


FORMATS = {
    row.name: row
    for row in (
        ExportFormat(
            "saved_model",
            SAVED_MODEL_NAME,
            "tensorflow",
            None,
            None,
            "TensorFlow SavedModel, float32, signature `serving_default`",
        ),
        ExportFormat(
            "litert",
            LITERT_NAME,
            "litert",
            "saved_model",
            None,
            "LiteRT (TFLite) flatbuffer, float32, built-in ops only, signature `serving_default`",
        ),
        ExportFormat(
            "litert_float16",
            "model_float16.tflite",
            "litert",
            "saved_model",
            "litert",
            "LiteRT, float16 weights (computed in float32)",
        ),
        ExportFormat(
            "litert_int8",
            "model_int8.tflite",
            "litert",
            "saved_model",
            "litert",
            "LiteRT, int8 weights and activations (the resize in front stays float32), "
            "calibrated on training images",
        ),
        ExportFormat("onnx", ONNX_NAME, "onnxruntime", "litert", None, "ONNX, opset 17, float32"),
        ExportFormat(
            "onnx_int8",
            "model_int8.onnx",
            "onnxruntime",
            "onnx",
            "onnx",
            "ONNX, int8 QDQ (onnxruntime's static quantization), calibrated on training images",
        ),
    )
}
FORMAT_NAMES = tuple(FORMATS)

# runtime -> the module it is imported as
RUNTIMES = {"tensorflow": "tensorflow", "litert": "ai_edge_litert", "onnxruntime": "onnxruntime"}
# module -> its distribution on PyPI, where the names differ
DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert"}


def formats_to_build(requested: list[str]) -> list[str]:
    """`requested` and every format they are made from, each after what it is made from."""
    needed: list[str] = []

    def add(name: str) -> None:
        made_from = FORMATS[name].made_from
        if made_from is not None:
            add(made_from)
        if name not in needed:
            needed.append(name)

    for name in requested:
        add(name)
    return needed


def install_command(module: str) -> str:
    """`pip install` of `module`'s distribution at the version this project pins."""
    distribution = DISTRIBUTIONS.get(module, module)
    try:
        pins = importlib.metadata.requires("tlpipe") or []
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        pins = []
    for pin in pins:
        requirement = pin.split(";")[0].strip()
        if re.split(r"[=<>~! \[]", requirement, maxsplit=1)[0] == distribution:
            return f"pip install {requirement}"
    return f"pip install {distribution}"


def check_runtimes(requested: list[str]) -> None:
    """Stop with one line, before any work, if a package the export needs is not installed: the
    converters (tf2onnx, onnx, onnxruntime's quantizer) and the runtime each file is checked in."""
    for name in formats_to_build(requested):
        for module in FORMATS[name].modules:
            if importlib.util.find_spec(module) is None:
                raise UserError(
                    f"export.formats: {name} needs the {module} package, which is not "
                    f"installed: {install_command(module)}"
                )
