"""A generated folder of photo-like images whose class a mirror does not change, for measuring
test-time augmentation with flips (RESULTS.md, "Issue 23: test-time augmentation").

Each image is one filled shape (circle, square, triangle or cross: all left-right symmetric)
of random size, position and colour on a random two-colour gradient (dark on light or light on
dark), blurred a little and with pixel noise, saved as JPEG into one sub-folder per class (the
layout `data.dataset: folder` reads):

    python -m benchmarks.shapes shapes --per-class 400
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross")


def draw_shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int], fill) -> None:
    """`name` filled in `box` (left, top, right, bottom): the same shape mirrored left-right."""
    left, top, right, bottom = box
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    arm = max(1, (right - left) // 6)
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.rectangle(box, fill=fill)
    elif name == "triangle":
        draw.polygon([(middle_x, top), (right, bottom), (left, bottom)], fill=fill)
    else:
        draw.rectangle((middle_x - arm, top, middle_x + arm, bottom), fill=fill)
        draw.rectangle((left, middle_y - arm, right, middle_y + arm), fill=fill)


def photo(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class `name`: a gradient in a random direction, the shape, blur, noise."""
    # A dark shape on a light ground or the reverse, so that no shape fades into its background.
    # The first version drew both colours at random, and the demo's settings learnt nothing from
    # it (RESULTS.md, "Issue 23: test-time augmentation"); whether contrast was why is untested.
    dark = rng.random() < 0.5
    ground = rng.integers(140, 256, (2, 3)) if dark else rng.integers(0, 116, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * x + np.sin(angle) * y + 1.5) / 3  # 0-1 across the image
    background = ground[0] + (ground[1] - ground[0]) * t[..., np.newaxis]
    image = Image.fromarray(background.astype(np.uint8))
    extent = int(rng.uniform(0.4, 0.8) * size)
    left, top = rng.integers(0, size - extent + 1, 2)
    fill = tuple(int(v) for v in rng.integers(0, 100, 3) + (0 if dark else 156))
    draw_shape(ImageDraw.Draw(image), name, (left, top, left + extent, top + extent), fill)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_shapes(folder: Path, *, per_class: int, size: int = 64, seed: int = 0) -> None:
    """`per_class` JPEGs of each of CLASSES under folder/<class>/, seeded: same files each run."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            photo(name, size, rng).save(folder / name / f"{index:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shapes", description=__doc__)
    parser.add_argument("folder", type=Path, help="where the class folders are written")
    images = parser.add_argument_group("images")
    images.add_argument("--per-class", type=int, default=150, help="images per class (150)")
    images.add_argument("--size", type=int, default=64, help="width and height in px (64)")
    images.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = parser.parse_args()
    write_shapes(args.folder, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"{args.per_class * len(CLASSES)} images in {len(CLASSES)} classes -> {args.folder}/")


if __name__ == "__main__":
    main()
