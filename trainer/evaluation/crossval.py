"""Cross-validated retrieval: K patient-level folds, a model trained for each, every image a query once.

For fold f the images of its patients are the queries; the other patients' images are split, by
patient, into training (85 %) and validation (15 %) images, and a model is trained on them. The gallery
is every image the task searches except the query (and, in the "other patients" scope, except the
query's patient's images): the training images included, as a deployed gallery holds the cases its model
was trained on. The baselines (global CNN, region mean and, for region-level tasks, the raw feature of the
query's region) need no training and rank the same way.

Figures: for each method, the Mean (over labels) and wMean (over positive query-label pairs) of AP, HR and
RR per fold, their mean over folds with a 95 % confidence interval (Student's t over the K fold values),
and paired t-tests over all queries (each query's score averaged over its labels) of CheXtriev, and of
region-level search, against each baseline.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import t as student_t

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from trainer.cached_embeddings import (
    BASELINES,
    CHEXTRIEV,
    baseline_embeddings,
    network_embeddings,
    network_node_embeddings,
    patient_groups,
)
from trainer.evaluation.metrics import QueryScores, query_scores, retrieve_top_k
from trainer.evaluation.report import EvaluationInputError
from trainer.evaluation.significance import paired_p_value
from trainer.evaluation.tasks import RetrievalTask
from trainer.feature_cache import FeatureCache
from trainer.training import RegionTargets, TrainingConfig, TrainingRows, train
from trainer.training_report import training_summary, write_training_report

logger = logging.getLogger(__name__)

REGION_FEATURE = "region feature"  # baseline: the raw backbone feature of the query's region
REGION_LEVEL = "CheXtriev region-level"  # the node embedding of the query's region
TRAINED = (CHEXTRIEV, REGION_LEVEL)
SCOPES = ("all images", "other patients")
METRICS = ("ap", "hr", "rr")
VAL_FRACTION = 0.15


@dataclass(frozen=True)
class FoldSummary:
    """One method's figures on one fold's queries: Mean and wMean of AP, HR and RR (fractions)."""

    mean: dict[str, float]
    weighted_mean: dict[str, float]


@dataclass
class MethodResult:
    """One method in one scope at one k: its per-fold summaries and every query's scores."""

    folds: list[FoldSummary] = field(default_factory=list)
    query_scores: list[QueryScores] = field(default_factory=list)

    def pooled(self, metric: str) -> np.ndarray:
        """Each query's `metric` averaged over its positive labels (NaN where it has none), all folds."""
        values = np.concatenate([getattr(scores, metric) for scores in self.query_scores])
        counts = (~np.isnan(values)).sum(axis=1)
        sums = np.nansum(values, axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def interval(self, metric: str, weighted: bool) -> tuple[float, float]:
        """The mean over folds and the half-width of its 95 % confidence interval (Student's t)."""
        values = np.array([(fold.weighted_mean if weighted else fold.mean)[metric] for fold in self.folds])
        values = values[~np.isnan(values)]
        if len(values) < 2:
            return (float(values.mean()) if len(values) else math.nan), math.nan
        half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        return float(values.mean()), float(half)


@dataclass(frozen=True)
class CrossValidation:
    """Everything one cross-validation measured: results[scope][k][method]."""

    task: str
    label_names: tuple[str, ...]
    folds: int
    seed: int
    queries: int
    fold_sizes: tuple[int, ...]
    methods: tuple[str, ...]
    results: dict[str, dict[int, dict[str, MethodResult]]]
    checkpoints: tuple[str, ...]

    def p_value(self, scope: str, k: int, method: str, baseline: str, metric: str = "ap") -> float:
        """Two-sided paired t-test over all queries of `method` against `baseline`."""
        results = self.results[scope][k]
        ours, theirs = results[method].pooled(metric), results[baseline].pooled(metric)
        both = ~np.isnan(ours) & ~np.isnan(theirs)
        return paired_p_value(ours[both], theirs[both])

    def to_dict(self) -> dict:
        """JSON-ready figures: per scope, k and method the fold means with CIs, and the paired tests."""
        scopes = {}
        for scope, per_k in self.results.items():
            scopes[scope] = {}
            for k, methods in per_k.items():
                entry = {}
                for method, result in methods.items():
                    entry[method] = {
                        "mean": {m: _interval_dict(result.interval(m, weighted=False)) for m in METRICS},
                        "weighted_mean": {m: _interval_dict(result.interval(m, weighted=True)) for m in METRICS},
                        "per_fold": [{"mean": fold.mean, "weighted_mean": fold.weighted_mean} for fold in result.folds],
                    }
                entry["paired_tests"] = [{"method": method, "baseline": baseline,
                                          **{m: _none_if_nan(self.p_value(scope, k, method, baseline, m))
                                             for m in METRICS}}
                                         for method, baseline in self.comparisons()]
                scopes[scope][str(k)] = entry
        return {"format": "chextriev-crossval/1", "task": self.task, "labels": list(self.label_names),
                "folds": self.folds, "seed": self.seed, "queries": self.queries, "fold_sizes": list(self.fold_sizes),
                "methods": list(self.methods), "checkpoints": list(self.checkpoints),
                "confidence_interval": "95 % Student's t over the fold values",
                "paired_test": "scipy.stats.ttest_rel over all queries, each query's score averaged over its labels",
                "scopes": scopes}

    def comparisons(self) -> list[tuple[str, str]]:
        """(method, baseline) pairs tested: each trained method against each untrained one, and region-level
        search against whole-image CheXtriev."""
        trained = [m for m in self.methods if m in TRAINED]
        baselines = [m for m in self.methods if m not in TRAINED]
        pairs = [(method, baseline) for method in trained for baseline in baselines]
        if REGION_LEVEL in self.methods:
            pairs.append((REGION_LEVEL, CHEXTRIEV))
        return pairs


def patient_folds(groups: Sequence[str], rows: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """`rows` in `folds` folds with every patient (group) in one: patients in a seeded random order, each
    to the fold holding the fewest images so far."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for row, group in zip(rows.tolist(), groups, strict=True):
        by_patient[group].append(row)
    if len(by_patient) < folds:
        raise EvaluationInputError(f"{folds} folds need at least {folds} patients; the images come from "
                                   f"{len(by_patient)}")
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    assigned: list[list[int]] = [[] for _ in range(folds)]
    for index in order:
        smallest = min(range(folds), key=lambda f: (len(assigned[f]), f))
        assigned[smallest].extend(by_patient[patients[index]])
    return [np.array(sorted(fold), dtype=np.int64) for fold in assigned]


def cross_validate(cache: FeatureCache, task: RetrievalTask, model_config: ModelConfig, training: TrainingConfig,
                   out_dir: str | os.PathLike, *, folds: int = 5, seed: int = 0, ks: Sequence[int] = (5,),
                   device: str = "auto", region_targets: RegionTargets | None = None) -> CrossValidation:
    """Train one model per fold into `out_dir`/fold-F and score every method (see the module docstring)."""
    if not isinstance(folds, int) or folds < 2:
        raise EvaluationInputError(f"cross-validation needs at least 2 folds, got {folds!r}")
    ks = tuple(sorted(set(ks)))
    usable = np.flatnonzero(cache.usable)
    groups = patient_groups(cache, np.arange(cache.count))
    fold_rows = patient_folds([groups[row] for row in usable], usable, folds, seed)
    searched = np.flatnonzero(task.searched)
    fixed = baseline_embeddings(cache, np.arange(cache.count))
    if task.region_level:
        fixed[REGION_FEATURE] = F.normalize(torch.from_numpy(np.asarray(cache.region_features, dtype=np.float32)),
                                            dim=-1).numpy()
    methods = tuple(BASELINES) + ((REGION_FEATURE,) if task.region_level else ()) + (CHEXTRIEV,) + (
        (REGION_LEVEL,) if task.region_level else ())
    results = {scope: {k: {method: MethodResult() for method in methods} for k in ks} for scope in SCOPES}
    checkpoints, queries_total = [], 0
    for fold, test_rows in enumerate(fold_rows):
        train_rows, val_rows = _train_val(np.setdiff1d(usable, test_rows), groups, seed + fold)
        logger.info("cross-validation fold started", extra={"fold": fold, "folds": folds, "train": len(train_rows),
                                                            "val": len(val_rows), "test": len(test_rows)})
        run = train(cache, model_config, training, Path(out_dir) / f"fold-{fold}",
                    rows=TrainingRows(train_rows, val_rows), region_targets=region_targets)
        checkpoints.append(str(run.checkpoint_dir))
        write_training_report(Path(out_dir) / f"fold-{fold}", training_summary(run), run.history)
        vectors = {**fixed, **_trained_embeddings(run.checkpoint_dir, cache, device, task.region_level)}
        queries = test_rows[task.asks[test_rows]]
        queries_total += len(queries)
        for scope in SCOPES:
            for method in methods:
                similarity = _similarity(vectors[method], queries, searched,
                                         task.query_regions if method in (REGION_FEATURE, REGION_LEVEL) else None)
                for k in ks:
                    ranked = _ranked(similarity, k, cache, queries, searched,
                                     groups if scope == "other patients" else None)
                    scores = query_scores(task.labels[queries], task.labels[searched], ranked)
                    results[scope][k][method].query_scores.append(scores)
                    results[scope][k][method].folds.append(_summary(scores))
    logger.info("cross-validation finished", extra={"folds": folds, "queries": queries_total, "task": task.name})
    return CrossValidation(task.name, task.label_names, folds, seed, queries_total,
                           tuple(len(rows) for rows in fold_rows), methods, results, tuple(checkpoints))


def _train_val(rows: np.ndarray, groups: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows split by patient: about VAL_FRACTION of the patients (at least one) validate."""
    patients = sorted({groups[row] for row in rows})
    chosen = np.random.default_rng(seed).permutation(len(patients))[:max(1, round(VAL_FRACTION * len(patients)))]
    val_patients = {patients[i] for i in chosen}
    in_val = np.array([groups[row] in val_patients for row in rows], dtype=bool)
    return rows[~in_val], rows[in_val]


def _trained_embeddings(checkpoint_dir: Path, cache: FeatureCache, device: str,
                        region_level: bool) -> dict[str, np.ndarray]:
    """The fold model's image embeddings (N, D) and, for region-level tasks, node embeddings (N, 18, D)."""
    network, _ = load_checkpoint(checkpoint_dir)
    rows = np.arange(cache.count)
    embeddings = {CHEXTRIEV: network_embeddings(network, cache, rows, device=device)}
    if region_level:
        embeddings[REGION_LEVEL] = network_node_embeddings(network, cache, rows, device=device)
    return embeddings


def _similarity(vectors: np.ndarray, queries: np.ndarray, gallery: np.ndarray,
                query_regions: np.ndarray | None) -> np.ndarray:
    """(Q, G) inner products: of whole-image vectors (N, D), or of each query's region in per-region
    vectors (N, 18, D)."""
    if query_regions is None:
        return vectors[queries] @ vectors[gallery].T
    regions = query_regions[queries]
    return np.einsum("qd,gqd->qg", vectors[queries, regions], vectors[gallery][:, regions])


def _ranked(similarity: np.ndarray, k: int, cache: FeatureCache, queries: np.ndarray, gallery: np.ndarray,
            groups: Sequence[str] | None) -> np.ndarray:
    ids = cache.case_ids
    if groups is None:
        return retrieve_top_k(similarity, k, ids[queries].tolist(), ids[gallery].tolist())
    return retrieve_top_k(similarity, k, ids[queries].tolist(), ids[gallery].tolist(),
                          [groups[row] for row in queries], [groups[row] for row in gallery])


def _summary(scores: QueryScores) -> FoldSummary:
    mean, weighted = {}, {}
    for metric in METRICS:
        values = getattr(scores, metric)
        per_label = [values[~np.isnan(values[:, c]), c] for c in range(values.shape[1])]
        label_means = [column.mean() for column in per_label if len(column)]
        mean[metric] = float(np.mean(label_means)) if label_means else math.nan
        weighted[metric] = float(np.nanmean(values)) if (~np.isnan(values)).any() else math.nan
    return FoldSummary(mean, weighted)


def _interval_dict(interval: tuple[float, float]) -> dict[str, float | None]:
    return {"value": _none_if_nan(interval[0]), "ci95": _none_if_nan(interval[1])}


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value
