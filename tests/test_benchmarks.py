"""The benchmark's harness, table and notebook recipe, small and fast (the full runs are in
benchmarks/RESULTS.md)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import recipe
from benchmarks.features import taps_on_pixels
from benchmarks.harness import best_of
from benchmarks.run import parse_args
from benchmarks.table import EMULATED, bfloat16_note
from tests.project import write_prepared


def test_best_of_alternates_and_keeps_the_shortest() -> None:
    calls: list[str] = []
    times = best_of({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3)
    assert calls == ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_taps_on_pixels_leaves_out_padding() -> None:
    # a 3-wide "same" kernel on 2 positions: each position sees 2 real pixels, not 3
    assert taps_on_pixels(2, 3) == 4
    assert taps_on_pixels(4, 3) == 3 * 4 - 2
    assert taps_on_pixels(1, 3) == 1


def test_bfloat16_rows_say_when_emulated() -> None:
    assert bfloat16_note("ratio", native=True) == "ratio"
    assert bfloat16_note("ratio", native=False).startswith(EMULATED)


def test_only_picks_studies_and_refuses_unknown_ones() -> None:
    assert parse_args(["--quick", "--only", "features,memory"]).only == ["features", "memory"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "features,nonsense"])


def test_recipe_runs_the_seed_loop_on_prepared_arrays(tmp_path) -> None:
    write_prepared(tmp_path, {"train": 24, "val": 8, "test": 8}, 32, classes=2, seed=1)
    folder = tmp_path / "data" / "prepared"
    x, y = recipe.load_split(folder, "train")
    assert x.shape == (24, 32, 32, 3) and x.dtype == np.float32 and y.shape == (24, 2)
    settings = {
        "seed": 1,
        "lr": 1e-4,
        "train.units": 8,
        "train.dropout": 0.5,
        "train.lr": 1e-3,
        "train.epochs": 1,
        "train.batch_size": 8,
        "finetune.unfreeze_from": "block5_conv1",
        "finetune.epochs": 1,
        "finetune.batch_size": 8,
        "evaluate.batch_size": 8,
    }
    result = recipe.recipe(folder, settings)
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert set(result["steps_s"]) == {
        "load_and_build_s",
        "predict_s",
        "head_s",
        "finetune_s",
        "evaluate_s",
    }


def test_recipe_unfreezes_from_the_named_layer_on() -> None:
    import keras

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    recipe.unfreeze(base, "block5_conv1")
    trainable = [layer.name for layer in base.layers if layer.trainable]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]
    features = recipe.extract_features(base, np.zeros((45, 32, 32, 3), np.float32))
    assert features.shape == (45, 1, 1, 512)  # 45 images: two full batches of 20 and one of 5


def test_analysis_scores_count_only_the_flips_analyze_can_see(tmp_path) -> None:
    from benchmarks.analysis import LEAKS, scores

    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    np.save(prepared / "train_index.npy", np.array([10, 11, 12, 13]))
    np.save(prepared / "val_index.npy", np.array([20, 21]))
    analysis = tmp_path / "metrics/analysis"
    analysis.mkdir(parents=True)
    (analysis / "label_issues.csv").write_text(
        "rank,split,row,source,given,suggested,label_quality\n"
        "1,train,1,train[11],a,b,0.1\n2,val,0,train[20],a,b,0.2\n3,train,3,train[13],a,b,0.3\n"
    )
    (analysis / "duplicates.csv").write_text(
        "kind,similarity,split_a,row_a,source_a,split_b,row_b,source_b\n"
        "exact,1.0,train,2,train[12],test,5,train[40]\nnear,0.99,val,1,train[21],test,6,t\n"
    )
    # raw rows 11, 20 and 12 flipped (12 is overwritten by a leak, 99 went to the test split)
    result = scores(tmp_path, flipped={11, 20, 12, 99}, leaked={5, 7}, overwritten={2})
    assert result["flipped_checked"] == 2  # train row 1 (raw 11) and val row 0 (raw 20)
    assert result["issues_found"] == 3
    assert result["issue_recall"] == 1.0
    assert result["issue_precision"] == round(2 / 3, 3)
    assert result["leak_recall"] == round(1 / LEAKS, 3)  # test row 5 of {5, 7}; val pairs aside
    assert result["false_leaks"] == 0
