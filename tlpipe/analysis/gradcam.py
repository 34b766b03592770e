"""Grad-CAM (Selvaraju et al., 2017): where in an image the classifier found the evidence for a
class.

The map is read at the backbone's last convolutional feature map: the last activations that still
have a spatial layout, and the most specific ones. Each channel is weighted by the spatial mean of
the class score's gradient with respect to it; the weighted sum, through a ReLU, keeps the places
that raise the score. Grad-CAM weights whole channels, not places: a channel whose activations are
spread evenly over the image gives an even map, however the classifier uses it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tlpipe.compute.temperature import without_temperature

_POOLING = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
)
_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def gradcam_layer(model: keras.Model) -> str:
    """The name of the layer Grad-CAM reads: the last one before the nested head whose output is a
    rank-4 feature map, is not a pooling layer and comes after a convolution.

    Pooling only coarsens the map the layer before it gives (VGG16: block5_pool halves
    block5_conv3), and a layer before the first convolution (the input, its normalisation) holds
    pixels, not features. The pipeline's backbones give vgg16 block5_conv3, resnet50
    conv5_block3_out, efficientnetb0 top_activation, densenet121 relu and mobilenetv2 out_relu.
    """
    chosen, convolved = None, False
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # the head: class scores from here on, no places
            break
        convolved = convolved or isinstance(layer, _CONVOLUTIONS)
        rank = len(getattr(layer.output, "shape", ()))
        if convolved and rank == 4 and not isinstance(layer, _POOLING):
            chosen = layer.name
    if chosen is None:
        raise ValueError(
            f"model {model.name!r} has no convolutional feature map for Grad-CAM to read: no "
            "layer after a convolution, before the head, outputs (batch, height, width, channels)"
        )
    return chosen


def gradcam_maps(
    model: keras.Model,
    images: np.ndarray,
    classes: np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM of `classes[i]` on each uint8 image (N, H, W, 3): float32 (N, H, W) maps, each
    resized bilinearly to the image and scaled to [0, 1] by its own maximum (all-zero maps stay
    zero). `layer` defaults to `gradcam_layer(model)`.

    The class score is the pre-softmax logit when the model ends, as the pipeline's do, in a nested
    head whose last layer is a softmax Dense: that layer is applied here without its softmax.
    In float32 a confident softmax saturates at exactly 1.0, and the probability's gradient with
    respect to its own logit is then exactly 0: the map would show only the evidence against the
    other classes. Other models are scored by their output (the softmax probability). A calibrated
    model's final temperature is left out: it divides the logit by a constant, which scales every
    map alike and leaves it the same once scaled to [0, 1].

    Images go through in batches of `batch_size`, in inference mode (BatchNorm statistics fixed,
    Dropout off), so memory does not grow with N and an image's map does not depend on the others.
    """
    images, classes = np.asarray(images), np.asarray(classes)
    if images.ndim != 4 or classes.shape != (len(images),):
        raise ValueError(
            f"expected images (N, H, W, C) and classes (N,); got {images.shape} and {classes.shape}"
        )
    n_classes = model.output.shape[-1]
    if classes.size and not (classes.min() >= 0 and classes.max() < n_classes):
        raise ValueError(
            f"classes must be in 0..{n_classes - 1}; got {classes.min()}..{classes.max()}"
        )
    model = without_temperature(model)
    lower, upper, score = _split_at(model, layer or gradcam_layer(model))
    maps = np.zeros(images.shape[:3], np.float32)
    for start in range(0, len(images), batch_size):
        rows = slice(start, start + batch_size)
        maps[rows] = _batch_maps(lower, upper, score, images[rows], classes[rows])
    return maps


def _split_at(
    model: keras.Model, layer: str
) -> tuple[keras.Model, Callable[..., tf.Tensor], Callable[[tf.Tensor], tf.Tensor]]:
    """(pixels -> the layer's activations, activations -> y, y -> class scores): y is the head's
    input and the function the head without its softmax if the model ends in a softmax head (see
    gradcam_maps), else y is the model's output and the function the identity.

    Split in two so that the gradient tape starts at the activations: a tape that watched the
    pixels would backpropagate through the whole backbone, filter gradients included, for nothing.
    """
    activations = model.get_layer(layer).output
    lower = keras.Model(model.input, activations)
    head = model.layers[-1]
    last = head.layers[-1] if isinstance(head, keras.Model) and head.layers else None
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        # The layer before the head in topological order is the one the head reads.
        features = model.layers[-2].output
        if tuple(features.shape[1:]) == tuple(head.input.shape[1:]):
            hidden = keras.Model(head.inputs, last.input)

            def logits(x: tf.Tensor) -> tf.Tensor:
                z = tf.matmul(tf.cast(hidden(x, training=False), last.kernel.dtype), last.kernel)
                return z if last.bias is None else z + last.bias

            return lower, _model_from(activations, features), logits
    return lower, _model_from(activations, model.output), tf.identity


def _model_from(inputs: keras.KerasTensor, outputs: keras.KerasTensor) -> Callable[..., tf.Tensor]:
    """The part of a functional model from `inputs` to `outputs` (the identity if they are one)."""
    if outputs is inputs:  # a head reading the Grad-CAM layer itself; Keras refuses a no-op model
        return lambda x, training=False: x
    return keras.Model(inputs, outputs)


def _batch_maps(
    lower: keras.Model,
    upper: Callable[..., tf.Tensor],
    score: Callable[[tf.Tensor], tf.Tensor],
    images: np.ndarray,
    classes: np.ndarray,
) -> np.ndarray:
    activations = lower(tf.convert_to_tensor(images, tf.float32), training=False)
    with tf.GradientTape() as tape:
        tape.watch(activations)
        y = upper(activations, training=False)
        scores = tf.gather(tf.cast(score(y), tf.float32), classes, axis=1, batch_dims=1)
    gradients = tf.cast(tape.gradient(scores, activations), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * tf.cast(activations, tf.float32), -1, keepdims=True))
    cams = tf.image.resize(cams, images.shape[1:3], method="bilinear")[..., 0]
    peaks = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(cams, peaks).numpy()
