"""Macro ROC-AUC of multi-label finding scores, the criterion that selects a trained model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class MacroAuc:
    """Mean ROC-AUC over the classes that have both positives and negatives (`classes`, their
    column indices); `value` is NaN when no class has both."""

    value: float
    classes: tuple[int, ...]


def evaluable_classes(labels: np.ndarray) -> tuple[int, ...]:
    """Columns of a boolean (N, C) label matrix with at least one positive and one negative row."""
    labels = np.asarray(labels, dtype=bool)
    positives = labels.sum(axis=0)
    return tuple(int(c) for c in np.flatnonzero((positives > 0) & (positives < len(labels))))


def macro_roc_auc(scores: np.ndarray, labels: np.ndarray) -> MacroAuc:
    """Macro ROC-AUC of scores (N, C) against boolean labels (N, C); ties count one half
    (the Mann-Whitney statistic on average ranks)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C)")
    classes = evaluable_classes(labels)
    aucs = []
    for c in classes:
        positive = labels[:, c]
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        rank_sum = rankdata(scores[:, c])[positive].sum()
        aucs.append((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return MacroAuc(float(np.mean(aucs)) if aucs else float("nan"), classes)
