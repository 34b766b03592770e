"""Grad-CAM maps point where the classifier found its evidence, for constructed models whose answer
is known and for every backbone the pipeline builds; and the image grids they are drawn in."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from tlpipe.analysis.gradcam import gradcam_layer, gradcam_maps
from tlpipe.analysis.pictures import plot_image_grid
from tlpipe.compute.training import build_finetune_models, build_head
from tlpipe.core.backbone import BACKBONES, boundary_layer, build_conv_base

EXPECTED_LAYERS = {
    "vgg16": "block5_conv3",
    "resnet50": "conv5_block3_out",
    "efficientnetb0": "top_activation",
    "densenet121": "relu",
    "mobilenetv2": "out_relu",
}


class QuadrantMask(keras.layers.Layer):
    """Zeroes a feature map everywhere but its top-left quadrant."""

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        self.mask = np.zeros((1, height, width, 1), np.float32)
        self.mask[:, : height // 2, : width // 2] = 1.0

    def call(self, x):
        return x * self.mask


def masked_model(scale: float) -> keras.Model:
    """Shaped like the pipeline's models (a nested softmax head last): a 1x1 stride-2 conv whose one
    channel is the mean pixel / 255 everywhere, a mask, so that the head sees only the top-left
    quadrant of the 16x16 map, and class 0's logit = scale * that quadrant's mean (class 1:
    minus)."""
    pixels = keras.Input((32, 32, 3), name="pixels")
    conv = keras.layers.Conv2D(1, 1, strides=2, activation="relu", name="block1_conv")
    masked = QuadrantMask(name="mask")(conv(pixels))
    head = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ],
        name="head",
    )
    model = keras.Model(pixels, head(masked))
    conv.set_weights([np.full((1, 1, 3, 1), 1 / 765, np.float32), np.zeros(1, np.float32)])
    head.layers[-1].set_weights([np.array([[scale, -scale]], np.float32), np.zeros(2, np.float32)])
    return model


def bright_noise(count: int) -> np.ndarray:
    """Images with the evidence everywhere: every pixel bright."""
    return np.random.default_rng(0).integers(128, 256, (count, 32, 32, 3), dtype=np.uint8)


def inside_share(maps: np.ndarray) -> float:
    """Share of the maps' total mass inside the top-left quadrant."""
    return float(maps[:, :16, :16].sum() / maps.sum())


def test_the_map_is_the_only_quadrant_the_classifier_sees():
    model = masked_model(scale=100.0)
    images = bright_noise(3)
    assert gradcam_layer(model) == "mask"  # the last rank-4 map; the head is not a layer to read
    maps = gradcam_maps(model, images, np.zeros(3, int))
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert inside_share(maps) > 0.95, inside_share(maps)
    # Bilinear upsampling 16 -> 32 spreads the quadrant's edge over one pixel, no further.
    assert np.all(maps[:, 17:, :] == 0) and np.all(maps[:, :, 17:] == 0)
    assert np.all(maps[:, :15, :15] > 0.3) and np.allclose(maps.max(axis=(1, 2)), 1.0)
    # Grad-CAM weights channels, not places: read before the mask, where the one channel is
    # active everywhere, the map covers the whole image (a quarter of its mass in the quadrant).
    spread = gradcam_maps(model, images, np.zeros(3, int), layer="block1_conv")
    assert 0.2 < inside_share(spread) < 0.3, inside_share(spread)


def test_a_saturated_softmax_still_gives_a_map():
    """The head's logit is the score: at probability 1.0 the softmax's gradient is 0."""
    model = masked_model(scale=1000.0)
    images = bright_noise(2)
    assert np.all(model.predict(images.astype(np.float32), verbose=0)[:, 0] == 1.0)
    maps = gradcam_maps(model, images, np.zeros(2, int))
    assert inside_share(maps) > 0.95 and np.allclose(maps.max(axis=(1, 2)), 1.0)


def test_a_reloaded_model_gives_the_same_maps(tmp_path):
    model, images = masked_model(scale=100.0), bright_noise(2)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(
        tmp_path / "model.keras", custom_objects={"QuadrantMask": QuadrantMask}
    )
    np.testing.assert_allclose(
        gradcam_maps(loaded, images, np.zeros(2, int)),
        gradcam_maps(model, images, np.zeros(2, int)),
        atol=1e-6,
    )


