"""`tlpipe review`: a pull request's effect on the metrics, both sides run with one configuration.

One copy of the project holds two commits: the shipped params (base) and a branch that changes
`lr` (head, as a pull request would). The review runs both with the tiny offline overrides plus
`-S lr=1e-4`, which head's own change must take precedence over.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import (
    ALL_STAGES,
    ALWAYS_RUN,
    OFFLINE,
    REPO,
    TINY,
    VENV_BIN,
    commit_all,
    copy_project,
    run,
)
from tlpipe.outputs.review import demo_overrides

OVERRIDES = [*OFFLINE, *TINY, "-S", "lr=1e-4"]
BASE_LR, HEAD_LR = "1e-05", "3e-05"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in `text`: its rows of cells, header first, the |---| rule dropped."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-:"):
                tables[-1].append(cells)
        previous = line
    return tables


def section(markdown: str, title: str) -> list[list[str]]:
    """The table under the `#### title` heading."""
    text = markdown.split(f"#### {title}", 1)[1].split("####", 1)[0]
    (table,) = markdown_tables(text)
    return table


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> tuple[str, str]:
    """The review's Markdown (stdout) and DVC's output (stderr) for a branch that changes lr."""
    project = copy_project(tmp_path_factory.mktemp("review"))
    params = project / "params.yaml"
    text, changes = re.subn(r"^lr: .*$", f"lr: {HEAD_LR}", params.read_text(), flags=re.M)
    assert changes == 1
    base = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    run(["git", "checkout", "-q", "-b", "lower-lr"], project)
    params.write_text(text)
    commit_all(project, "Fine-tune at a higher lr")
    result = run(
        [str(VENV_BIN / "tlpipe"), "review", base, "lower-lr", *OVERRIDES], project, check=False
    )
    assert result.returncode == 0, result.output[-3000:]
    return result.stdout, result.stderr


@pytest.mark.slow
def test_both_metric_columns_hold_numbers(reviewed):
    header, *rows = section(reviewed[0], "Metrics")
    assert header[:2] == ["Path", "Metric"] and header[4] == "Change"
    assert header[2].startswith("base-") and header[3].startswith("head-")
    metrics = {row[1]: row for row in rows if row[0] == "metrics/evaluate.json"}
    assert {"head.accuracy", "finetuned.accuracy"} <= set(metrics)
    for row in rows:
        base, head, change = (float(cell) for cell in row[2:])
        assert change == pytest.approx(head - base, abs=1e-4)
    # Same configuration: the head model was trained once, with the same params, on both sides.
    assert metrics["head.accuracy"][2] == metrics["head.accuracy"][3]


@pytest.mark.slow
def test_params_table_lists_only_what_the_branch_changed(reviewed):
    rows = section(reviewed[0], "Params changed between base and head")[1:]
    assert [row[1:] for row in rows] == [["lr", BASE_LR, HEAD_LR]]
    assert "Head changes `lr`" in reviewed[0] and "`-S lr=1e-4` on neither side" in reviewed[0]
    # Each side fine-tuned at its own committed lr, not at the override's.
    assert f"at lr={BASE_LR}" in reviewed[1] and f"at lr={HEAD_LR}" in reviewed[1]
    assert "at lr=0.0001" not in reviewed[1]


@pytest.mark.slow
def test_head_reruns_only_the_stages_lr_reaches(reviewed):
    rows = section(reviewed[0], "Stages")[1:]
    base = {row[0]: row[1] for row in rows}
    head = {row[0]: row[2] for row in rows}
    assert set(base) == set(head) == ALL_STAGES
    assert set(base.values()) <= {"ran", "restored from the run cache"}
    # export reads every key that shapes the model (its card lists them), lr included.
    ran = {stage for stage, event in head.items() if event == "ran"}
    assert ran == ALWAYS_RUN | {"finetune", "evaluate", "analyze", "export"}
    assert reviewed[1].count("Running stage 'train'") == 1  # base only


def test_the_demo_overrides_are_those_make_demo_runs():
    """Read from the Makefile, not copied: what `make demo` would pass to `dvc exp run`."""
    overrides = demo_overrides(REPO)
    demo = run(["make", "-n", "--no-print-directory", "demo"], REPO).stdout
    (command,) = [
        line for line in demo.splitlines() if " -m tlpipe.outputs.dvcrun exp run " in line
    ]
    words = shlex.split(command)[5:]  # after `python -m tlpipe.outputs.dvcrun exp run`
    assert words == [word for override in overrides for word in ("-S", override)]
    assert {"data.dataset=digits", "backbone.weights=none"} <= set(overrides)  # offline


def test_an_unknown_revision_is_one_line(tmp_path):
    project = copy_project(tmp_path)
    result = run([str(VENV_BIN / "tlpipe"), "review", "no-such-branch"], project, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: base: no commit 'no-such-branch' in {project.resolve()}"
    ]
    assert result.stdout == ""
