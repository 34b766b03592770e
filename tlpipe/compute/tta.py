"""Test-time augmentation: class probabilities averaged over views of each image.

`evaluate` (with `evaluate.tta`) and `tlpipe predict --tta` both call `predict_probabilities`, so
the two cannot average differently. `flip` is the mean of the model's output on each image and on
its horizontal mirror (fastai's `learn.tta()` does the same with its flips). The model's own last
layer, the temperature, is applied to each view before the mean: the views' calibrated
probabilities are averaged, not their logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

# What evaluate.tta (tlpipe/core/params.py, checked to agree by tests/test_tta.py) and `tlpipe
# predict --tta` accept. TensorFlow is imported only when predicting, so that `tlpipe` can build
# its arguments and refuse bad ones before it loads.
TTA_CHOICES = ("none", "flip")
WIDTH_AXIS = 2  # images are (batch, height, width, channels)


def mirrored(images: Any) -> Any:
    """`images` flipped left to right: an array of images, or a tf.data.Dataset of (images,)
    batches (what `tlpipe.compute.streaming.batches` yields), mirrored per batch as it is read."""
    if isinstance(images, np.ndarray):
        return np.flip(images, axis=WIDTH_AXIS)
    import tensorflow as tf

    return images.map(lambda *parts: (tf.reverse(parts[0], axis=[WIDTH_AXIS]), *parts[1:]))


def predict_probabilities(model: keras.Model, images: Any, tta: str = "none") -> np.ndarray:
    """(N, classes) probabilities of `model` on `images` (an array, or a dataset of
    streamed batches).

    `none` is one `model.predict`, exactly as without this function (the same bytes); `flip`
    runs a second pass over the mirrored images and returns the float32 mean of the two.
    """
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {', '.join(TTA_CHOICES)}; got {tta!r}")
    plain = model.predict(images, verbose=0)
    if tta == "none":
        return plain
    flipped = model.predict(mirrored(images), verbose=0)
    return ((plain + flipped) / 2).astype(np.float32)
