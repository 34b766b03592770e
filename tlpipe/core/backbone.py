"""The pretrained convolutional base: which ones exist, building one, and where it is cut.

`BACKBONES` is the one table of backbone facts; params.py validates `backbone.name` against it and
resolves `finetune.unfreeze_from: auto` from it. Keras is imported inside the functions, so reading
the table (as params.py does for every stage and command) does not start TensorFlow.

Every conv base starts with `BackboneNormalization` (tlpipe/core/normalization.py): its input is RGB
pixels in 0-255, and the backbone's own `preprocess_input` runs inside the graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlpipe.core.runtime import OFFLINE_DEMO, UserError, first_line

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BackboneSpec:
    application: str  # the builder's name in keras.applications
    module: str  # the keras.applications module holding its preprocess_input
    last_block: str  # first layer of the last block: what `finetune.unfreeze_from: auto` means
    imagenet_file: Callable[
        [int], str
    ]  # the file Keras caches under $KERAS_HOME/models/, by input size


def _mobilenet_v2_file(image_size: int) -> str:
    rows = image_size if image_size in (96, 128, 160, 192, 224) else 224  # Keras's own rule
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        application="VGG16",
        module="vgg16",
        last_block="block5_conv1",
        imagenet_file=lambda size: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": BackboneSpec(
        application="ResNet50",
        module="resnet",
        last_block="conv5_block1_1_conv",
        imagenet_file=lambda size: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    # EfficientNet normalises inside the model: its preprocess_input passes 0-255 values through.
    "efficientnetb0": BackboneSpec(
        application="EfficientNetB0",
        module="efficientnet",
        last_block="block7a_expand_conv",
        imagenet_file=lambda size: "efficientnetb0_notop.h5",
    ),
    "densenet121": BackboneSpec(
        application="DenseNet121",
        module="densenet",
        last_block="conv5_block1_0_bn",
        imagenet_file=lambda size: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenetv2": BackboneSpec(
        application="MobileNetV2",
        module="mobilenet_v2",
        last_block="block_16_expand",
        imagenet_file=_mobilenet_v2_file,
    ),
}


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights ($KERAS_HOME/models, default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def build_conv_base(name: str, weights: str, image_size: int) -> keras.Model:
    """Backbone `name` without its classifier (`include_top=False`), on square RGB pixels.

    Its input is float32 pixel values in 0-255, normalised inside the model by the backbone's
    own preprocessing. `weights`: "imagenet" (downloaded once by Keras), "none" (random), or a
    local .h5 file.
    """
    import keras

    from tlpipe.core.normalization import BackboneNormalization

    spec = BACKBONES[name]
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    normalised = BackboneNormalization(spec.module, name="backbone_normalization")(pixels)

    def build(weights: str | None) -> keras.Model:
        application = getattr(keras.applications, spec.application)
        base = application(weights=weights, include_top=False, input_tensor=normalised)
        # Built on a tensor, the application takes its inputs as a list; one tensor is simpler.
        return keras.Model(pixels, base.output, name=base.name)

    if weights == "none":
        return build(None)
    if weights == "imagenet":
        try:
            return build("imagenet")
        except Exception as error:  # keras.utils.get_file raises a bare Exception on a failed fetch
            if "URL fetch failure" not in str(error):
                raise
            raise UserError(
                f"could not download the {name} ImageNet weights (no network?). Put "
                f"{spec.imagenet_file(image_size)} in {keras_models_dir()}/, or set "
                f"backbone.weights to a local .h5 file, or run the offline demo: {OFFLINE_DEMO}"
            ) from None
    try:
        return build(weights)
    except (ValueError, OSError) as error:
        raise UserError(
            f"backbone.weights: {weights} does not hold {name} weights without the "
            f"top ({first_line(error)})"
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
    first_weighted = next(i for i, layer in enumerate(base.layers) if layer.weights)
    if index <= first_weighted:
        raise UserError(
            f"finetune.unfreeze_from: got {unfreeze_from!r}; fine-tuning must leave at least the "
            "first layer with weights frozen (try auto)"
        )
    return names[index - 1]


def split_at(base: keras.Model, boundary: str) -> tuple[keras.Model, keras.Model]:
    """Cut `base` after layer `boundary` into (frozen bottom, trainable top); they share weights."""
    import keras

    cut = base.get_layer(boundary).output
    bottom = keras.Model(base.input, cut, name="frozen_bottom")
    try:
        top = keras.Model(cut, base.output, name="trainable_top")
    except ValueError:  # a residual/dense connection jumps over the cut
        raise UserError(
            f"finetune.unfreeze_from: the layer after {boundary!r} does not start a block of "
            f"{base.name} (a skip connection crosses there); choose the first layer of a block, "
            "or auto"
        ) from None
    return bottom, top
