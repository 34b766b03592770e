"""What `train` and `finetune` share: fitting with early stopping, logging curves with DVCLive."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback
from dvclive.utils import standardize_metric_name

from stages.report import plot_curves


def fit_logged(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    patience: int,
    live_dir: Path,
    title: str,
) -> keras.callbacks.History:
    """Fit with early stopping on val_loss (best weights restored); log every epoch to `live_dir`.

    DVCLive writes metrics.json and per-epoch .tsv curves; dvc.yaml declares them, so DVCLive is
    told not to edit dvc.yaml itself nor to create experiments of its own. metrics.json then holds
    the best epoch's values, those of the weights kept, not the last epoch's. The same curves are
    drawn to `live_dir`/curves.png.
    """
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        train[0], train[1],
        validation_data=val,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[stop, DVCLiveCallback(live=live)],
        verbose=2,
    )
    summarise_best_epoch(live, history.history, stop.best_epoch)
    plot_curves(history.history, title, Path(live_dir) / "curves.png")
    return history


def summarise_best_epoch(live: Live, history: dict[str, list[float]], best_epoch: int) -> None:
    """Rewrite DVCLive's summary (the last epoch's values) with those of `best_epoch` (0-based)."""
    for name, values in history.items():
        split, metric = standardize_metric_name(name, "dvclive.keras").split("/", 1)
        live.summary.setdefault(split, {})[metric] = values[best_epoch]
    live.summary["best_epoch"] = best_epoch + 1
    live.make_summary()
