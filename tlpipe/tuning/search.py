"""`tlpipe tune`: an Optuna search in which every trial is one `dvc exp run -S ...`.

Trials run one after another in the workspace (one TensorFlow run at a time is fastest on a few
cores), so each is a real DVC experiment: listed by `dvc exp show`, rerunning only the stages its
keys reach (the rest come from DVC's run cache), and applied with `dvc exp apply NAME`. The
study lives in tune/study.db (SQLite, git-ignored so that `dvc exp apply` never rolls it back):
every finished trial is written there as it ends, so Ctrl-C loses none, and `tlpipe tune` again
continues the study. The sampler is Optuna's TPE, seeded with params.yaml's `seed` plus the
number of trials already in the study, so a continued study draws new points, not the first
ones again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tlpipe.core.runtime import UserError
from tlpipe.tuning.space import Range, set_flags

STUDY_NAME = "tlpipe"


@dataclass(frozen=True)
class Search:
    """What to search and for how long: the ranges, trials, metric and its direction."""

    space: list[Range]
    trials: int
    startup_trials: int
    metric: str
    direction: str  # maximize or minimize
    seed: int


def open_study(search: Search):
    """tune/study.db's study (created on first use), with a TPE sampler seeded for this run.
    A study of another metric or direction is refused; trials left running by a killed run are
    marked failed."""
    import optuna
    from optuna.trial import TrialState

    from tlpipe.core.paths import TUNE_DIR, TUNE_STUDY_FILE

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did
    TUNE_DIR.mkdir(exist_ok=True)
    storage = f"sqlite:///{TUNE_STUDY_FILE}"
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=search.direction, load_if_exists=True
    )
    attrs = study.user_attrs
    if not attrs:
        study.set_user_attr("metric", search.metric)
        study.set_user_attr("id", secrets.token_hex(3))  # experiment names: tune-<id>-<trial>
    elif (attrs["metric"], study.direction.name.lower()) != (search.metric, search.direction):
        raise UserError(
            f"{TUNE_STUDY_FILE} is a study of {attrs['metric']} "
            f"({study.direction.name.lower()}): tune that, or move {TUNE_STUDY_FILE} away to "
            "start another study"
        )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)  # its process was killed mid-trial
        print(f"tune: trial {trial.number} never finished (interrupted): marked failed")
    study.sampler = optuna.samplers.TPESampler(
        seed=search.seed + len(study.trials), n_startup_trials=search.startup_trials
    )
    return study


def run_trials(study, search: Search) -> None:
    """`search.trials` trials, each `dvc exp run -n NAME -S ...` then the metric read back."""
    from optuna.trial import TrialState

    from tlpipe.tuning.dvcops import read_metric, run_dvc

    for count in range(1, search.trials + 1):
        trial = study.ask()
        values = {searched.key: searched.suggest(trial) for searched in search.space}
        name = f"tune-{study.user_attrs['id']}-{trial.number}"
        trial.set_user_attr("experiment", name)
        chosen = " ".join(f"{key}={value}" for key, value in values.items())
        print(f"tune: trial {count}/{search.trials} ({name}): {chosen}", flush=True)
        try:
            run_dvc(["exp", "run", "-n", name, *set_flags(values)])
            value = read_metric(search.metric)
        except (KeyboardInterrupt, UserError):
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        best = study.best_trial
        print(
            f"tune: {name}: {search.metric} {value:.4f} (best {best.value:.4f}, "
            f"{best.user_attrs['experiment']})",
            flush=True,
        )


def trials_table(study, search: Search) -> str:
    """Every trial of the study as Markdown, best first, failed ones last."""
    from optuna.trial import TrialState

    keys = list(dict.fromkeys(key for trial in study.trials for key in trial.params))
    done = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    done.sort(key=lambda trial: trial.value, reverse=search.direction == "maximize")
    rest = [trial for trial in study.trials if trial.state != TrialState.COMPLETE]
    header = ["trial", "experiment", search.metric, *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for trial in done + rest:
        value = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name
        cells = [str(trial.number), trial.user_attrs.get("experiment", "-"), value]
        cells += [str(trial.params.get(key, "-")) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tune(search: Search) -> None:
    """Open (or continue) the study, run the trials, and print the table and the best trial."""
    study = open_study(search)
    before = len(study.trials)
    print(
        f"tune: {search.trials} trial{'s' if search.trials > 1 else ''} of {search.metric} "
        f"({search.direction}) over "
        f"{', '.join(searched.key for searched in search.space)}"
        + (f", continuing a study of {before}" if before else "")
    )
    run_trials(study, search)
    best = study.best_trial
    print(trials_table(study, search))
    chosen = " ".join(f"-S {key}={value}" for key, value in best.params.items())
    print(f"tune: best {search.metric} {best.value:.4f} in trial {best.number}: {chosen}")
    print("tune: the workspace holds the last trial; to take the best one:")
    print(f"dvc exp apply {best.user_attrs['experiment']}")
