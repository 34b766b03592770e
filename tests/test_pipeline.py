"""End to end: the offline demo through DVC in a throw-away copy of the repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import (
    ALL_STAGES,
    ALWAYS_RUN,
    UP_TO_DATE,
    VENV_BIN,
    copy_project,
    lock_without_timings,
    run,
    stages_that_ran,
    timed_outputs_without_timings,
)

DEMO_EXTRA = "-S train.epochs=10 -S finetune.epochs=6"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.mark.slow
def test_demo_then_lr_experiment_reruns_only_finetune_and_evaluate(project: Path):
    venv = VENV_BIN.parent
    demo = run(
        [
            "make",
            "--no-print-directory",
            f"VENV={venv}",
            "-o",
            f"{venv}/.installed",
            "demo",
            f"DEMO_EXTRA={DEMO_EXTRA}",
        ],
        project,
    ).output
    assert stages_that_ran(demo) == ALL_STAGES
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"head", "finetuned"}
    assert {"accuracy", "loss"} <= set(metrics["head"])
    assert {"accuracy", "loss", "macro_f1"} <= set(metrics["finetuned"])
    assert metrics["finetuned"]["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert "finetuned.accuracy" in demo  # the demo prints the test accuracy
    assert_report(project)
    assert_calibration(project)
    assert_analysis(project)

    # Nothing changed: nothing runs but `check`.
    assert stages_that_ran(run(["dvc", "repro"], project).output) == ALWAYS_RUN

    # A new fine-tuning learning rate touches finetune, evaluate and export only; lr arrives as a
    # float.
    tuned = run(["dvc", "exp", "run", "-S", "lr=1e-5"], project).output
    assert stages_that_ran(tuned) == ALWAYS_RUN | {"finetune", "evaluate", "analyze", "export"}
    assert re.search(r"^lr: 1e-05$", (project / "params.yaml").read_text(), re.MULTILINE)
    assert "at lr=1e-05" in tuned
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == UP_TO_DATE

    # Same params, everything recomputed: the same bytes, but for the exported files' latencies.
    before = (project / "metrics/evaluate.json").read_bytes(), lock_without_timings(project)
    timed = timed_outputs_without_timings(project)
    forced = run(["dvc", "repro", "--force"], project).output
    assert stages_that_ran(forced) == ALL_STAGES
    assert (project / "metrics/evaluate.json").read_bytes() == before[0]
    assert lock_without_timings(project) == before[1]
    assert timed_outputs_without_timings(project) == timed


def assert_report(project: Path) -> None:
    """evaluate's report: per-class table with class names, confusion rows, the samples PNG."""
    from PIL import Image

    classes = json.loads((project / "data/prepared/classes.json").read_text())
    per_class = json.loads((project / "metrics/report/per_class.json").read_text())
    assert list(per_class) == classes == [str(d) for d in range(10)]
    assert all(
        {"precision", "recall", "f1-score", "support"} <= set(row) for row in per_class.values()
    )
    n_test = sum(int(row["support"]) for row in per_class.values())
    rows = (project / "metrics/report/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == n_test + 1
    assert all(cell in classes for row in rows[1:] for cell in row.split(","))
    table = (project / "metrics/report/per_class.md").read_text()
    assert all(f"| {name} |" in table for name in classes)
    with Image.open(project / "metrics/report/samples.png") as image:
        assert image.format == "PNG"
    info = json.loads((project / "models/model.json").read_text())
    assert info == {
        "backbone": "vgg16",
        "image_size": 32,
        "classes": classes,
        "temperature": info["temperature"],  # checked in assert_calibration
    }


def assert_calibration(project: Path) -> None:
    """The saved model ends in the temperature fitted on val, which moves no test image's class."""
    import numpy as np
    from PIL import Image

    from tlpipe.compute.archives import load_model
    from tlpipe.compute.temperature import TemperatureScaling, without_temperature

    temperature = json.loads((project / "models/model.json").read_text())["temperature"]
    finetuned = json.loads((project / "metrics/evaluate.json").read_text())["finetuned"]
    assert temperature > 0 and finetuned["temperature"] == temperature
    assert 0 <= finetuned["ece"] <= 1 and 0 <= finetuned["ece_uncalibrated"] <= 1
    model = load_model(project / "models/model.keras")
    assert isinstance(model.layers[-1], TemperatureScaling)
    assert model.layers[-1].temperature == temperature
    images = np.load(project / "data/prepared/test_x.npy")
    calibrated = model.predict(images, verbose=0)
    trained = without_temperature(model).predict(images, verbose=0)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), trained.argmax(axis=1))
    with Image.open(project / "metrics/report/reliability.png") as picture:
        assert picture.format == "PNG"


def assert_analysis(project: Path) -> None:
    """analyze's files: the headline numbers, each table with its header, `tlpipe issues`."""
    summary = json.loads((project / "metrics/analysis/summary.json").read_text())
    assert summary["classes"] == 10
    assert summary["leaks"] == {"train_test": 0, "train_val": 0, "val_test": 0}  # digits: none
    assert set(summary["balance"]) == {"train", "val", "test"}
    assert 1.0 <= summary["imbalance_ratio"] < 1.2  # digits' classes are about equal
    issues = (project / "metrics/analysis/label_issues.csv").read_text().splitlines()
    assert issues[0] == "rank,split,row,source,given,suggested,label_quality"
    assert len(issues) == summary["label_issues"] + 1
    top = (project / "metrics/analysis/top_losses.csv").read_text().splitlines()
    assert len(top) == 24 + 1  # analyze.top_losses
    for name in ("top_losses", "gradcam_mistakes", "gradcam_classes", "label_issues"):
        assert (project / f"metrics/analysis/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Most confused" in (project / "metrics/analysis/README.md").read_text()
    listed = run(["tlpipe", "issues", "--top", "3"], project).stdout
    assert listed.startswith("rank  split") and "label issues, most likely first" in listed
