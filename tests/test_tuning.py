"""`tlpipe lr-find` and `tlpipe tune`.

lr-find: the sweep's arithmetic on constructed losses, its one-line refusals, and the command end
to end on a fresh tiny project (the head trained first, then the same bytes again). tune: ranges,
metrics and the study checked on constructed cases, the refusals before any trial, and a search
end to end whose trials are DVC experiments, interrupted and continued."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.background import Running, wait_for
from tests.helpers import SHIPPED_PARAMS_DICT, copy_project, run
from tests.project import commit_all, write_params
from tlpipe.core.paths import TUNE_STUDY_FILE as STUDY
from tlpipe.core.runtime import UserError
from tlpipe.tuning.dvcops import read_metric
from tlpipe.tuning.lr_find import (
    WEAK_FALL,
    Sweep,
    diverged,
    loss_fall,
    smooth,
    suggestions,
    sweep_rates,
)
from tlpipe.tuning.search import Search, open_study, trials_table
from tlpipe.tuning.space import Range, check_space, parse_range, set_flags, tunable_keys


def test_sweep_rates_are_geometric_from_start_to_end():
    rates = sweep_rates(1e-6, 1e-2, 5)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2)
    np.testing.assert_allclose(rates[1:] / rates[:-1], 10.0)


def test_smooth_is_bias_corrected():
    """A constant loss stays that constant from the first step (no pull towards zero)."""
    np.testing.assert_allclose(smooth(np.full(30, 2.5)), 2.5)
    assert smooth(np.array([1.0, 3.0]))[1] == pytest.approx(
        (0.98 * 0.02 * 1 + 0.02 * 3) / (1 - 0.98**2)
    )


def test_diverged_at_four_times_the_minimum_or_nan():
    assert not diverged(np.array([2.0, 1.0, 3.9]))
    assert diverged(np.array([2.0, 1.0, 4.1]))
    assert diverged(np.array([2.0, 1.0, np.nan]))


def test_suggestions_find_the_steepest_fall_and_the_minimum():
    """A loss flat at 2, falling fastest around lr 1e-3, lowest at 1e-1, then rising."""
    rates = sweep_rates(1e-6, 1.0, 61)
    x = np.log10(rates)
    curve = 2 - 1.5 / (1 + np.exp(-4 * (x + 3))) + np.where(x > -1, 3 * (x + 1) ** 2, 0)
    suggested = suggestions(Sweep(rates, curve, curve))
    assert suggested["steepest"] == pytest.approx(1e-3, rel=0.3)
    assert suggested["minimum_over_10"] == pytest.approx(1e-2, rel=0.3)
    assert loss_fall(Sweep(rates, curve, curve)) == pytest.approx(0.75, abs=0.02)


def test_a_loss_that_only_wobbles_or_rises_is_a_weak_fall():
    """The demo's shape: a trained head, the loss flat within noise, then rising with the rate."""
    rates = sweep_rates(1e-7, 1.0, 60)
    wobble = 1.17 + 0.01 * np.sin(np.arange(60)) + np.where(rates > 1e-5, np.log10(rates) + 5, 0)
    assert loss_fall(Sweep(rates, wobble, wobble)) < WEAK_FALL
    rising = np.linspace(1.0, 3.0, 60)
    assert loss_fall(Sweep(rates, rising, rising)) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "0"], "error: --start and --end: expected 0 < start < end; got 0.0, 1.0"),
        (["--start", "1", "--end", "0.1"], "expected 0 < start < end; got 1.0, 0.1"),
        (["--steps", "3"], "error: --steps: expected at least 10; got 3"),
    ],
)
def test_bad_sweep_is_one_line(tmp_path: Path, args: list[str], message: str):
    result = run(["tlpipe", "lr-find", *args], tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


# The offline demo's settings, as small as still trains.
TINY_DEMO = {
    "data.dataset": "digits",
    "data.limit": 400,
    "backbone.weights": "none",
    "train.epochs": 3,
    "finetune.unfreeze_from": "block4_conv1",
}


@pytest.mark.slow
def test_lr_find_trains_the_missing_head_then_repeats_itself_byte_for_byte(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    write_params(project, TINY_DEMO)
    commit_all(project, "tiny offline params")

    first = run(["tlpipe", "lr-find", "--steps", "30"], project)
    assert "models/head.keras is missing: running `dvc repro train` first" in first.stdout
    assert "Running stage 'train'" in first.output
    table = project / "metrics/lr_find/lr_find.tsv"
    rows = table.read_text().splitlines()
    assert rows[0] == "step\tlr\tloss\tsmoothed_loss"
    assert 1 < len(rows) <= 31  # a header and at most one row per step (it stops on divergence)
    summary = json.loads((project / "metrics/lr_find/lr_find.json").read_text())
    assert summary["steps_run"] == len(rows) - 1
    assert 1e-7 <= summary["steepest"] <= 1.0
    assert first.stdout.strip().splitlines()[-1] == f"dvc exp run -S lr={summary['steepest']:.2g}"
    assert (project / "metrics/lr_find/lr_find.png").stat().st_size > 0

    before = table.read_bytes()
    second = run(["tlpipe", "lr-find", "--steps", "30"], project)
    assert "models/head.keras is up to date" in second.stdout
    assert "Running stage" not in second.output
    assert table.read_bytes() == before  # seeded: same inputs, same losses


# --- tlpipe tune ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr=log-uniform:1e-5,1e-3", Range("lr", "log-uniform", (1e-5, 1e-3))),
        ("train.dropout=uniform:0.1,0.5", Range("train.dropout", "uniform", (0.1, 0.5))),
        ("train.units=int:64,512", Range("train.units", "int", (64, 512))),
        (
            "finetune.unfreeze_from=choice:block4_conv1,block5_conv1",
            Range("finetune.unfreeze_from", "choice", ("block4_conv1", "block5_conv1")),
        ),
        ("finetune.augment=choice:true,false", Range("finetune.augment", "choice", (True, False))),
    ],
)
def test_a_range_is_read_from_its_text(text: str, expected: Range):
    assert parse_range(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr:1e-5", "expected KEY=KIND:ARGS with KIND one of log-uniform, uniform, int, choice"),
        ("lr=normal:0,1", "expected KEY=KIND:ARGS"),
        ("learning_rate=uniform:0.1,0.2", "'learning_rate' is not a params.yaml key"),
        ("tune.trials=int:1,5", "'tune.trials' is not a params.yaml key a search can set"),
        ("lr=log-uniform:0,1e-3", "expected 0 < LOW < HIGH; got 0.0, 0.001"),
        ("lr=uniform:1e-3,1e-5", "expected LOW < HIGH; got 0.001, 1e-05"),
        ("train.units=int:64,big", "int needs two int ends, LOW,HIGH"),
        ("finetune.augment=choice:true", "choice needs two or more values"),
    ],
)
def test_a_bad_range_names_itself_and_what_is_allowed(text: str, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_range(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr=uniform:0.5,2", "--param lr: 2.0 is not a value params.yaml accepts: lr: got 2.0"),
        ("finetune.unfreeze_from=choice:block5_conv1,fc1", "'fc1' is not a value params.yaml"),
    ],
)
def test_a_range_reaching_a_value_params_yaml_refuses_is_refused(text: str, message: str):
    with pytest.raises(UserError, match=re.escape(message)):
        check_space([parse_range(text)], SHIPPED_PARAMS_DICT)


