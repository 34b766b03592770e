"""Stage `prepare`: resize, 3 channels, one-hot labels, seeded stratified splits.

Reads data/raw/ and writes data/prepared/{train,val,test}_{x,y,index}.npy: images as uint8
pixels at the model's input size (the backbone's normalisation is the models' first layer). A
dataset's own test split is kept as the test split; otherwise `prepare.test_fraction` of the
images is held out.
"""

import sys

import numpy as np

from tlpipe.core.arrays import load_array, open_rows
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import PREPARED_DIR, RAW_DIR, SPLITS, classes_file, raw_images, raw_labels
from tlpipe.core.runtime import UserError, run_stage
from tlpipe.data.balance import class_counts, imbalance_warning
from tlpipe.data.splits import split_indices, write_split


def main() -> None:
    params = load_params()
    class_names = load_json(classes_file(RAW_DIR))
    train_images = open_rows(raw_images("train"))
    train_labels = load_array(raw_labels("train"), mmap=False)
    has_test = raw_images("test").exists()
    present = np.unique(train_labels)
    if len(present) < 2:
        raise UserError(
            f"data.dataset: the training images hold {len(present)} class(es); need at least 2"
        )

    indices = split_indices(
        train_labels, has_test_split=has_test, params=params.prepare, seed=params.seed
    )
    warning = imbalance_warning(class_counts(train_labels[indices["train"]], class_names))
    if warning:
        print(f"prepare: {warning}", file=sys.stderr)
    sources = {"train": (train_images, train_labels), "val": (train_images, train_labels)}
    if has_test:
        test_labels = load_array(raw_labels("test"), mmap=False)
        sources["test"] = (open_rows(raw_images("test")), test_labels)
        indices["test"] = np.arange(len(test_labels))
    else:
        sources["test"] = (train_images, train_labels)

    size = params.prepare.image_size
    for split in SPLITS:
        images, labels = sources[split]
        write_split(
            images,
            labels,
            indices[split],
            split=split,
            n_classes=len(class_names),
            image_size=size,
        )
    save_json(classes_file(PREPARED_DIR), class_names)
    counts = ", ".join(f"{split} {len(indices[split])}" for split in SPLITS)
    print(f"prepare: {counts} images at {size}x{size}x3 -> {PREPARED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
