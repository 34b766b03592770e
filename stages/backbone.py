"""The pretrained convolutional base: building it, its preprocessing, and where it is cut.

`preprocess` is the single place images are normalised for the backbone, used by `prepare` (and
so by training, fine-tuning and evaluation alike). For VGG16 that is
`keras.applications.vgg16.preprocess_input` ("caffe": RGB->BGR, ImageNet mean subtracted, input in
0-255), never a division by 255.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from stages.params import BACKBONE_NAMES, BackboneParams
from stages.runtime import OFFLINE_DEMO, UserError


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., keras.Model]
    preprocess_input: Callable[[np.ndarray], np.ndarray]
    imagenet_file: Callable[[int], str]  # the file keras.applications caches under $KERAS_HOME/models/


def _mobilenet_v2_file(image_size: int) -> str:
    rows = image_size if image_size in (96, 128, 160, 192, 224) else 224  # Keras's own rule
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        keras.applications.VGG16, keras.applications.vgg16.preprocess_input,
        lambda size: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": BackboneSpec(
        keras.applications.ResNet50, keras.applications.resnet.preprocess_input,
        lambda size: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "efficientnetb0": BackboneSpec(
        # EfficientNet normalises inside the model: its preprocess_input passes 0-255 values through.
        keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input,
        lambda size: "efficientnetb0_notop.h5",
    ),
    "densenet121": BackboneSpec(
        keras.applications.DenseNet121, keras.applications.densenet.preprocess_input,
        lambda size: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenetv2": BackboneSpec(
        keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input,
        _mobilenet_v2_file,
    ),
}
assert tuple(BACKBONES) == BACKBONE_NAMES, "params.BACKBONE_NAMES must list the same backbones"


def preprocess(images: np.ndarray, name: str) -> np.ndarray:
    """Map RGB pixel values in 0-255 (any numeric dtype, shape N,H,W,3) to the backbone's input."""
    return BACKBONES[name].preprocess_input(np.asarray(images, dtype=np.float32).copy())


def to_backbone_input(images: np.ndarray, image_size: int, name: str) -> np.ndarray:
    """uint8 images (N, H, W, 1|3) -> float32 (N, size, size, 3) ready for backbone `name`.

    Resize (bilinear, antialiased), repeat grey to three channels, then `preprocess`. Training data
    (`prepare`) and new images (`tlpipe predict`) both go through this one function.
    """
    import tensorflow as tf

    batch = tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size), method="bilinear", antialias=True)
    batch = batch.numpy()
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return preprocess(np.clip(batch, 0.0, 255.0), name)


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights ($KERAS_HOME/models, default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def build_conv_base(params: BackboneParams, image_size: int) -> keras.Model:
    """The backbone without its classifier (`include_top=False`) for square RGB inputs."""
    spec = BACKBONES[params.name]
    shape = (image_size, image_size, 3)
    if params.weights == "none":
        return spec.build(weights=None, include_top=False, input_shape=shape)
    if params.weights == "imagenet":
        try:
            return spec.build(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as error:  # keras.utils.get_file raises a bare Exception on a failed fetch
            if "URL fetch failure" not in str(error):
                raise
            raise UserError(
                f"could not download the {params.name} ImageNet weights (no network?). Put "
                f"{spec.imagenet_file(image_size)} in {keras_models_dir()}/, or set backbone.weights to a local "
                f".h5 file, or run the offline demo: {OFFLINE_DEMO}"
            ) from None
    try:
        return spec.build(weights=params.weights, include_top=False, input_shape=shape)
    except (ValueError, OSError) as error:
        raise UserError(
            f"backbone.weights: {params.weights} does not hold {params.name} weights without the top "
            f"({str(error).splitlines()[0]})"
        ) from None


def boundary_layer(base: keras.Model, unfreeze_from: str) -> str:
    """The last frozen layer: the one just before `unfreeze_from`, where activations are cached."""
    names = [layer.name for layer in base.layers]
    if unfreeze_from not in names:
        raise UserError(
            f"finetune.unfreeze_from: got {unfreeze_from!r}, which is not a layer of {base.name}; "
            f"expected auto or one of its layers, e.g. {', '.join(names[-6:-2])}"
        )
    index = names.index(unfreeze_from)
    if index < 2:
        raise UserError(
            f"finetune.unfreeze_from: got {unfreeze_from!r}; fine-tuning must leave at least the first "
            f"layer after the input frozen (try auto)"
        )
    return names[index - 1]


def split_at(base: keras.Model, boundary: str) -> tuple[keras.Model, keras.Model]:
    """Cut `base` after layer `boundary` into (frozen bottom, trainable top); they share weights."""
    cut = base.get_layer(boundary).output
    bottom = keras.Model(base.input, cut, name="frozen_bottom")
    try:
        top = keras.Model(cut, base.output, name="trainable_top")
    except ValueError:  # a residual/dense connection jumps over the cut
        raise UserError(
            f"finetune.unfreeze_from: the layer after {boundary!r} does not start a block of {base.name} "
            "(a skip connection crosses there); choose the first layer of a block, or auto"
        ) from None
    return bottom, top
