"""`tlpipe review BASE [HEAD]`: the pipeline's metrics on two commits, computed with the same
configuration, as the Markdown a pull request shows (.github/workflows/review.yml posts it).

Each commit runs with the params it holds plus the same overrides (by default the offline demo's,
read from the Makefile). A key the PR itself changes keeps its committed value on both sides, so
the comparison is exactly the PR's change. Both runs happen in one throw-away clone (in
`.dvc/tmp/`) that shares this repository's DVC cache, and so its run cache:

1. base: `dvc exp run` on the base commit; stages seen before with the same code, params and
   inputs (`make demo` here, an earlier review) are restored from the run cache instead of run.
   (DVC keeps no run-cache entry for a stage with an uncached output that is neither a metric nor
   a plot, as train, finetune and evaluate have in metrics/: those run on this side every time.)
2. head: the head commit is checked out over the base run's dvc.lock and outputs, and
   `dvc exp run` again: DVC reruns only the stages whose code, params or inputs the PR changed.
3. `dvc metrics diff --md --all` between the two runs, `dvc params diff --md` between the two
   commits (what the PR changed, not the overrides), and which stages ran on each side.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe.core.paths import PARAMS_FILE
from tlpipe.core.runtime import UserError

DEMO_PARAMS_TARGET = "demo-params"  # the Makefile target that prints the demo's overrides
STAGE_EVENTS = {
    "ran": re.compile(r"^Running stage '([^']+)':", re.MULTILINE),
    "restored from the run cache": re.compile(
        r"^Stage '([^']+)' is cached - skipping run", re.MULTILINE
    ),
    "unchanged": re.compile(r"^Stage '([^']+)' didn't change, skipping", re.MULTILINE),
}


@dataclass
class Side:
    """One side of the comparison: a commit and the experiment run on it."""

    label: str  # "base" or "head"
    commit: str  # full hash
    short: str  # abbreviated hash, as the tables show it
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> one of STAGE_EVENTS

    @property
    def experiment(self) -> str:
        return f"{self.label}-{self.short}"


def git(args: Sequence[str], cwd: Path) -> str:
    """A git command's output; a failure becomes one line."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"git {' '.join(args)}: {reason}")
    return result.stdout.strip()


def dvc_env() -> dict[str, str]:
    """The environment for DVC: this interpreter's folder first on PATH, so that the stages'
    `python -m stages.<name>` runs with the interpreter running this review."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(args: Sequence[str], cwd: Path, *, stream: bool = False) -> str:
    """Run DVC with this interpreter; return its output. With `stream`, also show it on stderr as
    it comes (the pipeline runs take minutes). A failure becomes one line."""
    command = [sys.executable, "-m", "dvc", *args]
    if not stream:
        result = subprocess.run(command, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
        output, returncode = result.stdout, result.returncode
        if returncode != 0:
            sys.stderr.write(result.stderr)
    else:
        lines = []
        with subprocess.Popen(
            command,
            cwd=cwd,
            env=dvc_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            for line in process.stdout:
                sys.stderr.write(line)
                lines.append(line)
        output, returncode = "".join(lines), process.returncode
    if returncode != 0:
        raise UserError(f"dvc {' '.join(args)} failed (exit status {returncode}; output above)")
    return output


def demo_overrides(root: Path) -> list[str]:
    """The `key=value` overrides `make demo` runs with, as the Makefile defines them."""
    try:
        result = subprocess.run(
            ["make", "--no-print-directory", "-s", DEMO_PARAMS_TARGET],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise UserError(
            "reading the demo's overrides needs `make`; or give them yourself: -S KEY=VALUE ..."
        ) from None
    words = shlex.split(result.stdout)
    if result.returncode != 0 or len(words) % 2 or set(words[::2]) != {"-S"}:
        raise UserError(
            f"`make {DEMO_PARAMS_TARGET}` in {root} did not print the demo's `-S KEY=VALUE` "
            "overrides; give them yourself: -S KEY=VALUE ..."
        )
    return words[1::2]


def override_key(override: str) -> str:
    """ "lr" for "lr=1e-4" (and for "params.yaml:lr=1e-4")."""
    key = override.partition("=")[0].strip()
    return key.removeprefix(f"{PARAMS_FILE}:")


def overlaps(key: str, other: str) -> bool:
    """Whether two dotted keys name the same value or one holds the other ("data", "data.limit")."""
    return key == other or key.startswith(f"{other}.") or other.startswith(f"{key}.")


def changed_params(clone: Path, base: Side, head: Side) -> list[str]:
    """The params.yaml keys whose committed values differ between the two commits."""
    changes = json.loads(dvc(["params", "diff", base.commit, head.commit, "--json"], clone) or "{}")
    return sorted(changes.get(str(PARAMS_FILE), {}))


def stage_events(output: str) -> dict[str, str]:
    """What DVC did with each stage, from `dvc exp run`'s output, in the order DVC took them."""
    found = sorted(
        (match.start(), match.group(1), event)
        for event, pattern in STAGE_EVENTS.items()
        for match in pattern.finditer(output)
    )
    return {stage: event for _, stage, event in found}


