"""Images in and out of the model: decoding files, and the one path from pixels to backbone input.

Training data (`prepare`) and new images (`tlpipe predict`) both go through `to_backbone_input`, so
the normalisation at serving time is the one the model was trained with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlpipe.backbone import preprocess

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


def to_backbone_input(images: np.ndarray, image_size: int, backbone: str) -> np.ndarray:
    """uint8 images (N, H, W, 1|3) -> float32 (N, size, size, 3) ready for `backbone`.

    Resize (bilinear, antialiased), repeat grey to three channels, then the backbone's own
    `preprocess_input`.
    """
    import tensorflow as tf

    batch = tf.image.resize(
        tf.cast(images, tf.float32), (image_size, image_size), method="bilinear", antialias=True
    ).numpy()
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return preprocess(np.clip(batch, 0.0, 255.0), backbone)
