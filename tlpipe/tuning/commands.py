"""The tuning commands of `tlpipe`: their arguments and what each checks before it starts."""

from __future__ import annotations

import argparse

from tlpipe.core.runtime import UserError


def add_lr_find(commands: argparse._SubParsersAction) -> None:
    lr_find = commands.add_parser(
        "lr-find",
        help="sweep the learning rate over fine-tuning steps and suggest one",
        description="One fine-tuning step per learning rate, from --start to --end in equal "
        "ratios, with the finetune stage's model, optimizer, batches and precision on the "
        "activations cached at the freeze boundary (the head is trained first if it is missing "
        "or stale). Prints two suggestions and the `dvc exp run -S lr=...` to try; writes "
        "metrics/lr_find/ (lr_find.tsv, lr_find.png, lr_find.json). params.yaml is not changed.",
    )
    sweep = lr_find.add_argument_group("sweep")
    sweep.add_argument(
        "--start", type=float, default=1e-7, metavar="LR", help="first rate (default 1e-7)"
    )
    sweep.add_argument("--end", type=float, default=1.0, metavar="LR", help="last (default 1)")
    sweep.add_argument(
        "--steps", type=int, default=100, metavar="N", help="rates tried, one step each (100)"
    )


def lr_find(args: argparse.Namespace) -> int:
    if not 0 < args.start < args.end:
        raise UserError(
            f"--start and --end: expected 0 < start < end; got {args.start}, {args.end}"
        )
    if args.steps < 10:
        raise UserError(f"--steps: expected at least 10; got {args.steps}")
    from tlpipe.core.paths import LR_FIND_DIR
    from tlpipe.tuning.lr_find import WEAK_FALL, find

    summary = find(args.start, args.end, args.steps)
    steepest, low, fall = summary["steepest"], summary["minimum_over_10"], summary["loss_fall"]
    print(f"lr-find: steepest descent of the smoothed loss at lr {steepest:.2g}")
    print(f"lr-find: its minimum's lr / 10: {low:.2g}")
    if fall < WEAK_FALL:
        print(
            f"lr-find: warning: the smoothed loss fell only {fall:.0%} at any rate (less than "
            f"{WEAK_FALL:.0%}), so both suggestions are batch noise; the head may already be "
            "where these layers can take it in a few steps: search lr over whole runs with "
            "`tlpipe tune` instead"
        )
    print(f"lr-find: curve in {LR_FIND_DIR}/lr_find.png; to fine-tune with the first:")
    print(f"dvc exp run -S lr={steepest:.2g}")
    return 0


def add_tune(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune",
        help="search params with Optuna, every trial a `dvc exp run -S ...`",
        description="An Optuna (seeded TPE) search over params.yaml keys in which every trial is "
        "a DVC experiment run in this workspace, one after another: `dvc exp show` lists them, "
        "`dvc exp apply NAME` takes one. Defaults come from params.yaml's tune section; the "
        "study is kept in tune/study.db, so running tune again continues it, and Ctrl-C loses "
        "no finished trial.",
    )
    search = tune.add_argument_group("search")
    search.add_argument(
        "--param",
        action="append",
        metavar="KEY=KIND:ARGS",
        help="a key and its range, repeatable: lr=log-uniform:1e-5,1e-3, x=uniform:0.1,0.5, "
        "train.units=int:64,512, finetune.unfreeze_from=choice:block4_conv1,block5_conv1 "
        "(default: tune.space)",
    )
    search.add_argument("--trials", type=int, metavar="N", help="trials to run (tune.trials)")
    objective = tune.add_argument_group("objective")
    objective.add_argument(
        "--metric", metavar="KEY", help="a metrics key, or FILE:KEY (tune.metric)"
    )
    objective.add_argument(
        "--direction", choices=("maximize", "minimize"), help="better is (tune.direction)"
    )


def tune(args: argparse.Namespace) -> int:
    """Check the ranges, the trial count and the metric, then search."""
    from tlpipe.core.params import load_params
    from tlpipe.tuning.dvcops import read_metric
    from tlpipe.tuning.search import Search
    from tlpipe.tuning.search import tune as run_search
    from tlpipe.tuning.space import check_space, parse_range

    params = load_params()
    settings = params.tune
    space = [parse_range(text) for text in (args.param or settings.space)]
    check_space(space, params.model_dump(mode="json"))  # the file as read, validated
    trials = settings.trials if args.trials is None else args.trials
    if trials < 1:
        raise UserError(f"--trials: expected at least 1; got {trials}")
    metric = args.metric or settings.metric
    read_metric(metric)  # exists, and is one number: before any trial starts
    search = Search(
        space=space,
        trials=trials,
        startup_trials=settings.startup_trials,
        metric=metric,
        direction=args.direction or settings.direction,
        seed=params.seed,
    )
    run_search(search)
    return 0