def colour_model() -> keras.Model:
    """No nested head (scored by its softmax output): channel 0 sees red, channel 1 green, and only
    red counts, for class 0 (against class 1)."""
    pixels = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="conv")
    pooled = keras.layers.GlobalAveragePooling2D()(conv(pixels))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(pixels, dense(pooled))
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 1, 1] = 1 / 255
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    dense.set_weights([np.array([[1.0, -1.0], [0.0, 0.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_the_class_gradient_picks_the_channel():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[..., 1] = 255  # green everywhere ...
    images[:, :16, :16] = (255, 0, 0)  # ... but red in the top-left quadrant
    model = colour_model()
    assert gradcam_layer(model) == "conv"
    maps = gradcam_maps(model, images, np.array([0, 1]))
    assert np.all(maps[0, :16, :16] == 1.0) and maps[0].sum() == 256  # red, where class 0 looks
    assert np.all(maps[1] == 0)  # red only lowers class 1: nothing raises it, the map stays zero


def test_maps_are_the_same_bytes_every_time_and_in_any_batch_size():
    model, images = masked_model(scale=100.0), bright_noise(5)
    classes = np.array([0, 1, 0, 1, 0])
    first = gradcam_maps(model, images, classes, batch_size=2)
    assert first.tobytes() == gradcam_maps(model, images, classes, batch_size=2).tobytes()
    np.testing.assert_allclose(gradcam_maps(model, images, classes), first, atol=1e-6)
    assert gradcam_maps(model, images[:0], classes[:0]).shape == (0, 32, 32)


def test_no_feature_map_and_bad_classes_are_refused():
    flat = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="no convolutional feature map"):
        gradcam_layer(flat)
    with pytest.raises(ValueError, match=r"classes must be in 0\.\.1"):
        gradcam_maps(colour_model(), np.zeros((1, 32, 32, 3), np.uint8), np.array([2]))


@pytest.fixture(scope="module", params=list(BACKBONES))
def pipeline_model(request) -> tuple[str, keras.Model]:
    """The full model as finetune builds it, on random weights at 32 px (one per backbone)."""
    name = request.param
    keras.utils.set_random_seed(0)
    base = build_conv_base(name, "none", 32)
    head = build_head(tuple(base.output.shape[1:]), 3, units=8, dropout=0.5)
    _, full = build_finetune_models(base, head, boundary_layer(base, BACKBONES[name].last_block))
    return name, full


def test_every_backbone_gets_its_last_conv_map(pipeline_model):
    name, model = pipeline_model
    layer = model.get_layer(gradcam_layer(model))
    assert layer.name == EXPECTED_LAYERS[name]
    assert len(layer.output.shape) == 4 and "pool" not in type(layer).__name__.lower()
    images = bright_noise(2)
    maps = gradcam_maps(model, images, np.array([0, 2]))
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.tobytes() == gradcam_maps(model, images, np.array([0, 2])).tobytes()


def test_image_grid_is_a_reproducible_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    heatmaps = rng.random((8, 16, 16)).astype(np.float32)
    wrong = np.arange(8) % 3 == 0
    for name in ("a.png", "b.png"):
        plot_image_grid(
            images,
            [f"image {i}" for i in range(8)],
            tmp_path / name,
            title="Where the model looked",
            wrong=wrong,
            heatmaps=heatmaps,
            columns=4,
        )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as picture:
        width, height = picture.size  # 4 columns x 2 rows of 2.0 x 2.3 inches at 100 dpi
    assert picture.format == "PNG" and 500 < width <= 820 and 300 < height <= 480


def test_image_grid_takes_grey_images_and_none(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    plot_image_grid(grey, ["a", "b", "c"], tmp_path / "grey.png", title="Grey")
    plot_image_grid(grey[:0], [], tmp_path / "none.png", title="Costliest mistakes")
    with Image.open(tmp_path / "grey.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 300
    with Image.open(tmp_path / "none.png") as picture:
        assert picture.format == "PNG" and 100 < picture.size[0] <= 400


def test_a_calibrated_models_temperature_leaves_the_maps_as_they_are():
    """The saturated case: through the temperature the score would be a probability at 1.0."""
    from tlpipe.compute.temperature import with_temperature

    model, images = masked_model(scale=1000.0), bright_noise(2)
    calibrated = with_temperature(model, 2.5)
    np.testing.assert_array_equal(
        gradcam_maps(calibrated, images, np.zeros(2, int)),
        gradcam_maps(model, images, np.zeros(2, int)),
    )
