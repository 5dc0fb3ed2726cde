"""What `chextriev train` leaves beside its checkpoint: `training.json` (the run's summary and one record per
validation) and `training_curves.png` (its losses and validation AUC against optimiser steps)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.fileio import atomic_write_bytes
from trainer.plots import plot_training_curves
from trainer.training import TrainingResult

REPORT_FILE = "training.json"
CURVES_FILE = "training_curves.png"


def training_summary(result: TrainingResult) -> dict[str, Any]:
    """The result as JSON-safe values (the checkpoint directory as text)."""
    summary = dataclasses.asdict(result)
    summary["checkpoint_dir"] = str(result.checkpoint_dir)
    summary["best_epoch"] = result.best_epoch
    return summary


def write_training_report(out_dir: str | os.PathLike, summary: dict[str, Any], history: Sequence[Any]) -> Path:
    """Write training.json and training_curves.png into `out_dir`, each atomically; returns the JSON's path."""
    out = Path(out_dir)
    path = out / REPORT_FILE
    atomic_write_bytes(path, json.dumps(summary, indent=2).encode())
    plot_training_curves([(out.name, [vars(record) for record in history], summary["best"]["step"])],
                         out / CURVES_FILE)
    return path


def read_training_history(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """The per-validation records of a run directory's training.json and the step of the kept one."""
    path = Path(run_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
        return list(report["history"]), int(report["best"]["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FileNotFoundError(f"{path} is not a training report of `chextriev train` ({error})") from None
