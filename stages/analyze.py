"""Stage `analyze`: what the model gets wrong and what looks wrong in the data (docs/analysis.md).

Writes metrics/analysis/: the test images with the highest loss (top_losses.csv, .png), the
most confused class pairs (most_confused.csv), Grad-CAM maps of the fine-tuned model over its
worst mistakes and its most confident correct answers per class (gradcam_*.png), training and
validation labels that look wrong (label_issues.csv, .png: cleanlab on out-of-sample
probabilities from heads cross-validated on the cached features), exact and near-duplicate
images within and across splits (duplicates.csv), and the headline numbers with the class balance
(summary.json, which `dvc metrics diff` compares) and README.md. Nothing is moved or relabelled:
`tlpipe issues` prints the commands for a person to run after looking.
"""

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from tlpipe.analysis.duplicates import Pool, exact_pairs, near_pairs, pixel_digests, write_unit_rows
from tlpipe.analysis.gradcam import gradcam_maps
from tlpipe.analysis.labels import out_of_fold_probabilities, rank_label_issues
from tlpipe.analysis.mistakes import losses, most_confused, top_losses
from tlpipe.analysis.pictures import plot_image_grid
from tlpipe.analysis.tables import (
    DUPLICATE_COLUMNS,
    ISSUE_COLUMNS,
    TOP_LOSS_COLUMNS,
    Origins,
    readme,
    write_csv,
    write_readme,
)
from tlpipe.compute.archives import load_model
from tlpipe.compute.streaming import batches
from tlpipe.core.arrays import check_same_rows, load_array, open_rows, read_rows
from tlpipe.core.jsonfiles import load_json, save_json
from tlpipe.core.params import Params, load_params
from tlpipe.core.paths import (
    ANALYSIS_DIR,
    ANALYSIS_SUMMARY_FILE,
    FEATURES_DIR,
    HEAD_FILE,
    LABEL_ISSUES_FILE,
    MODEL_FILE,
    PREPARED_DIR,
    SPLITS,
    TEST_PROBABILITIES_FILE,
    TRAIN_SUMMARY_FILE,
    classes_file,
    head_features,
    prepared_images,
    prepared_labels,
)
from tlpipe.core.runtime import UserError, run_stage, use_threads
from tlpipe.data.balance import class_counts, imbalance

CHECKED = ("train", "val")  # the splits whose labels are checked (test labels are the yardstick)


def study_mistakes(
    truth: np.ndarray, class_names: list[str], params: Params, origins: Origins
) -> list[tuple[str, str, int]]:
    """top_losses.csv/.png, most_confused.csv and the Grad-CAM pictures; the confused pairs."""
    probabilities = load_array(TEST_PROBABILITIES_FILE, mmap=False)
    check_same_rows({TEST_PROBABILITIES_FILE: probabilities, prepared_labels("test"): truth})
    predicted = probabilities.argmax(axis=1)
    worst = top_losses(truth, probabilities, params.analyze.top_losses)
    loss = losses(truth, probabilities)
    write_csv(
        ANALYSIS_DIR / "top_losses.csv",
        TOP_LOSS_COLUMNS,
        [
            [
                rank + 1,
                row,
                origins.source("test", row),
                class_names[truth[row]],
                class_names[predicted[row]],
                f"{probabilities[row, predicted[row]]:.6f}",
                f"{loss[row]:.6f}",
            ]
            for rank, row in enumerate(worst)
        ],
    )
    confused = most_confused(truth, predicted, class_names)
    write_csv(ANALYSIS_DIR / "most_confused.csv", ["actual", "predicted", "count"], confused)
    images = open_rows(prepared_images("test"))
    titles = [
        f"{class_names[predicted[row]]} ({probabilities[row, predicted[row]]:.2f})\n"
        f"true: {class_names[truth[row]]}"
        for row in worst
    ]
    pictures = read_rows(images, np.sort(worst))[np.argsort(np.argsort(worst))]  # in rank order
    wrong = predicted[worst] != truth[worst]
    plot_image_grid(
        pictures, titles, ANALYSIS_DIR / "top_losses.png", title="Highest test loss", wrong=wrong
    )
    model = load_model(MODEL_FILE)
    size = params.analyze.batch_size
    maps = gradcam_maps(model, pictures, predicted[worst], batch_size=size)
    plot_image_grid(
        pictures,
        titles,
        ANALYSIS_DIR / "gradcam_mistakes.png",
        title="Grad-CAM of the predicted class, highest test loss first",
        wrong=wrong,
        heatmaps=maps,
    )
    best = most_confident_correct(truth, probabilities, params.analyze.gradcam_per_class)
    pictures = read_rows(images, best)
    plot_image_grid(
        pictures,
        [f"{class_names[truth[row]]} ({probabilities[row, truth[row]]:.2f})" for row in best],
        ANALYSIS_DIR / "gradcam_classes.png",
        title="Grad-CAM of the most confident correct test images per class",
        heatmaps=gradcam_maps(model, pictures, truth[best], batch_size=size),
    )
    return confused


