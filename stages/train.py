"""Stage `train`: the dense head (Flatten -> Dense -> Dropout -> softmax) on cached conv features.

Trains on data/features/head/, streamed from disk in seeded shuffled batches, with early
stopping; writes models/head.keras and per-epoch loss/accuracy (train and val) to metrics/train/
with DVCLive.
"""

from tlpipe.compute.archives import save_model
from tlpipe.compute.streaming import batches
from tlpipe.compute.training import build_head, compile_classifier, fit_logged, replica_scope
from tlpipe.core.arrays import check_same_rows, open_rows
from tlpipe.core.cpu import compute_record
from tlpipe.core.jsonfiles import save_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import (
    HEAD_FILE,
    TRAIN_COMPUTE_FILE,
    TRAIN_LIVE_DIR,
    head_features,
    prepared_labels,
)
from tlpipe.core.runtime import run_stage, seed_everything, use_threads


def main() -> None:
    params = load_params()
    train = params.train
    threads = use_threads(params.thread_count)  # the weights depend on it: params `threads`
    replicas = replica_scope(train.replicas, key="train.replicas")  # before TensorFlow starts
    seed_everything(params.seed)
    features = {split: open_rows(head_features(split)) for split in ("train", "val")}
    labels = {split: open_rows(prepared_labels(split)) for split in ("train", "val")}
    for split in ("train", "val"):
        check_same_rows({features[split].path: features[split], labels[split].path: labels[split]})

    with replicas:
        head = build_head(
            features["train"].shape[1:],
            labels["train"].shape[1],
            units=train.units,
            dropout=train.dropout,
        )
        compile_classifier(head, train.lr)
        fit_logged(
            head,
            batches(
                features["train"], labels["train"], batch_size=train.batch_size, seed=params.seed
            ),
            batches(features["val"], labels["val"], batch_size=train.batch_size),
            epochs=train.epochs,
            patience=train.patience,
            live_dir=TRAIN_LIVE_DIR,
        )
    save_model(head, HEAD_FILE)
    save_json(TRAIN_COMPUTE_FILE, compute_record(threads=threads))


if __name__ == "__main__":
    run_stage(main)
