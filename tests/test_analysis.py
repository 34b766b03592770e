"""The analyze stage's parts on small constructed cases: label issues found in injected noise,
duplicates and leaks found across splits, mistakes ranked, imbalance warned about, and the
label-issue list turned into commands (never run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.helpers import SHIPPED_PARAMS_DICT, run
from tlpipe.analysis import duplicates
from tlpipe.analysis.duplicates import Pool, exact_pairs, near_pairs, pixel_digests, write_unit_rows
from tlpipe.analysis.labels import fold_rows, out_of_fold_probabilities, rank_label_issues
from tlpipe.analysis.mistakes import losses, most_confused, top_losses
from tlpipe.core.arrays import open_rows, save_array
from tlpipe.core.params import parse_params
from tlpipe.core.runtime import UserError
from tlpipe.data.balance import class_counts, imbalance_warning
from tlpipe.outputs.issues import format_issues, move_command

CLASSES = [str(d) for d in range(10)]


def flipped_digits(tmp_path: Path, fraction: float, seed: int) -> tuple[Path, Path, np.ndarray]:
    """scikit-learn's digits as 'cached features' (64 pixels each) with `fraction` of the labels
    moved to a random other class: (features file, one-hot labels file, flipped rows)."""
    x, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), int(fraction * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10  # never the same
    save_array(tmp_path / "x.npy", (x / 16.0).astype(np.float32).reshape(-1, 1, 1, 64))
    save_array(tmp_path / "y.npy", np.eye(10, dtype=np.float32)[noisy])
    return tmp_path / "x.npy", tmp_path / "y.npy", flipped


def test_injected_label_noise_is_found_well_above_chance(tmp_path):
    x, y, flipped = flipped_digits(tmp_path, fraction=0.05, seed=0)
    train = parse_params(SHIPPED_PARAMS_DICT).train
    probabilities = out_of_fold_probabilities(
        open_rows(x), open_rows(y), CLASSES, tmp_path, folds=5, epochs=10, train=train, seed=0,
        batch_size=256,
    )  # fmt: skip
    labels = np.load(y).argmax(axis=1)
    ranked, quality = rank_label_issues(labels, probabilities)
    found = set(ranked.tolist())
    recall = len(found & set(flipped.tolist())) / len(flipped)
    precision = len(found & set(flipped.tolist())) / max(len(found), 1)
    chance = len(found) / len(labels)  # the recall of flagging as many rows at random
    assert len(flipped) == 89
    assert recall >= 0.6 and recall > 10 * chance, (recall, chance)  # measured: 0.78, 16x
    assert precision >= 0.5, precision
    assert quality.shape == (len(labels),)
    assert list(quality[ranked]) == sorted(quality[ranked])  # most likely wrong first


def test_out_of_fold_probabilities_are_the_same_bytes_twice(tmp_path):
    x, y, _ = flipped_digits(tmp_path, fraction=0.05, seed=1)
    train = parse_params(SHIPPED_PARAMS_DICT).train
    runs = [
        out_of_fold_probabilities(
            open_rows(x),
            open_rows(y),
            CLASSES,
            tmp_path,
            folds=3,
            epochs=2,
            train=train,
            seed=3,
            batch_size=100,
        )
        for _ in range(2)
    ]
    assert runs[0].shape == (1797, 10)
    assert runs[0].tobytes() == runs[1].tobytes()


def test_too_few_images_per_class_for_the_folds_is_one_line_naming_the_need():
    labels = np.array([0] * 6 + [1] * 3)
    with pytest.raises(UserError) as error:
        fold_rows(labels, ["cat", "dog"], folds=5, seed=0)
    assert str(error.value) == (
        "analyze.folds: 5 folds need at least 5 training images in every class; 'dog' has 3. "
        "Add images to it, or lower analyze.folds (>= 2)"
    )
    assert "\n" not in str(error.value)


def test_folds_hold_out_every_row_once_stratified():
    labels = np.repeat(np.arange(3), 10)
    folds = fold_rows(labels, ["a", "b", "c"], folds=5, seed=0)
    held = np.concatenate([rows for _, rows in folds])
    assert sorted(held.tolist()) == list(range(30))
    assert all(np.bincount(labels[rows]).tolist() == [2, 2, 2] for _, rows in folds)


def split_files(tmp_path: Path, images: dict[str, np.ndarray], features: dict[str, np.ndarray]):
    files = {}
    for split in ("train", "val", "test"):
        save_array(tmp_path / f"{split}_x.npy", images[split])
        save_array(tmp_path / f"{split}_f.npy", features[split])
        files[split] = (
            open_rows(tmp_path / f"{split}_x.npy"),
            open_rows(tmp_path / f"{split}_f.npy"),
        )
    return files


@pytest.mark.parametrize("block", [1024, 7])  # one block, and many (blocks of the search)
def test_twenty_test_images_copied_into_train_are_all_found_as_leaks(tmp_path, monkeypatch, block):
    monkeypatch.setattr(duplicates, "BLOCK", block)
    rng = np.random.default_rng(0)
    sizes = {"train": 120, "val": 30, "test": 40}
    images = {s: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for s, n in sizes.items()}
    features = {s: rng.normal(0, 1, (n, 2, 2, 16)).astype(np.float32) for s, n in sizes.items()}
    copied = np.arange(20)  # test rows 0..19 -> train rows 100..119: exact pixel copies
    images["train"][100:] = images["test"][copied]
    features["train"][100:] = features["test"][copied]
    # val row 3 is test row 30 slightly changed: a near-duplicate, not an exact one
    images["val"][3] = images["test"][30] ^ 1
    features["val"][3] = features["test"][30] + rng.normal(0, 0.01, (2, 2, 16))
    files = split_files(tmp_path, images, features)
    pool = Pool(("train", "val", "test"), tuple(sizes.values()))

    exact = exact_pairs(pixel_digests([files[s][0] for s in pool.splits]))
    unit = write_unit_rows(
        [files[s][1] for s in pool.splits], files["train"][1], tmp_path / "u.npy"
    )
    near = near_pairs(unit, 0.98)

    copies = [(100 + i, 150 + i) for i in range(20)]  # global rows: train, then val, then test
    assert exact == copies
    assert [(a, b) for a, b, _ in near] == [*copies, (123, 180)]  # most similar first
    assert all(s >= 0.98 for *_, s in near)
    which, rows = pool.locate(np.array([123, 180]))
    assert [pool.splits[w] for w in which] == ["val", "test"] and rows.tolist() == [3, 30]


def test_near_pairs_keep_at_most_the_nearest_neighbours_of_each_image(tmp_path):
    unit = np.ones((9, 4), np.float32) / 2.0  # nine identical rows: every pair is at 1.0
    save_array(tmp_path / "u.npy", unit)
    near = near_pairs(open_rows(tmp_path / "u.npy"), 0.99)
    partners = np.bincount(np.array([(a, b) for a, b, _ in near]).ravel(), minlength=9)
    assert partners.min() >= duplicates.NEIGHBOURS  # each row kept its NEIGHBOURS nearest
    assert len(near) < 9 * 8 // 2  # but not every pair: memory grows as N, not N^2


def test_top_losses_and_most_confused():
    truth = np.array([0, 0, 1, 1, 2])
    probabilities = np.array(
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.7, 0.3, 0.0], [0.0, 0.6, 0.4]]
    )
    assert np.allclose(losses(truth, probabilities), -np.log([0.9, 0.2, 0.9, 0.3, 0.4]))
    assert top_losses(truth, probabilities, 3).tolist() == [1, 3, 4]  # highest loss first
    predicted = probabilities.argmax(axis=1)
    assert most_confused(truth, predicted, ["a", "b", "c"]) == [
        ("a", "b", 1), ("b", "a", 1), ("c", "b", 1)
    ]  # fmt: skip


def test_prepare_warns_only_above_ten_times():
    assert imbalance_warning(class_counts(np.array([0] * 10 + [1]), ["big", "small"])) is None
    warning = imbalance_warning(class_counts(np.array([0] * 11 + [1]), ["big", "small"]))
    assert warning == (
        "warning: the classes are imbalanced: 'big' has 11 training images, 'small' 1 "
        "(11.0x, above 10x); accuracy will favour the large classes: see the per-class recall "
        "in metrics/report/per_class.md"
    )


ISSUE = {"rank": "1", "split": "train", "source": "cats/it's 1.jpg", "given": "cats",
         "suggested": "dogs", "label_quality": "0.010000"}  # fmt: skip


def test_issue_commands_move_a_folder_image_to_its_suggested_class_and_quote_names():
    command = move_command(ISSUE, Path("my photos"))
    assert command == "mv -n -- 'my photos/cats/it'\"'\"'s 1.jpg' 'my photos/dogs'/"
    assert move_command(ISSUE, None) == ""  # a dataset's image: no file to move


def test_issue_table_and_csv(tmp_path):
    rows = [ISSUE, ISSUE | {"rank": "2"}]
    table = format_issues(rows, Path("photos"), top=1, as_csv=False)
    assert table.splitlines()[0].split() == [
        "rank", "split", "source", "given", "suggested", "label_quality"
    ]  # fmt: skip
    assert "(1 of 2 label issues, most likely first)" in table
    assert "  mv -n -- 'photos/cats/it'\"'\"'s 1.jpg' photos/dogs/" in table
    parsed = list(csv.DictReader(format_issues(rows, None, top=0, as_csv=True).splitlines()))
    assert [row["rank"] for row in parsed] == ["1", "2"]
    assert parsed[0]["command"] == ""


def test_tlpipe_issues_without_an_analysis_is_one_line(tmp_path):
    result = run(["tlpipe", "issues"], tmp_path, check=False)
    assert result.returncode == 2  # a user error, as every stage and command exits
    assert result.stderr.strip().splitlines() == [
        "error: no label issues at metrics/analysis/label_issues.csv: run `dvc repro analyze` "
        "(or `make demo`) first"
    ]


def test_tlpipe_issues_prints_the_commands_for_a_folder_dataset(tmp_path):
    (tmp_path / "metrics/analysis").mkdir(parents=True)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/source.json").write_text(
        json.dumps({"dataset": "folder", "folder": "pics"})
    )
    with open(tmp_path / "metrics/analysis/label_issues.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["rank", "split", "row", "source", "given", "suggested", "label_quality"])
        writer.writerow([1, "val", 4, "cat/b.png", "cat", "dog", "0.020000"])
    result = run(["tlpipe", "issues", "--top", "5"], tmp_path)
    assert "  mv -n -- pics/cat/b.png pics/dog/" in result.stdout
    assert (tmp_path / "metrics/analysis/label_issues.csv").exists()  # nothing was moved


def test_folder_images_are_named_by_their_file_through_download_and_limit(tmp_path):
    from PIL import Image

    from tlpipe.analysis.tables import Origins
    from tlpipe.data.folders import write_folder
    from tlpipe.data.sources import limit_training

    colours = {"cat/a.png": 0, "cat/b.png": 40, "cat/e.png": 80, "dog/c.png": 120}
    colours |= {"dog/d.png": 160, "dog/f.png": 200}
    for name, colour in colours.items():
        (tmp_path / "pics" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), colour, np.uint8)).save(tmp_path / "pics" / name)
    (tmp_path / "pics/dog/broken.png").write_bytes(b"not a png")  # skipped: no row, no name
    out = tmp_path / "raw"
    assert write_folder(tmp_path / "pics", None, out) == ["cat", "dog"]
    files = json.loads((out / "files.json").read_text())
    assert files == ["cat/a.png", "cat/b.png", "cat/e.png", "dog/c.png", "dog/d.png", "dog/f.png"]
    limit_training(4, seed=0, out_dir=out)
    kept = json.loads((out / "files.json").read_text())
    pixels = np.load(out / "train_images.npy")[:, 0, 0, 0].tolist()
    by_colour = {colour: name for name, colour in colours.items()}
    assert len(kept) == 4
    assert [by_colour[p] for p in pixels] == kept  # rows and names still agree
    origins = Origins({"train": np.array([2, 0]), "test": np.array([1])}, kept, raw_test=False)
    assert origins.source("train", 0) == kept[2]
    assert origins.source("test", 0) == kept[1]  # carved from the folder's images too
    no_files = Origins({"test": np.array([7])}, None, raw_test=True)
    assert no_files.source("test", 0) == "test[7]"
