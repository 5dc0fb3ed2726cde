"""PNG figures of training runs and similarity scores (matplotlib, drawn off-screen), written atomically."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.fileio import atomic_write_bytes


def plot_training_curves(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]], int]],
                         path: str | os.PathLike) -> None:
    """One column per (title, validation records, step of the kept validation) run: training and validation
    loss (top) and validation AUC (bottom) against optimiser steps, the kept validation marked."""
    figure, axes = _figure(2, len(runs), (4.2 * len(runs), 5.6))
    for column, (title, history, kept_step) in enumerate(runs):
        steps = [record["step"] for record in history]
        losses, aucs = axes[0][column], axes[1][column]
        losses.plot(steps, [record["train_loss"] for record in history], label="training loss", color="tab:blue")
        losses.plot(steps, [record["val_loss"] for record in history], label="validation loss", color="tab:orange")
        losses.set_title(title, fontsize=10)
        losses.set_ylabel("loss per image")
        losses.legend(fontsize=8)
        auc = [math.nan if record["val_auc"] is None else record["val_auc"] for record in history]
        aucs.plot(steps, auc, color="tab:green", marker=".", markersize=3)
        aucs.set_xlabel("optimiser steps")
        aucs.set_ylabel("validation macro ROC-AUC")
        aucs.set_ylim(0.0, 1.0)
        aucs.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        kept = steps.index(kept_step)
        for axis, value in ((losses, history[kept]["val_loss"]), (aucs, auc[kept])):
            axis.axvline(steps[kept], color="grey", linewidth=0.8, linestyle="--")
            axis.plot([steps[kept]], [value], marker="o", color="black", markersize=4)
    _save(figure, path)


def plot_score_distributions(groups: Mapping[str, np.ndarray], path: str | os.PathLike, title: str) -> None:
    """Histograms of similarity scores, one panel per named group (e.g. before and after), on a shared
    -1..1 axis so that their spreads compare at a glance."""
    figure, axes = _figure(1, len(groups), (4.2 * len(groups), 3.2))
    for axis, (name, scores) in zip(axes[0], groups.items(), strict=True):
        values = np.asarray(scores, dtype=float)
        axis.hist(values, bins=np.linspace(-1.0, 1.0, 81), color="tab:blue")
        axis.set_title(f"{name}\nmedian {np.median(values):.3f}, 5-95 % {np.percentile(values, 5):.3f}"
                       f"..{np.percentile(values, 95):.3f}", fontsize=9)
        axis.set_xlabel("cosine similarity")
        axis.set_xlim(-1.0, 1.0)
    axes[0][0].set_ylabel("pairs")
    figure.suptitle(title, fontsize=10)
    _save(figure, path)


def _figure(rows: int, columns: int, size: tuple[float, float]) -> tuple[Any, list[list[Any]]]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display back end

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [list(row) for row in axes]


def _save(figure: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
