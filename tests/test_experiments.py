"""Review and sweeps: a queued learning-rate grid, then the commands a reviewer compares runs with.

One copy of the project: a tiny offline base run committed to git, then `dvc exp run --queue -S
lr=1e-5,1e-4` (two experiments) run from the queue. Queued experiments run in temporary clones that
see only git-tracked files, so the base run (dvc.lock, uncached metrics) is committed first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ALL_STAGES, ALWAYS_RUN, OFFLINE, TINY, copy_project, run, stages_that_ran

# Fine-tuning from block4 (as `make demo` does) so that lr visibly changes the fine-tuned model.
BASE = [*OFFLINE, *TINY, "-S", "finetune.unfreeze_from=block4_conv1"]
LRS = (1e-5, 1e-4)  # the base run has lr 1e-05 (params.yaml), so the first reproduces the base
COMMIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm"]
EVALUATE = "metrics/evaluate.json"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[float, str]]:
    """The project after the base run and the two queued experiments; {lr: experiment name}."""
    project = copy_project(tmp_path_factory.mktemp("experiments"))
    assert stages_that_ran(run(["dvc", "exp", "run", *BASE], project).output) == ALL_STAGES
    run(["git", "add", "-A"], project)
    run([*COMMIT, "base run"], project)

    queued = run(
        ["dvc", "exp", "run", "--queue", "-S", "lr=" + ",".join(f"{lr:g}" for lr in LRS)], project
    ).output
    assert queued.count("Queued experiment") == 2, queued
    try:
        run(
            ["dvc", "exp", "run", "--run-all", "-j", "1"], project
        )  # runs the queue, returns when it is empty
    finally:
        run(["dvc", "queue", "stop"], project, check=False)  # no idle worker left behind
    names = {
        float(exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["lr"]): exp["name"]
        for exp in experiments(project)
    }
    assert set(names) == set(LRS), names
    return project, names


def experiments(project: Path) -> list[dict]:
    """The experiments of HEAD as `dvc exp show --json` gives them."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    (baseline,) = [row for row in rows if row["rev"] == head]
    return baseline["experiments"] or []