def test_a_key_searched_twice_or_nothing_searched_is_refused():
    twice = [parse_range("lr=uniform:1e-5,1e-4"), parse_range("lr=log-uniform:1e-5,1e-4")]
    with pytest.raises(UserError, match="lr given more than once"):
        check_space(twice, SHIPPED_PARAMS_DICT)
    with pytest.raises(UserError, match="nothing to search"):
        check_space([], SHIPPED_PARAMS_DICT)


def test_the_shipped_space_is_valid_and_search_settings_are_not_tunable():
    space = [parse_range(text) for text in SHIPPED_PARAMS_DICT["tune"]["space"]]
    check_space(space, SHIPPED_PARAMS_DICT)
    keys = tunable_keys()
    assert {"lr", "seed", "train.units", "finetune.unfreeze_from"} <= set(keys)
    assert not [key for key in keys if key.startswith(("tune", "cluster"))]


def test_set_flags_write_what_yaml_reads_back_as_the_same_value():
    values = {"lr": 1.6986704535055072e-05, "train.units": 128, "finetune.augment": True}
    values["finetune.unfreeze_from"] = "block4_conv1"
    flags = set_flags(values)
    assert flags[::2] == ["-S"] * len(values)
    read = dict(flag.split("=", 1) for flag in flags[1::2])
    assert {key: yaml.safe_load(text) for key, text in read.items()} == values


