"""What `train` and `finetune` share: fitting with early stopping, logging curves with DVCLive."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback

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
    told not to edit dvc.yaml itself nor to create experiments of its own. The same curves are
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
    plot_curves(history.history, title, Path(live_dir) / "curves.png")
    return history