def most_confident_correct(truth: np.ndarray, probabilities: np.ndarray, per_class: int):
    """Rows (ascending) of up to `per_class` correct test images per class, most confident."""
    correct = probabilities.argmax(axis=1) == truth
    confidence = probabilities[np.arange(len(truth)), truth]
    chosen = []
    for label in np.unique(truth):
        rows = np.flatnonzero(correct & (truth == label))
        chosen.extend(rows[np.lexsort((rows, -confidence[rows]))][:per_class])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def study_labels(
    truth: dict[str, np.ndarray],
    class_names: list[str],
    params: Params,
    origins: Origins,
    scratch: Path,
) -> tuple[int, list[list]]:
    """label_issues.csv/.png; (how many, their rows as in the CSV)."""
    epochs = trained_epochs()
    features = {split: open_rows(head_features(split)) for split in CHECKED}
    train_probabilities = out_of_fold_probabilities(
        features["train"],
        open_rows(prepared_labels("train")),
        class_names,
        scratch,
        folds=params.analyze.folds,
        epochs=epochs,
        train=params.train,
        seed=params.seed,
        batch_size=params.analyze.batch_size,
    )
    head = load_model(HEAD_FILE)  # never trained on the validation split
    val = batches(features["val"], batch_size=params.analyze.batch_size)
    probabilities = np.concatenate([train_probabilities, head.predict(val, verbose=0)])
    pool = Pool(CHECKED, tuple(len(truth[split]) for split in CHECKED))
    labels = np.concatenate([truth[split] for split in CHECKED])
    ranked, quality = rank_label_issues(labels, probabilities)
    which, rows = pool.locate(ranked)
    suggested = probabilities.argmax(axis=1)
    table = [
        [
            rank + 1,
            CHECKED[w],
            int(r),
            origins.source(CHECKED[w], int(r)),
            class_names[labels[g]],
            class_names[suggested[g]],
            f"{quality[g]:.6f}",
        ]
        for rank, (g, w, r) in enumerate(zip(ranked, which, rows, strict=True))
    ]
    write_csv(LABEL_ISSUES_FILE, ISSUE_COLUMNS, table)
    shown = table[: params.analyze.top_losses]
    pictures = [read_rows(open_rows(prepared_images(s)), np.array([r]))[0] for _, s, r, *_ in shown]
    plot_image_grid(
        np.asarray(pictures) if pictures else np.zeros((0, 1, 1, 3), np.uint8),
        [f"given: {row[4]}\nlikely: {row[5]} ({row[6][:4]})" for row in shown],
        ANALYSIS_DIR / "label_issues.png",
        title="Labels that look wrong, most likely first (label quality in brackets)",
    )
    return len(table), table


def trained_epochs() -> int:
    """The epochs the `train` stage's kept head trained for: each fold's head trains as long."""
    summary = load_json(TRAIN_SUMMARY_FILE)
    epochs = summary.get("best_epoch") if isinstance(summary, dict) else None
    if not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"{TRAIN_SUMMARY_FILE} has no best_epoch; rerun `dvc repro train`")
    return epochs