@pytest.fixture
def metrics_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a dvc.yaml listing three metrics files, two of them written."""
    monkeypatch.chdir(tmp_path)
    files = ["metrics/evaluate.json", "metrics/train/metrics.json", "metrics/finetune/metrics.json"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {}, "metrics": files}))
    (tmp_path / "metrics/train").mkdir(parents=True)
    evaluate = {"finetuned": {"accuracy": 0.9, "loss": 0.3}, "head": {"accuracy": 0.8}}
    (tmp_path / files[0]).write_text(json.dumps(evaluate))
    (tmp_path / files[1]).write_text(json.dumps({"eval": {"accuracy": 0.7}, "step": 2}))
    return tmp_path


def test_a_metric_is_read_by_key_or_by_file_and_key(metrics_project: Path):
    assert read_metric("finetuned.accuracy") == 0.9
    assert read_metric("metrics/train/metrics.json:eval.accuracy") == 0.7
    assert read_metric("step") == 2.0


def test_a_metric_that_is_missing_or_ambiguous_names_what_exists(metrics_project: Path):
    with pytest.raises(UserError, match=r"not a metric; expected a key of metrics/evaluate.json"):
        read_metric("finetuned.acc")
    (metrics_project / "metrics/finetune").mkdir()
    (metrics_project / "metrics/finetune/metrics.json").write_text('{"eval": {"accuracy": 0.6}}')
    with pytest.raises(UserError, match=re.escape("give one of metrics/train/metrics.json:eval")):
        read_metric("eval.accuracy")
    for path in (metrics_project / "metrics").rglob("*.json"):
        path.unlink()
    with pytest.raises(UserError, match=r"no metrics yet .*run `dvc repro` once first"):
        read_metric("finetuned.accuracy")


def search_of(metric: str = "finetuned.accuracy", direction: str = "maximize") -> Search:
    space = [parse_range("lr=log-uniform:1e-5,1e-3")]
    return Search(space, trials=1, startup_trials=3, metric=metric, direction=direction, seed=0)


def test_a_study_continues_with_new_points_and_fails_trials_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    study = open_study(search_of())
    first = study.ask()
    first_lr = search_of().space[0].suggest(first)
    study.tell(first, 0.5)
    left_running = study.ask()  # as a killed `tlpipe tune` leaves its trial
    search_of().space[0].suggest(left_running)

    study = open_study(search_of())  # the next run
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[0].value == 0.5
    assert search_of().space[0].suggest(study.ask()) != first_lr  # seeded with seed + 2, not 0
    another = re.escape("tune/study.db is a study of finetuned.accuracy (maximize)")
    with pytest.raises(UserError, match=another):
        open_study(search_of(metric="finetuned.loss", direction="minimize"))


def test_the_trials_table_puts_the_best_first_and_failures_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    study = open_study(search_of())
    for value in (0.5, 0.9, None, 0.7):
        trial = study.ask()
        search_of().space[0].suggest(trial)
        trial.set_user_attr("experiment", f"exp-{trial.number}")
        study.tell(trial, value, state=None if value is not None else TrialState.FAIL)
    rows = trials_table(study, search_of()).splitlines()
    assert rows[0] == "| trial | experiment | finetuned.accuracy | lr |"
    assert [row.split(" | ")[1:3] for row in rows[2:]] == [
        ["exp-1", "0.9000"],
        ["exp-3", "0.7000"],
        ["exp-0", "0.5000"],
        ["exp-2", "FAIL"],
    ]


@pytest.fixture(scope="module")
def tune_refusals_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("refusals"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "lr=uniform:1e-3"], "error: --param 'lr=uniform:1e-3': uniform needs two"),
        (["--param", "finetune.epoch=int:1,3"], "'finetune.epoch' is not a params.yaml key"),
        (["--param", "lr=uniform:0.5,2"], "error: --param lr: 2.0 is not a value params.yaml"),
        (["--trials", "0"], "error: --trials: expected at least 1; got 0"),
        (
            ["--metric", "finetuned.accuracy"],
            "no metrics yet (metrics/evaluate.json, metrics/train",
        ),
    ],
)
def test_tune_refuses_bad_input_in_one_line_before_any_trial(
    tune_refusals_project: Path, args: list[str], message: str
):
    result = run(["tlpipe", "tune", *args], tune_refusals_project, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tune_refusals_project / "tune").exists()  # no study was opened


TUNE_LR = ["--param", "lr=log-uniform:1e-5,1e-3"]


def experiments(project: Path) -> list[str]:
    return sorted(run(["dvc", "exp", "ls", "--name-only"], project).stdout.split())


@pytest.mark.slow
def test_tune_trials_are_dvc_experiments_and_an_interrupted_study_continues(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    write_params(project, {**TINY_DEMO, "finetune.epochs": 2, "analyze.folds": 2})
    commit_all(project, "tiny offline params")
    run(["dvc", "repro"], project)
    commit_all(project, "baseline results")

    searched = run(["tlpipe", "tune", "--trials", "2", *TUNE_LR], project)
    names = experiments(project)
    assert len(names) == 2 and all(name.startswith("tune-") for name in names)
    assert searched.output.count("Stage 'train' didn't change, skipping") == 2  # only lr's stages
    assert "| trial | experiment | finetuned.accuracy | lr |" in searched.stdout
    best = searched.stdout.strip().splitlines()[-1].removeprefix("dvc exp apply ")
    assert best in names

    with Running(["tlpipe", "tune", "--trials", "1", *TUNE_LR], project, own_group=True) as tune:
        # The stage's own first line: a Ctrl-C while its Python is still starting lands in the
        # interpreter's site import, which no code of the stage can handle.
        wait_for(lambda: "finetune: training" in tune.output, tune, "a trial's finetune")
        tune.interrupt()
        assert tune.wait(timeout=120) == 130
    assert "interrupted: every finished trial is in tune/study.db" in tune.output
    assert "Traceback" not in tune.output, tune.output[-3000:]

    continued = run(["tlpipe", "tune", "--trials", "1", *TUNE_LR], project)
    assert "continuing a study of 3" in continued.stdout
    assert "trial 2 never finished (interrupted): marked failed" in continued.stdout
    study = optuna.load_study(study_name="tlpipe", storage="sqlite:///" + str(project / STUDY))
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 2 + ["FAIL", "COMPLETE"]
    assert len(experiments(project)) == 3  # the interrupted trial saved no experiment
    rates = [trial.params["lr"] for trial in study.trials]
    assert len(set(rates)) == 4  # the continued study drew a new point

    run(["dvc", "exp", "apply", study.best_trial.user_attrs["experiment"]], project)
    applied = yaml.safe_load((project / "params.yaml").read_text())["lr"]
    assert float(applied) == pytest.approx(study.best_trial.params["lr"])