def run_side(clone: Path, side: Side, overrides: list[str]) -> None:
    """`dvc exp run` with the overrides on the checked-out commit, named after the side."""
    print(f"review: {side.label} {side.short}: dvc exp run", file=sys.stderr, flush=True)
    settings = [word for override in overrides for word in ("-S", override)]
    output = dvc(["exp", "run", "--name", side.experiment, *settings], clone, stream=True)
    side.stages = stage_events(output)


def carry_over_results(clone: Path, commit: str) -> None:
    """Check out `commit` in the clone, keeping the last run's results: dvc.lock and the files its
    stages wrote (those git sees; data/ and models/ are git-ignored and stay as they are). DVC then
    sees as changed only the stages whose code, params or inputs differ between the commits."""
    produced = git(["ls-files", "--modified", "--others", "--exclude-standard"], clone).splitlines()
    produced = [name for name in produced if name != str(PARAMS_FILE) and (clone / name).is_file()]
    with tempfile.TemporaryDirectory(dir=clone.parent) as kept:
        for name in produced:
            (Path(kept) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(clone / name, Path(kept) / name)
        git(["checkout", "--quiet", "--force", "--detach", commit], clone)
        for name in produced:
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(kept) / name, clone / name)


def commit_side(root: Path, label: str, rev: str) -> Side:
    """The side `label` at `rev` (a branch, tag or hash), or one line if git does not know it."""
    try:
        commit = git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    except UserError:
        raise UserError(f"{label}: no commit {rev!r} in {root}") from None
    return Side(label=label, commit=commit, short=git(["rev-parse", "--short", commit], root))


def stages_table(base: Side, head: Side) -> str:
    """One row per stage: what DVC did with it on each side."""
    stages = list(dict.fromkeys([*base.stages, *head.stages]))
    rows = [
        f"| {stage} | {base.stages.get(stage, '-')} | {head.stages.get(stage, '-')} |"
        for stage in stages
    ]
    header = f"| Stage | {base.experiment} | {head.experiment} |\n|---|---|---|"
    return "\n".join([header, *rows])


def review(root: Path, base_rev: str, head_rev: str, overrides: list[str] | None = None) -> str:
    """Run the pipeline on both commits with the same configuration; the Markdown report."""
    root = Path(git(["rev-parse", "--show-toplevel"], root))
    base, head = (
        commit_side(root, label, rev) for label, rev in (("base", base_rev), ("head", head_rev))
    )
    if overrides is None:
        overrides, source = demo_overrides(root), "the offline demo's, from the Makefile"
    else:
        source = "given on the command line"
    cache = dvc(["cache", "dir"], root).strip()

    scratch = root / ".dvc" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="review-", dir=scratch) as workdir:
        clone = Path(workdir) / "repo"
        git(["clone", "--quiet", "--no-checkout", str(root), str(clone)], root)
        git(["config", "user.name", "tlpipe review"], clone)
        git(["config", "user.email", "review@tlpipe.invalid"], clone)  # experiments are commits
        git(["checkout", "--quiet", "--detach", base.commit], clone)
        dvc(["cache", "dir", "--local", cache], clone)  # one cache, one run cache

        changed = changed_params(clone, base, head)
        kept = [o for o in overrides if not any(overlaps(override_key(o), k) for k in changed)]
        dropped = [o for o in overrides if o not in kept]

        run_side(clone, base, kept)
        carry_over_results(clone, head.commit)
        run_side(clone, head, kept)

        metrics = dvc(
            ["metrics", "diff", base.experiment, head.experiment, "--md", "--all"], clone
        ).strip()
        params = dvc(["params", "diff", base.short, head.short, "--md"], clone).strip()

    return report(
        base, head, kept=kept, dropped=dropped, source=source, metrics=metrics, params=params
    )


def report(
    base: Side,
    head: Side,
    *,
    kept: list[str],
    dropped: list[str],
    source: str,
    metrics: str,
    params: str,
) -> str:
    """The Markdown report: the configuration both sides ran with, the metrics diff, the params
    diff and the stages table."""
    configuration = " ".join(f"`-S {override}`" for override in kept) or "nothing"
    lines = [
        f"### Pipeline on base `{base.short}` and head `{head.short}`",
        "",
        f"Both sides ran with the params their commit holds and the same overrides ({source}): "
        f"{configuration}.",
    ]
    if dropped:
        lines.append(
            "Head changes "
            + ", ".join(f"`{override_key(o)}`" for o in dropped)
            + ": its committed values apply, and "
            + ", ".join(f"`-S {o}`" for o in dropped)
            + " on neither side."
        )
    lines += [
        "",
        "#### Metrics",
        "",
        metrics or "No metrics.",
        "",
        "#### Params changed between base and head",
        "",
        params or "None: both commits hold the same params.",
        "",
        "#### Stages",
        "",
        "Ran, restored from DVC's run cache, or unchanged (head: kept from the base run).",
        "",
        stages_table(base, head),
    ]
    return "\n".join(lines) + "\n"
