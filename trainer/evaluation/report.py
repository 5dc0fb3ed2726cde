"""Paper-style retrieval evaluation of cached features: CheXtriev against the global CNN and the
region mean (the parameter-free mean of the raw region features).

The split under test is both the queries and the gallery (the paper's protocol): every image
retrieves its top-k among the others of the split by cosine similarity, never itself (by case id).
Each k is scored over all images and over other patients' images only (trainer.evaluation.results),
with per-finding AP/HR/RR, Mean and wMean counted honestly (zero-hit queries count as 0) and, for
comparison with the research code's tables, with zero-hit queries skipped as its `skip` did; plus
paired t-tests of CheXtriev against each baseline per finding (trainer.evaluation.significance).
`write_report` writes the JSON (everything) and the Markdown tables.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.errors import ChextrievError
from model.fileio import atomic_write_bytes
from trainer.cached_embeddings import (
    BASELINES,
    CHEXTRIEV,
    baseline_embeddings,
    load_network_for,
    network_embeddings,
    patient_groups,
)
from trainer.evaluation.markdown import render_markdown
from trainer.evaluation.metrics import evaluate_retrieval, query_scores, rank_by_cosine
from trainer.evaluation.results import EvaluationResult, KEvaluation
from trainer.evaluation.significance import PairedTest, paired_tests
from trainer.feature_cache import FeatureCache

logger = logging.getLogger(__name__)

JSON_FILE = "evaluation.json"
MARKDOWN_FILE = "evaluation.md"


class EvaluationInputError(ChextrievError, ValueError):
    """The evaluation was asked for something the feature cache cannot give (k, too few images)."""


def evaluate(cache: FeatureCache, checkpoint_dir: str | os.PathLike | None, *, ks: Sequence[int] = (5,),
             split: str = "test", device: str = "auto") -> EvaluationResult:
    """Evaluate the baselines, and CheXtriev when a checkpoint is given, on `split` of `cache`."""
    ks = _checked_ks(ks)
    rows = cache.indices(split)
    if len(rows) <= ks[-1]:
        raise EvaluationInputError(f"split '{split}' has {len(rows)} usable images; top-{ks[-1]} retrieval "
                                   f"needs at least {ks[-1] + 1}")
    embeddings = baseline_embeddings(cache, rows)
    checkpoint = None
    if checkpoint_dir is not None:
        network, checkpoint = load_network_for(cache, checkpoint_dir)
        embeddings[CHEXTRIEV] = network_embeddings(network, cache, rows, device=device)
    labels = cache.labels[rows]
    ids = cache.case_ids[rows].tolist()
    groups = patient_groups(cache, rows)
    result = EvaluationResult(
        dataset=cache.dataset_name,
        split=split,
        regions_source=cache.regions_source,
        backbone=cache.backbone,
        checkpoint_fingerprint=None if checkpoint is None else checkpoint.fingerprint,
        model_variant=None if checkpoint is None else checkpoint.model_config.variant,
        num_queries=len(rows),
        num_patients=len(set(groups)),
        images_without_patient_id=sum(cache.patient_ids[row] in (None, "") for row in rows),
        label_names=cache.label_names,
        absent_classes=tuple(name for name, count in zip(cache.label_names, labels.sum(axis=0)) if count == 0),
        methods=tuple(embeddings),
        per_k=tuple(evaluate_methods(embeddings, labels, ids, k, cache.label_names, groups) for k in ks),
    )
    logger.info("evaluation finished", extra={
        "dataset": result.dataset, "split": split, "queries": result.num_queries, "patients": result.num_patients,
        "ks": list(ks), "methods": list(result.methods), "regions_source": result.regions_source})
    return result


def evaluate_methods(embeddings: Mapping[str, np.ndarray], labels: np.ndarray, ids: Sequence[str], k: int,
                     label_names: Sequence[str], groups: Sequence[str] | None = None) -> KEvaluation:
    """Score each method's embeddings (N, D) of one query-and-gallery set at k; with a CHEXTRIEV entry,
    test it against every BASELINES entry present (per finding, over its positive queries). With
    patient `groups`, score the "other patients only" scope too, where every query has k candidates."""
    names = tuple(label_names)
    ranked = {method: rank_by_cosine(vectors, ids, k) for method, vectors in embeddings.items()}
    reports = {method: evaluate_retrieval(labels, labels, r, names) for method, r in ranked.items()}
    skipped = {method: evaluate_retrieval(labels, labels, r, names, skip_zero_hit=True)
               for method, r in ranked.items()}
    other_reports, other_tests = None, ()
    if groups is not None and _every_query_has_k_other_patient_images(groups, k):
        other_ranked = {method: rank_by_cosine(vectors, ids, k, groups) for method, vectors in embeddings.items()}
        other_reports = {method: evaluate_retrieval(labels, labels, r, names) for method, r in other_ranked.items()}
        other_tests = _chextriev_tests(other_ranked, labels, names)
    return KEvaluation(k, reports, skipped, _chextriev_tests(ranked, labels, names), other_reports, other_tests)


def write_report(result: EvaluationResult, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write evaluation.json and evaluation.md into `out_dir`, each atomically; returns their paths."""
    return write_json_and_markdown(Path(out_dir), JSON_FILE, result.to_dict(), MARKDOWN_FILE, render_markdown(result))


def write_json_and_markdown(out_dir: Path, json_name: str, figures: dict, markdown_name: str,
                            markdown: str) -> tuple[Path, Path]:
    """Write a report's JSON (strict: no NaN) and its Markdown into `out_dir`, each atomically."""
    json_path, markdown_path = out_dir / json_name, out_dir / markdown_name
    atomic_write_bytes(json_path, json.dumps(figures, indent=2, allow_nan=False).encode())
    atomic_write_bytes(markdown_path, markdown.encode())
    return json_path, markdown_path


def _chextriev_tests(ranked: Mapping[str, np.ndarray], labels: np.ndarray,
                     names: tuple[str, ...]) -> tuple[PairedTest, ...]:
    """CheXtriev's paired tests against each baseline present; none without CheXtriev."""
    if CHEXTRIEV not in ranked:
        return ()
    ours = query_scores(labels, labels, ranked[CHEXTRIEV])
    tests: tuple[PairedTest, ...] = ()
    for baseline in (name for name in BASELINES if name in ranked):
        tests += paired_tests(names, CHEXTRIEV, ours, baseline, query_scores(labels, labels, ranked[baseline]))
    return tests


def _every_query_has_k_other_patient_images(groups: Sequence[str], k: int) -> bool:
    counts = Counter(groups)
    return len(groups) - max(counts.values()) >= k


def _checked_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise EvaluationInputError(f"k must be one or more positive integers, got {list(values)}")
    return tuple(sorted(set(int(k) for k in values)))
