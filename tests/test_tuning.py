"""`tlpipe lr-find`: the sweep's arithmetic on constructed losses, its one-line refusals, and the
command end to end on a fresh tiny project (the head trained first, then the same bytes again)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import copy_project, run
from tests.project import commit_all, write_params
from tlpipe.tuning.lr_find import Sweep, diverged, smooth, suggestions, sweep_rates


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
