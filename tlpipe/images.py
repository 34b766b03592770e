"""Images in and out of the model: decoding files, and the one path from pixels to backbone input.

Training data (`prepare`) and new images (`tlpipe predict`) both go through `to_model_input`, and
the backbone's normalisation is inside the models (tlpipe/normalization.py), so serving cannot
prepare images differently from training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# What PIL raises for a file that is not a decodable image (missing, truncated, wrong format, huge).
UNREADABLE_IMAGE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def read_image(path: Path, size: int | None) -> np.ndarray:
    """One image file as RGB uint8 (H, W, 3), resized to size x size when `size` is set."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def to_model_input(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 images (N, H, W, 1|3) -> uint8 (N, size, size, 3), what every model takes.

    Resize (bilinear, antialiased, rounded back to whole pixel values) and repeat grey to three
    channels. The backbone's normalisation is not applied here: it is the models' first layer.
    """
    import tensorflow as tf

    batch = np.asarray(images)
    if batch.shape[1:3] != (image_size, image_size):
        resized = tf.image.resize(
            tf.cast(batch, tf.float32), (image_size, image_size), method="bilinear", antialias=True
        )
        batch = np.clip(np.round(resized.numpy()), 0, 255)
    batch = batch.astype(np.uint8)
    return np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch
