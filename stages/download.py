"""Stage `download`: the dataset `data.dataset` names, as uint8 arrays in data/raw/.

A tensorflow-datasets name, `digits` (scikit-learn's bundled digits, offline), or an image folder;
`data.limit` keeps a seeded, class-stratified sample of the training images.
"""

from tlpipe.params import load_params
from tlpipe.paths import RAW_DIR
from tlpipe.runtime import run_stage
from tlpipe.sources import limit_training, load_dataset, write_raw


def main() -> None:
    params = load_params()
    dataset = limit_training(load_dataset(params.data), params.data.limit, params.seed)
    write_raw(dataset, RAW_DIR)
    test = 0 if dataset.test_labels is None else len(dataset.test_labels)
    print(
        f"download: {params.data.dataset}: {len(dataset.train_labels)} train + {test} test images "
        f"of {dataset.train_images.shape[1:]} in {len(dataset.class_names)} classes -> {RAW_DIR}/"
    )


if __name__ == "__main__":
    run_stage(main)