def study_duplicates(
    params: Params, origins: Origins, scratch: Path
) -> tuple[dict, dict, list[list]]:
    """duplicates.csv; (counts by kind, leaks by pair of splits, the rows that leak into test)."""
    pool = Pool(SPLITS, tuple(len(open_rows(prepared_labels(split))) for split in SPLITS))
    exact = set(exact_pairs(pixel_digests([open_rows(prepared_images(s)) for s in SPLITS])))
    features = [open_rows(head_features(split)) for split in SPLITS]
    unit = write_unit_rows(features, features[0], scratch / "unit.npy")
    near = near_pairs(unit, params.analyze.duplicate_threshold)
    similar = {(a, b): s for a, b, s in near}
    pairs = sorted(exact | set(similar), key=lambda p: (p not in exact, -similar.get(p, 1.0), p))
    table = []
    for a, b in pairs:
        (wa, wb), (ra, rb) = pool.locate(np.array([a, b]))
        sa, sb = SPLITS[wa], SPLITS[wb]
        kind = "exact" if (a, b) in exact else "near"
        table.append(
            [
                kind,
                f"{similar.get((a, b), 1.0):.6f}",
                sa,
                int(ra),
                origins.source(sa, int(ra)),
                sb,
                int(rb),
                origins.source(sb, int(rb)),
            ]
        )
    write_csv(ANALYSIS_DIR / "duplicates.csv", DUPLICATE_COLUMNS, table)
    counts = {"exact": len(exact), "near": len(pairs) - len(exact)}
    leaks = {
        f"{x}_{y}": len({row[6] for row in table if (row[2], row[5]) == (x, y)})
        for x, y in (("train", "test"), ("val", "test"), ("train", "val"))
    }
    return counts, leaks, [row for row in table if row[5] == "test" and row[2] != "test"]


def balance(truth: dict[str, np.ndarray], class_names: list[str]) -> dict:
    """Images per class per split, and the training split's largest/smallest class ratio."""
    counts = {split: class_counts(truth[split], class_names) for split in SPLITS}
    ratio, _, _ = imbalance(counts["train"])
    return {"balance": counts, "imbalance_ratio": round(ratio, 4) if np.isfinite(ratio) else None}


@contextlib.contextmanager
def timed(part: str):
    """Print how long `part` of the stage took: the stage's progress, and where its time goes."""
    started = time.perf_counter()
    yield
    print(f"analyze: {part} in {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    params = load_params()
    use_threads(params.thread_count)  # the fold heads' weights depend on it, as train's do
    class_names = load_json(classes_file(PREPARED_DIR))
    truth = {s: load_array(prepared_labels(s), mmap=False).argmax(axis=1) for s in SPLITS}
    origins = Origins.load(SPLITS)
    with timed("top losses, confused pairs and Grad-CAM"):
        confused = study_mistakes(truth["test"], class_names, params, origins)
    # scratch files (the fold targets, the unit-length features) beside the features they copy
    with tempfile.TemporaryDirectory(prefix=".analyze-", dir=FEATURES_DIR) as tmp:
        with timed(f"label issues ({params.analyze.folds} fold heads)"):
            issues, issue_rows = study_labels(truth, class_names, params, origins, Path(tmp))
        with timed("duplicates and leaks"):
            duplicates, leaks, leak_rows = study_duplicates(params, origins, Path(tmp))
    summary = {
        "classes": len(class_names),
        "test_images": len(truth["test"]),
        "checked_images": sum(len(truth[split]) for split in CHECKED),
        "label_issues": issues,
        "duplicates": duplicates,
        "leaks": leaks,
        **balance(truth, class_names),
    }
    save_json(ANALYSIS_SUMMARY_FILE, summary)
    write_readme(ANALYSIS_DIR / "README.md", readme(summary, confused, issue_rows, leak_rows))
    print(
        f"analyze: {issues} label issues in {summary['checked_images']} train/val images, "
        f"{duplicates['exact']} exact and {duplicates['near']} near-duplicates, "
        f"{leaks['train_test']} test images leaked from train -> {ANALYSIS_DIR}/"
    )


if __name__ == "__main__":
    run_stage(main)
