"""`tlpipe lr-find`: an exponential learning-rate sweep over the finetune stage's own model.

One training step per learning rate, from `start` to `end` in equal ratios, on the model, optimizer
(RMSprop), loss, batches (seeded shuffle) and precision that `finetune` uses, so on the activations
cached at the freeze boundary (no backbone pass below it). The loss is smoothed with a
bias-corrected exponential mean (as fastai's `lr_find` does); the sweep stops once the smoothed
loss passes `DIVERGED` times its minimum. Two suggestions: where the smoothed loss falls fastest
per decade, and the learning rate of its minimum divided by 10. Seeded like the stages, so the
same inputs give the same numbers. Nothing in params.yaml changes: it prints the command to run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SMOOTHING = 0.98  # weight of the running mean: about the last 50 steps
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum so far
SKIP_START = 5  # the first steps' smoothed loss rests on a handful of batches: not a slope to trust
WEAK_FALL = 0.05  # a smoothed loss falling less than this fraction is batch noise, not learning


@dataclass(frozen=True)
class Sweep:
    """The rates tried, each step's loss and the smoothed loss (one entry per step run)."""

    rates: np.ndarray  # (S,)
    losses: np.ndarray  # (S,)
    smoothed: np.ndarray  # (S,)


def sweep_rates(start: float, end: float, steps: int) -> np.ndarray:
    """`steps` learning rates from `start` to `end`, each the last times the same factor."""
    return np.geomspace(start, end, steps)


