"""Stage `train`: the dense head (Flatten -> Dense -> Dropout -> softmax) on cached conv features.

Trains on data/features/head/ with early stopping; writes models/head.keras and per-epoch
loss/accuracy (train and val) to metrics/train/ with DVCLive.
"""

from tlpipe.params import load_params
from tlpipe.paths import HEAD_FILE, TRAIN_LIVE_DIR, head_features, prepared_labels
from tlpipe.runtime import run_stage, seed_everything
from tlpipe.storage import check_same_rows, load_array, save_model
from tlpipe.training import build_head, compile_classifier, fit_logged


def main() -> None:
    params = load_params()
    seed_everything(params.seed)
    train = params.train
    data = {}
    for split in ("train", "val"):
        x, y = (
            load_array(head_features(split), mmap=False),
            load_array(prepared_labels(split), mmap=False),
        )
        check_same_rows({head_features(split): x, prepared_labels(split): y})
        data[split] = (x, y)

    x_train, y_train = data["train"]
    head = build_head(x_train.shape[1:], y_train.shape[1], units=train.units, dropout=train.dropout)
    compile_classifier(head, train.lr)
    fit_logged(
        head,
        data["train"],
        data["val"],
        epochs=train.epochs,
        batch_size=train.batch_size,
        patience=train.patience,
        live_dir=TRAIN_LIVE_DIR,
        title="Dense head",
    )
    save_model(head, HEAD_FILE)


if __name__ == "__main__":
    run_stage(main)
