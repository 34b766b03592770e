"""Stage `download`: the dataset `data.dataset` names, as uint8 arrays in data/raw/.

A tensorflow-datasets name pinned to its version, `digits` (scikit-learn's bundled digits,
offline), or `folder` (the image folder data.folder, a dvc.yaml dependency by content), written to
disk as it is read, with what was read (name, exact version) in data/raw/source.json;
`data.limit` keeps a seeded, class-stratified sample of the training images.
"""

from tlpipe.core.arrays import open_rows
from tlpipe.core.params import load_params
from tlpipe.core.paths import RAW_DIR, raw_images
from tlpipe.core.runtime import run_stage
from tlpipe.data.sources import limit_training, write_dataset


def main() -> None:
    params = load_params()
    class_names = write_dataset(params.data, RAW_DIR)
    limit_training(params.data.limit, params.seed, RAW_DIR)
    train = open_rows(raw_images("train"))
    test = len(open_rows(raw_images("test"))) if raw_images("test").exists() else 0
    print(
        f"download: {params.data.dataset}: {len(train)} train + {test} test images "
        f"of {train.shape[1:]} in {len(class_names)} classes -> {RAW_DIR}/"
    )


if __name__ == "__main__":
    run_stage(main)