def smooth(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
    """The bias-corrected exponential moving average of `losses`."""
    average, out = 0.0, np.empty(len(losses))
    for index, loss in enumerate(losses):
        average = beta * average + (1 - beta) * float(loss)
        out[index] = average / (1 - beta ** (index + 1))
    return out


def diverged(smoothed: np.ndarray) -> bool:
    """The last smoothed loss is not finite, or `DIVERGED` times the lowest so far."""
    last = smoothed[-1]
    return not np.isfinite(last) or last > DIVERGED * np.nanmin(smoothed)


def suggestions(sweep: Sweep) -> dict[str, float]:
    """`steepest`: the rate where the smoothed loss falls fastest against log10(rate) (skipping
    the first `SKIP_START` steps); `minimum_over_10`: the rate of the lowest smoothed loss / 10."""
    finite = np.isfinite(sweep.smoothed)
    rates, smoothed = sweep.rates[finite], sweep.smoothed[finite]
    skip = min(SKIP_START, max(len(rates) - 2, 0))
    slopes = np.diff(smoothed[skip:]) / np.diff(np.log10(rates[skip:]))  # (S - skip - 1,)
    steepest = rates[skip + int(np.argmin(slopes))] if len(slopes) else rates[0]
    return {
        "steepest": float(steepest),
        "minimum_over_10": float(rates[int(np.argmin(smoothed))] / 10),
    }


def loss_fall(sweep: Sweep) -> float:
    """How far the smoothed loss falls from its value after `SKIP_START` steps to its lowest
    later value, as a fraction of the former (0 when it never falls below it)."""
    finite = sweep.smoothed[np.isfinite(sweep.smoothed)]
    if len(finite) <= SKIP_START:
        return 0.0
    start = finite[SKIP_START]
    return float(max(0.0, (start - finite[SKIP_START:].min()) / start))


def run_sweep(model, dataset, rates: np.ndarray, *, progress=print) -> Sweep:
    """One `train_on_batch` per rate, the dataset's passes chained; stops at divergence.

    `model` is compiled (its optimizer's learning rate is set before each step); `dataset`
    yields (x, one-hot y) batches, a new seeded order each pass (`streaming.batches`).
    """
    losses: list[float] = []
    batches = itertools.chain.from_iterable(itertools.repeat(dataset))
    every = max(1, len(rates) // 5)
    for step, (rate, (x, y)) in enumerate(zip(rates, batches, strict=False)):
        model.optimizer.learning_rate.assign(rate)
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(float(logs["loss"]))
        smoothed = smooth(np.array(losses))
        if (step + 1) % every == 0:
            progress(
                f"lr-find: step {step + 1}/{len(rates)}, lr {rate:.3g}, loss {smoothed[-1]:.4f}"
            )
        if step > SKIP_START and diverged(smoothed):
            progress(f"lr-find: the loss diverged at lr {rate:.3g} (step {step + 1}): stopped")
            break
    return Sweep(rates[: len(losses)], np.array(losses), smooth(np.array(losses)))


def write_tsv(sweep: Sweep, path: Path) -> None:
    """step, lr, loss, smoothed_loss: a table `dvc plots show` draws (-x lr -y smoothed_loss)."""
    from tlpipe.core.files import atomic_path

    lines = ["step\tlr\tloss\tsmoothed_loss"]
    for step, (rate, loss, smoothed) in enumerate(
        zip(sweep.rates, sweep.losses, sweep.smoothed, strict=True), start=1
    ):
        lines.append(f"{step}\t{rate:.6e}\t{loss:.6f}\t{smoothed:.6f}")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n")


def plot_sweep(sweep: Sweep, suggested: dict[str, float], path: Path) -> None:
    """The smoothed loss against the learning rate (log scale), both suggestions marked."""
    import matplotlib.pyplot as plt

    from tlpipe.outputs.report import save_figure

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(sweep.rates, sweep.losses, color="0.8", linewidth=0.8, label="loss per step")
    axes.plot(sweep.rates, sweep.smoothed, color="C0", label="smoothed loss")
    for (name, rate), colour in zip(suggested.items(), ("C1", "C2"), strict=True):
        axes.axvline(
            rate, color=colour, linestyle="--", label=f"{name.replace('_', ' ')} {rate:.2g}"
        )
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss")
    top = np.nanmax(sweep.smoothed[np.isfinite(sweep.smoothed)], initial=1.0)
    axes.set_ylim(top=min(top, DIVERGED * np.nanmin(sweep.smoothed)) * 1.05)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def head_ready() -> None:
    """Train the head (and what it needs) first when models/head.keras is missing or stale,
    saying which: the sweep starts from the head `finetune` would start from."""
    from tlpipe.core.paths import HEAD_FILE
    from tlpipe.tuning.dvcops import run_dvc, stale_stages

    stale = stale_stages("train")
    if HEAD_FILE.exists() and not stale:
        print(f"lr-find: {HEAD_FILE} is up to date")
        return
    why = "is missing" if not HEAD_FILE.exists() else f"is stale ({', '.join(stale)} to rerun)"
    print(f"lr-find: {HEAD_FILE} {why}: running `dvc repro train` first", flush=True)
    run_dvc(["repro", "train"])


def find(start: float, end: float, steps: int) -> dict[str, float]:
    """Sweep, write metrics/lr_find/ (table, picture, summary) and return the summary: what
    lr_find.json holds (`steps_run`, `loss_fall`, `steepest`, `minimum_over_10`)."""
    from tlpipe.compute.archives import load_model
    from tlpipe.compute.precision import choose_precision, computing_in
    from tlpipe.compute.streaming import batches
    from tlpipe.compute.training import compile_classifier, finetune_model
    from tlpipe.core import paths
    from tlpipe.core.arrays import open_rows
    from tlpipe.core.backbone import boundary_layer
    from tlpipe.core.jsonfiles import save_json
    from tlpipe.core.params import load_params
    from tlpipe.core.runtime import seed_everything, use_threads

    params = load_params()
    head_ready()
    use_threads(params.thread_count)  # as finetune: the losses depend on it
    seed_everything(params.seed)
    backbone, head = load_model(paths.BACKBONE_FILE), load_model(paths.HEAD_FILE)
    boundary = boundary_layer(backbone, params.finetune.unfreeze_from)
    augment = params.finetune.augment
    model, _ = finetune_model(backbone, head, boundary, augment=augment, seed=params.seed)
    source = paths.prepared_images if augment else paths.boundary_features
    x, y = open_rows(source("train")), open_rows(paths.prepared_labels("train"))
    precision = choose_precision(params.finetune.precision, stage="lr-find")
    print(
        f"lr-find: {steps} steps of fine-tuning from {params.finetune.unfreeze_from}, lr {start:g} "
        f"to {end:g}, batch {params.finetune.batch_size}, {precision}"
        + (" (augment is on: the full model on images)" if augment else "")
    )
    with computing_in(model, precision):
        compile_classifier(model, start)
        dataset = batches(x, y, batch_size=params.finetune.batch_size, seed=params.seed)
        sweep = run_sweep(model, dataset, sweep_rates(start, end, steps))
    suggested = suggestions(sweep)
    write_tsv(sweep, paths.LR_FIND_TABLE_FILE)
    plot_sweep(sweep, suggested, paths.LR_FIND_PLOT_FILE)
    summary = {"steps_run": len(sweep.rates), "loss_fall": loss_fall(sweep), **suggested}
    save_json(paths.LR_FIND_SUMMARY_FILE, summary)
    return summary