def markdown_rows(table: str) -> list[list[str]]:
    """A Markdown table's cells, header first, the |---| rule dropped."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if not set("".join(row)) <= set("-:")]


@pytest.mark.slow
def test_both_experiments_finish_with_metrics(sweep):
    project, _names = sweep
    for exp in experiments(project):
        assert exp["executor"]["state"] == "success", exp["name"]
        evaluate = exp["revs"][0]["data"]["metrics"][EVALUATE]["data"]
        assert 0.0 <= evaluate["finetuned"]["accuracy"] <= 1.0
        assert {"accuracy", "loss", "macro_f1"} <= set(evaluate["finetuned"])
        assert {"accuracy", "loss"} <= set(evaluate["head"])


@pytest.mark.slow
def test_a_learning_rate_sweep_never_reruns_features(sweep):
    project, names = sweep
    ran = {
        lr: stages_that_ran(run(["dvc", "queue", "logs", name], project).output)
        for lr, name in names.items()
    }
    # same params as the committed base: everything but `check` comes from the cache
    assert ran[1e-5] == ALWAYS_RUN
    assert ran[1e-4] == ALWAYS_RUN | {"finetune", "evaluate", "analyze", "export"}
    # And the features the experiments were fine-tuned on are the base's, byte for byte.
    base_features = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["features"]["outs"]
    for exp in experiments(project):
        lock = yaml.safe_load(
            run(["git", "show", f"{exp['revs'][0]['rev']}:dvc.lock"], project).stdout
        )
        assert lock["stages"]["features"]["outs"] == base_features, exp["name"]


@pytest.mark.slow
def test_exp_show_ranks_by_finetuned_accuracy(sweep):
    project, names = sweep
    table = run(
        ["dvc", "exp", "show", "--md", "--sort-by", "finetuned.accuracy", "--sort-order", "desc"],
        project,
    ).stdout
    header, *rows = markdown_rows(table)
    column = header.index("finetuned.accuracy")
    ranked = [
        (next(n for n in names.values() if f"[{n}]" in row[0]), float(row[column]))
        for row in rows
        if any(f"[{n}]" in row[0] for n in names.values())
    ]
    assert sorted(name for name, _ in ranked) == sorted(names.values())
    accuracies = [accuracy for _, accuracy in ranked]
    assert accuracies == sorted(accuracies, reverse=True)


@pytest.mark.slow
def test_metrics_and_params_diff_between_experiments_are_markdown_tables(sweep):
    project, names = sweep
    slow, fast = names[1e-5], names[1e-4]

    metrics = markdown_rows(run(["dvc", "metrics", "diff", slow, fast, "--md"], project).stdout)
    assert metrics[0] == ["Path", "Metric", slow, fast, "Change"]
    changed = {(path, metric) for path, metric, *_ in metrics[1:]}
    assert (EVALUATE, "finetuned.loss") in changed
    # and the exported files of the other model: their accuracies, and latencies (timings)
    assert {path for path, _ in changed} <= {
        EVALUATE,
        "metrics/finetune/metrics.json",
        "metrics/export.json",
    }
    # Only fine-tuning differs: the head and its training curves are the same in both.
    assert not any(metric.startswith("head.") for _, metric in changed)

    every = markdown_rows(
        run(["dvc", "metrics", "diff", slow, fast, "--md", "--all"], project).stdout
    )
    listed = {(path, metric) for path, metric, *_ in every[1:]}
    assert {(EVALUATE, f"finetuned.{key}") for key in ("accuracy", "loss", "macro_f1")} <= listed
    assert {(EVALUATE, "head.accuracy"), ("metrics/train/metrics.json", "eval.accuracy")} <= listed

    params = markdown_rows(run(["dvc", "params", "diff", slow, fast, "--md"], project).stdout)
    assert params == [["Path", "Param", slow, fast], ["params.yaml", "lr", "1e-05", "0.0001"]]


@pytest.mark.slow
def test_plots_render_curves_and_confusion_matrix(sweep, tmp_path):
    project, names = sweep
    revs = [names[1e-5], names[1e-4]]
    plots = json.loads(run(["dvc", "plots", "diff", *revs, "--json"], project).stdout)["data"]
    curves = [
        f"{part} - {metric}"
        for part in ("Dense head", "Fine-tuning")
        for metric in ("loss", "accuracy")
    ]
    for title in curves:
        (plot,) = plots[title]
        assert plot["type"] == "vega" and plot["revisions"] == revs
        files = {row["filename"] for row in plot["content"]["data"]["values"]}
        assert {"train/loss.tsv", "eval/loss.tsv"} == files or {
            "train/accuracy.tsv",
            "eval/accuracy.tsv",
        } == files
    (confusion,) = plots["Test confusion matrix"]
    assert confusion["revisions"] == revs
    assert {"actual", "predicted", "rev"} <= set(confusion["content"]["data"]["values"][0])
    # each shown once: the curves and the matrix as Vega only; the pictures are the samples grid,
    # the reliability diagram and analyze's four grids, one per revision each
    samples = "metrics/report/samples.png"
    pictures = {
        samples,
        "metrics/report/reliability.png",
        *(
            f"metrics/analysis/{name}.png"
            for name in ("top_losses", "gradcam_mistakes", "gradcam_classes", "label_issues")
        ),
    }
    assert set(plots) == {*curves, "Test confusion matrix", *pictures}
    for picture in pictures:
        assert sorted(image["revisions"][0] for image in plots[picture]) == sorted(revs)
        assert all(image["type"] == "image" for image in plots[picture])

    run(["dvc", "plots", "diff", *revs, "-o", str(tmp_path / "html")], project)
    html = (tmp_path / "html" / "index.html").read_text()
    for title in [*curves, "Test confusion matrix"]:
        assert title in html
    assert re.search(r"metrics_report_samples\.png", html)
