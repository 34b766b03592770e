"""Stage `features`: run the frozen conv base once over every prepared image and cache the result.

Two caches come out of the same forward pass, streamed to .npy batch by batch:
- data/features/head/{split}.npy: the conv base's output, the input of the dense head (`train`);
- data/features/boundary/{split}.npy: the activations at the freeze boundary (the last layer
  before `finetune.unfreeze_from`), so `finetune` trains the top block without ever recomputing
  the frozen layers.
data/features/backbone.keras is the exact conv base used, so later stages start from the same
weights (random or pretrained) without downloading or re-initialising anything.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from stages.backbone import boundary_layer, build_conv_base, split_at
from stages.params import load_params
from stages.runtime import UserError, run_stage, seed_everything
from stages.storage import array_writer, load_array, save_json, save_model

PREPARED_DIR = Path("data/prepared")
FEATURES_DIR = Path("data/features")
HEAD_DIR = FEATURES_DIR / "head"
BOUNDARY_DIR = FEATURES_DIR / "boundary"
BACKBONE_FILE = FEATURES_DIR / "backbone.keras"
SPLITS = ("train", "val", "test")


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse before writing if the feature files will not fit on the disk."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise UserError(
            f"features: need {needed_bytes / 2**30:.2f} GiB in {folder} but only {free / 2**30:.2f} GiB "
            "is free; free some space or lower prepare.image_size / data.limit"
        )


def compile_forward(bottom: keras.Model, top: keras.Model) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """One traced graph returning (boundary activations, conv-base output) for any batch size."""
    spec = tf.TensorSpec((None, *bottom.input.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec])
    def forward(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        at_boundary = bottom(images, training=False)
        return at_boundary, top(at_boundary, training=False)

    return forward


def extract_features(
    bottom: keras.Model, top: keras.Model, images: np.ndarray, batch_size: int,
    boundary_path: Path, head_path: Path, label: str,
) -> float:
    """Stream `images` through bottom then top; write both outputs; return images per second."""
    forward = compile_forward(bottom, top)
    n = len(images)
    boundary_shape = (n, *bottom.output.shape[1:])
    head_shape = (n, *top.output.shape[1:])
    started = time.perf_counter()
    with array_writer(boundary_path, boundary_shape, np.float32) as boundary_out, \
         array_writer(head_path, head_shape, np.float32) as head_out, \
         tqdm(total=n, unit="img", desc=f"features {label}", mininterval=2.0) as progress:
        for start in range(0, n, batch_size):
            batch = np.asarray(images[start : start + batch_size])
            at_boundary, at_output = forward(tf.constant(batch))
            boundary_out[start : start + len(batch)] = at_boundary.numpy()
            head_out[start : start + len(batch)] = at_output.numpy()
            progress.update(len(batch))
    return n / max(time.perf_counter() - started, 1e-9)


def main() -> None:
    params = load_params()
    seed_everything(params.seed)  # `backbone.weights: none` draws the random weights from this seed
    inputs = {split: load_array(PREPARED_DIR / f"{split}_x.npy") for split in SPLITS}
    image_size = inputs["train"].shape[1]
    base = build_conv_base(params.backbone, image_size)
    boundary = boundary_layer(base, params.finetune.unfreeze_from)
    bottom, top = split_at(base, boundary)

    floats_per_image = int(np.prod(bottom.output.shape[1:])) + int(np.prod(top.output.shape[1:]))
    check_free_space(FEATURES_DIR, 4 * floats_per_image * sum(len(x) for x in inputs.values()))
    for split in SPLITS:
        rate = extract_features(bottom, top, inputs[split], params.features.batch_size,
                                BOUNDARY_DIR / f"{split}.npy", HEAD_DIR / f"{split}.npy", split)
        print(f"features: {split}: {len(inputs[split])} images at {rate:.0f} img/s")
    save_model(base, BACKBONE_FILE)
    save_json(FEATURES_DIR / "boundary.json", {"boundary_layer": boundary, "unfreeze_from": params.finetune.unfreeze_from})
    print(f"features: head input {tuple(top.output.shape[1:])}, boundary {boundary} {tuple(bottom.output.shape[1:])}")


if __name__ == "__main__":
    run_stage(main)
