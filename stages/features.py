"""Stage `features`: run the frozen conv base once over every prepared image and cache the result.

Writes data/features/head/{split}.npy (the conv base's output: the dense head's input),
data/features/boundary/{split}.npy (the activations at the freeze boundary, for fine-tuning) and
data/features/backbone.keras, the exact conv base used, so later stages start from the same
weights (random or pretrained) without downloading or re-initialising anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tlpipe.compute.archives import save_model
from tlpipe.compute.cluster import extract_on_cluster, provisional
from tlpipe.compute.features import check_free_space, compile_forward, extract_features
from tlpipe.compute.precision import choose_precision, computing_in
from tlpipe.core.arrays import load_array
from tlpipe.core.backbone import boundary_layer, build_conv_base, split_at
from tlpipe.core.cpu import compute_record, usable_cores
from tlpipe.core.files import RERUN_HINT
from tlpipe.core.jsonfiles import save_json
from tlpipe.core.params import Params, load_params
from tlpipe.core.paths import (
    BACKBONE_FILE,
    BOUNDARY_INFO_FILE,
    FEATURES_COMPUTE_FILE,
    FEATURES_DIR,
    SPLITS,
    boundary_features,
    head_features,
    prepared_images,
)
from tlpipe.core.runtime import UserError, run_stage, seed_everything

if TYPE_CHECKING:
    import keras


def load_inputs() -> dict[str, np.ndarray]:
    """Each split's prepared images, memory-mapped; refused unless all are uint8 pixels of shape
    (N, size, size, 3)."""
    inputs = {split: load_array(prepared_images(split)) for split in SPLITS}
    shape = inputs["train"].shape[1:]
    for split, images in inputs.items():
        if images.dtype != np.uint8:
            raise UserError(
                f"{prepared_images(split)} holds {images.dtype} images, written by an earlier "
                "version of the pipeline; expected uint8 pixels: run `dvc repro` to rebuild it"
            )
        if images.ndim != 4 or images.shape[1:] != shape or shape[0] != shape[1] or shape[2] != 3:
            raise UserError(
                f"{prepared_images(split)}: got images of shape {images.shape[1:]} (train_x: "
                f"{shape}); expected (size, size, 3), the same in every split: left by another "
                f"run? {RERUN_HINT}"
            )
    return inputs


def extract_here(
    base: keras.Model,
    bottom: keras.Model,
    top: keras.Model,
    inputs: dict[str, np.ndarray],
    *,
    batch_size: int,
    dtype: str,
    precision: str,
) -> dict:
    """Both caches of every split computed in this process; what it computed on."""
    with computing_in(base, precision):  # saved below as float32, whatever it computed in
        forward = compile_forward(bottom, top)
        for split in SPLITS:
            rate = extract_features(
                bottom,
                top,
                inputs[split],
                batch_size=batch_size,
                boundary_path=boundary_features(split),
                head_path=head_features(split),
                label=split,
                dtype=dtype,
                forward=forward,
            )
            print(f"features: {split}: {len(inputs[split])} images at {rate:.0f} img/s")
    save_model(base, BACKBONE_FILE)
    # All usable cores: with oneDNN the caches do not depend on the count (docs/trusted.md).
    return {"engine": "local", **compute_record(threads=usable_cores(), precision=precision)}


def extract_on_ray(
    base: keras.Model,
    bottom: keras.Model,
    top: keras.Model,
    inputs: dict[str, np.ndarray],
    *,
    boundary: str,
    params: Params,
    precision: str,
) -> dict:
    """Both caches of every split computed by Ray actors; what each node computed on."""
    save_model(base, BACKBONE_FILE)  # first: the Ray workers load it
    with provisional(BACKBONE_FILE):
        nodes = extract_on_cluster(
            params.cluster.address,
            inputs,
            boundary=boundary,
            boundary_shape=tuple(bottom.output.shape[1:]),
            head_shape=tuple(top.output.shape[1:]),
            batch_size=params.features.batch_size,
            dtype=params.features.dtype,
            precision=precision,
            seed=params.seed,
        )
    return {"engine": "ray", "nodes": nodes}


def main() -> None:
    params = load_params()
    seed_everything(params.seed)  # `backbone.weights: none` draws the random weights from this seed
    inputs = load_inputs()
    base = build_conv_base(
        params.backbone.name, params.backbone.weights, image_size=inputs["train"].shape[1]
    )
    boundary = boundary_layer(base, params.finetune.unfreeze_from)
    bottom, top = split_at(base, boundary)
    dtype = params.features.dtype
    values_per_image = int(np.prod(bottom.output.shape[1:])) + int(np.prod(top.output.shape[1:]))
    images = sum(len(x) for x in inputs.values())
    check_free_space(FEATURES_DIR, np.dtype(dtype).itemsize * values_per_image * images)
    precision = choose_precision(params.features.precision, stage="features")
    print(f"features: the conv base computes in {precision}")
    if params.cluster.engine == "ray":
        computed_on = extract_on_ray(
            base, bottom, top, inputs, boundary=boundary, params=params, precision=precision
        )
    else:
        computed_on = extract_here(
            base,
            bottom,
            top,
            inputs,
            batch_size=params.features.batch_size,
            dtype=dtype,
            precision=precision,
        )
    save_json(FEATURES_COMPUTE_FILE, computed_on)
    save_json(
        BOUNDARY_INFO_FILE,
        {"boundary_layer": boundary, "unfreeze_from": params.finetune.unfreeze_from},
    )
    print(
        f"features: head input {tuple(top.output.shape[1:])}, "
        f"boundary {boundary} {tuple(bottom.output.shape[1:])}"
    )


if __name__ == "__main__":
    run_stage(main)
