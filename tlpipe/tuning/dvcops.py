"""DVC from the tuning commands: which stages are out of date, and running DVC's command line in
a child process with this environment's `python3` first on PATH (the stages' commands use it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tlpipe.core.runtime import UserError, first_line

ALWAYS_RUN = frozenset({"check"})  # stages/check.py runs on every repro: never a reason to rerun


def stale_stages(target: str) -> list[str]:
    """The stages up to and including `target` whose inputs changed since their last run."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            changed = repo.status(targets=[target], with_deps=True)
    except DvcException as error:
        raise UserError(f"dvc status {target}: {first_line(error)}") from None
    return [name.rsplit(":", 1)[-1] for name in changed if name not in ALWAYS_RUN]


def run_dvc(args: list[str], *, capture: bool = False) -> subprocess.CompletedProcess:
    """`dvc ARGS` (through tlpipe.outputs.dvcrun), its output shown as it comes unless `capture`;
    a failure is one UserError naming the command."""
    from tlpipe.outputs.review import dvc_env

    command = [sys.executable, "-m", "tlpipe.outputs.dvcrun", *args]
    done = subprocess.run(command, env=dvc_env(), capture_output=capture, text=True)
    if done.returncode:
        tail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise UserError(f"`dvc {' '.join(args)}` failed{': ' + tail[0] if tail else ''}")
    return done


def metrics_files(pipeline: Path = Path("dvc.yaml")) -> list[Path]:
    """The metrics files dvc.yaml lists (its top-level `metrics:`), in its order."""
    import yaml

    return [Path(name) for name in yaml.safe_load(pipeline.read_text()).get("metrics", [])]


def flat_metrics(node: dict, prefix: str = "") -> dict[str, float]:
    """{"finetuned": {"accuracy": 0.9}} -> {"finetuned.accuracy": 0.9}: the numbers only."""
    flat: dict[str, float] = {}
    for name, value in node.items():
        if isinstance(value, dict):
            flat |= flat_metrics(value, f"{prefix}{name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{name}"] = float(value)
    return flat


def read_metric(metric: str) -> float:
    """The workspace's value of `metric` (KEY, or FILE:KEY) in the metrics files dvc.yaml lists;
    a UserError that names what exists when it is missing or ambiguous."""
    import json

    wanted_file, colon, key = metric.rpartition(":") if ":" in metric else ("", "", metric)
    files = [path for path in metrics_files() if not colon or str(path) == wanted_file]
    present = [path for path in files if path.is_file()]
    if not present:
        names = ", ".join(str(path) for path in files) or wanted_file
        raise UserError(
            f"--metric {metric}: no metrics yet ({names} missing): run `dvc repro` once first, "
            "the baseline the trials start from"
        )
    found = {path: flat_metrics(json.loads(path.read_text())) for path in present}
    holders = [path for path, values in found.items() if key in values]
    if len(holders) == 1:
        return found[holders[0]][key]
    if holders:
        options = ", ".join(f"{path}:{key}" for path in holders)
        raise UserError(f"--metric {metric}: in {len(holders)} files; give one of {options}")
    first = next(iter(found.values()))
    raise UserError(
        f"--metric {metric}: not a metric; expected a key of {', '.join(map(str, present))} "
        f"such as {', '.join(list(first)[:5])} (FILE:KEY where a key is in more than one)"
    )
