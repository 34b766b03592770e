"""The backbone's input normalisation as a layer, so that it lives inside every saved model.

Prepared images are stored as uint8 pixels; the first layer after the input of every model the
pipeline builds is `BackboneNormalization`, which applies the backbone's own `preprocess_input`
(VGG16: RGB->BGR and the ImageNet mean subtracted from 0-255 values, never a division by 255).
Training, evaluation and `tlpipe predict` therefore cannot normalise differently. The layer is
registered with Keras, so models holding it load in safe mode once this module is imported
(`tlpipe.compute.archives.load_model` does that).
"""

from __future__ import annotations

import types
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tlpipe")
class BackboneNormalization(keras.layers.Layer):
    """RGB pixel values in 0-255 (any numeric dtype) -> what a keras.applications backbone takes.

    `module` names the keras.applications module whose `preprocess_input` applies (e.g. vgg16).
    """

    def __init__(self, module: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        found = getattr(keras.applications, module, None)
        if not isinstance(found, types.ModuleType) or not hasattr(found, "preprocess_input"):
            raise ValueError(f"keras.applications.{module} has no preprocess_input")
        self.module = module
        self._preprocess_input = found.preprocess_input

    def call(self, pixels: Any) -> Any:
        return self._preprocess_input(keras.ops.cast(pixels, "float32"))

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "module": self.module}
