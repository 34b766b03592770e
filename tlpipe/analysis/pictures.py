"""Grids of images for the analysis pages: each image titled, mistakes in red, optionally with a
Grad-CAM heat map over it. Written as report.py writes samples.png, so reruns give equal bytes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from tlpipe.outputs.report import save_figure

HEATMAP_ALPHA = 0.45  # enough colour to see the map, enough image left to see what it covers


def plot_image_grid(
    images: np.ndarray,
    titles: list[str],
    path: Path,
    *,
    title: str,
    wrong: np.ndarray | None = None,
    heatmaps: np.ndarray | None = None,
    columns: int = 6,
) -> None:
    """A PNG grid of uint8 images (N, H, W, 1 or 3), `titles[i]` over image i, in red where
    `wrong[i]`; `heatmaps` (N, H, W) in [0, 1] are drawn over the images with the jet colormap.

    Pixels are drawn with nearest interpolation, so small images stay sharp squares rather than
    blurs. No images gives a small figure that says so: a page still has a picture to show.
    """
    if len(titles) != len(images):
        raise ValueError(f"expected one title per image; got {len(titles)} for {len(images)}")
    if heatmaps is not None and np.shape(heatmaps) != np.shape(images)[:3]:
        raise ValueError(f"heatmaps {np.shape(heatmaps)} do not match images {np.shape(images)}")
    if len(images) == 0:
        figure = plt.figure(figsize=(4.0, 1.2))
        figure.text(0.5, 0.4, "nothing to show", ha="center", va="center", fontsize=11)
        figure.suptitle(title)
        save_figure(figure, path)
        return
    columns = min(columns, len(images))
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index, (axis, image) in enumerate(zip(axes.flat, images, strict=False)):
        if image.shape[-1] == 1:  # grey: fixed 0-255 range, or imshow would stretch the contrast
            axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axis.imshow(image, interpolation="nearest")
        if heatmaps is not None:
            axis.imshow(
                heatmaps[index],
                cmap="jet",
                vmin=0.0,
                vmax=1.0,
                alpha=HEATMAP_ALPHA,
                interpolation="nearest",
            )
        red = wrong is not None and bool(wrong[index])
        axis.set_title(titles[index], fontsize=9, color="red" if red else "black")
    figure.suptitle(title)
    save_figure(figure, path)
