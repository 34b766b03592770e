"""Images in and out of the model: decoding files, and the one path from pixels to backbone input.

Training data (`prepare`) and new images (`tlpipe predict`) both go through `to_model_input`, and
the backbone's normalisation is inside the models (tlpipe/core/normalization.py), so serving cannot
prepare images differently from training.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The decoders tried, whatever the suffix says (Pillow's JPEG one also opens cameras' MPO
# files); Pillow's other formats are never tried on files from elsewhere.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
# Larger images are refused before decoding: a few bytes can declare 100000 x 100000 pixels
# (a decompression bomb). 8192 x 8192 RGB decodes to 200 MB.
MAX_IMAGE_PIXELS = 8192 * 8192


class ImageTooLarge(ValueError):
    """An image whose header declares more than MAX_IMAGE_PIXELS pixels."""


# What reading a file that is not a usable image raises (missing, truncated, wrong format, huge).
UNREADABLE_IMAGE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def read_image(path: Path, size: int | None) -> np.ndarray:
    """One image file as RGB uint8 (H, W, 3), resized to size x size when `size` is set.

    Raises one of UNREADABLE_IMAGE (ImageTooLarge over MAX_IMAGE_PIXELS) for a file that is not
    a usable image; only the header is read before the size is checked.
    """
    try:
        image = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as error:  # Pillow's own, looser limit
        size = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(int(size.group(1)) if size else None) from None
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(width * height, f"{width}x{height}")
        image.load()
        rgb = to_rgb(image)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, whatever its mode; what `read_image` gives every caller.

    16-bit grey (Pillow's I;16 modes: a 16-bit greyscale PNG) is scaled to 8 bits, 65535 -> 255;
    `convert("RGB")` would clip it, turning all but the darkest 1/256 of the range white.
    16-bit RGB, RGBA and grey+alpha PNGs Pillow itself decodes to 8 bits per channel. 32-bit
    integer (I) and floating-point (F) pixels have no fixed range to scale from (none of
    IMAGE_FORMATS decodes to them): refused. Everything else is Pillow's `convert("RGB")`: grey
    repeated, palette looked up, alpha dropped (a transparent pixel keeps the colour stored under
    it), CMYK converted without its colour profile.
    """
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.uint32)
        grey = ((pixels * 255 + 32767) // 65535).astype(np.uint8)  # rounded: 65535 -> 255
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise ValueError(
            f"{kind} pixels (Pillow mode {image.mode}), which have no fixed range to scale to "
            "8 bits; expected 8- or 16-bit grey, RGB(A) or palette images"
        )
    return image.convert("RGB")


def _too_large(pixels: int | None, shape: str | None = None) -> ImageTooLarge:
    declared = f"{shape} = {pixels} pixels" if shape else f"{pixels or 'too many'} pixels"
    return ImageTooLarge(
        f"it declares {declared}; the limit is {MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS, "
        f"{int(MAX_IMAGE_PIXELS**0.5)}x{int(MAX_IMAGE_PIXELS**0.5)})"
    )


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
