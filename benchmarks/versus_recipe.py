"""The whole job against the notebook recipe (`--only recipe`).

In a copy of the project, `dvc exp run -f <settings> evaluate` runs download, prepare, features,
train, finetune and evaluate from scratch (export aside: the recipe exports nothing). Against it,
`python -m benchmarks.recipe` (benchmarks/recipe.py: seed 003's loop) on the same prepared images
and splits with the same settings, each in a fresh process so both pay Python's and TensorFlow's
start-up. The two alternate (pipeline first in odd rounds, recipe first in even ones). Where the
pipeline's time went: DVC before the first stage, each stage (from DVC's "Running stage" line to
its lock-file update, so DVC's hashing of the stage's outputs included), DVC after the last, and
the start-up of one Python process importing tlpipe, Keras and TensorFlow (each stage pays it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import Context, best_of, child_env
from benchmarks.table import Row
from tests.project import copy_project

# The Makefile's DEMO_PARAMS, and the book's configuration (150 px, block5 unfrozen)
DEMO = {
    "data.dataset": "digits",
    "backbone.weights": "none",
    "finetune.unfreeze_from": "block4_conv1",
    "lr": 1e-4,
}
BOOK = {
    "data.dataset": "digits",
    "backbone.weights": "none",
    "prepare.image_size": 150,
    "finetune.unfreeze_from": "block5_conv1",
}
# (settings, target ratio); patience = epochs so that neither side stops early (the seed never does)
CONFIGS = {
    "demo": (DEMO | {"train.patience": 30, "finetune.patience": 10}, 0.8),
    "book": (BOOK | {"finetune.epochs": 4, "train.patience": 30, "finetune.patience": 4}, 0.4),
}
QUICK = {
    "data.limit": 400,
    "train.epochs": 3,
    "train.patience": 3,
    "finetune.epochs": 2,
    "finetune.patience": 2,
}
STAGE_LINE = re.compile(r"Running stage '(\w+)'")


def settings_of(root: Path, changes: dict) -> dict:
    """The flat settings the recipe takes: the project's params with `changes`."""
    import yaml

    params, flat = yaml.safe_load((root / "params.yaml").read_text()), {}
    for key, value in params.items():
        for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
            flat[f"{key}.{sub}" if sub else key] = v
    return flat | changes


def run_pipeline(root: Path, changes: dict) -> dict:
    """`dvc exp run -f -S ... evaluate`: wall time, per-stage spans from DVC's output lines."""
    sets = [arg for key, value in changes.items() for arg in ("-S", f"{key}={value}")]
    command = [str(Path(sys.executable).parent / "dvc"), "exp", "run", "-f", *sets, "evaluate"]
    started, lines = time.perf_counter(), []
    with subprocess.Popen(
        command,
        cwd=root,
        env=child_env(PYTHONUNBUFFERED="1"),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit("dvc exp run failed:\n" + "\n".join(text for _, text in lines[-40:]))
    spans, current, first, last = {}, None, None, wall
    for at, text in lines:
        if match := STAGE_LINE.search(text):
            current, first = match.group(1), first if first is not None else at
            spans[current] = [at, at]
        elif current and "lock file" in text:
            spans[current][1], last = at, at
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "test_accuracy": round(metrics["finetuned"]["accuracy"], 4),
        "dvc_before_first_stage_s": round(first or 0.0, 1),
        "dvc_after_last_stage_s": round(wall - last, 1),
        "stages_s": {stage: round(b - a, 1) for stage, (a, b) in spans.items()},
    }


def run_recipe(root: Path, data: Path, settings: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.recipe", str(data), json.dumps(settings)],
        cwd=root,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"the recipe failed:\n{done.stderr[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        **json.loads(done.stdout.strip().splitlines()[-1]),
    }


def start_up_s() -> float:
    """One Python process importing tlpipe, Keras and TensorFlow, as each stage does: best of 2."""
    command = [sys.executable, "-c", "import tlpipe, keras, tensorflow"]
    return best_of({"start": lambda: subprocess.run(command, env=child_env(), check=True)}, 2)[
        "start"
    ]


def compare(ctx: Context, name: str, changes: dict, rounds: int) -> dict:
    root = copy_project(ctx.workdir / f"recipe-{name}")
    data = ctx.workdir / f"recipe-{name}-prepared"
    pipeline, recipe = [], []
    for index in range(rounds):
        order = ("pipeline", "recipe") if index % 2 == 0 else ("recipe", "pipeline")
        for side in order:
            if side == "pipeline":
                pipeline.append(run_pipeline(root, changes))
                if not data.exists():  # the recipe reads the same images and splits
                    shutil.copytree(root / "data" / "prepared", data)
            else:
                recipe.append(run_recipe(root, data, settings_of(root, changes)))
    best_p = min(pipeline, key=lambda r: r["wall_s"])
    best_r = min(recipe, key=lambda r: r["wall_s"])
    return {
        "settings": changes,
        "rounds": rounds,
        "pipeline": best_p,
        "recipe": best_r,
        "ratio": round(best_p["wall_s"] / best_r["wall_s"], 3),
    }


def run(ctx: Context, rounds: int = 1, book: dict | None = None) -> tuple[dict, list[Row]]:
    """`book`: overrides of the book configuration (--book-images, --book-finetune-epochs)."""
    result, rows = {"start_up_s": round(start_up_s(), 1)}, []
    configs = {"demo": CONFIGS["demo"]} if ctx.mode == "quick" else dict(CONFIGS)
    if "book" in configs and book:
        configs["book"] = (configs["book"][0] | book, configs["book"][1])
    for name, (changes, target) in configs.items():
        changes = changes | (QUICK if ctx.mode == "quick" else {})
        r = result[name] = compare(ctx, name, changes, rounds)
        met = "met" if r["ratio"] <= target else "missed"
        p, q = r["pipeline"], r["recipe"]
        rows.append(
            Row(
                f"{name}: whole job, dvc exp run / notebook recipe",
                f"{r['ratio']:.3f}x",
                f"wall {p['wall_s']:.0f} / {q['wall_s']:.0f} s (target <= {target}: {met}"
                f"{', quick sizes' if ctx.mode == 'quick' else ''})",
            )
        )
        rows.append(
            Row(
                f"{name}: test accuracy, pipeline / recipe",
                f"{p['test_accuracy']:.3f}/{q['test_accuracy']:.3f}",
                "fine-tuned model",
            )
        )
        where = ", ".join(f"{s} {t:.0f}" for s, t in p["stages_s"].items())
        rows.append(
            Row(
                f"{name}: where the pipeline's time went",
                "",
                f"DVC {p['dvc_before_first_stage_s']:.0f} + stages ({where}) + DVC "
                f"{p['dvc_after_last_stage_s']:.0f} s; start-up of each process "
                f"{result['start_up_s']:.1f} s; recipe steps {q['steps_s']}",
            )
        )
    return result, rows
