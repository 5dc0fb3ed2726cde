"""Paper-style retrieval evaluation of cached features: CheXtriev against global CNN and V0.

The split under test is both the queries and the gallery (the paper's protocol): every image
retrieves its top-k among the others of the split by cosine similarity, never itself (by case id)
and, on request, never an image of the same patient. For each k it reports per-finding AP/HR/RR,
Mean and wMean twice, honestly (zero-hit queries count as 0) and with zero-hit queries skipped as
the research code's `skip` did, plus paired t-tests of CheXtriev against each baseline per finding
(model.significance). `write_report` writes the JSON (everything) and the Markdown tables.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model.cached_embeddings import (BASELINES, CHEXTRIEV, baseline_embeddings, load_network_for,
                                     network_embeddings, patient_groups)
from model.checkpoint import BackboneRecord
from model.errors import ChextrievError
from model.evaluation_markdown import render_markdown
from model.feature_cache import FeatureCache
from model.fileio import atomic_write_bytes
from model.metrics import RetrievalReport, evaluate_retrieval, query_scores, rank_by_cosine
from model.significance import SIGNIFICANCE_LEVEL, PairedTest, paired_tests

logger = logging.getLogger(__name__)

REPORT_FORMAT = "chextriev-evaluation/1"
JSON_FILE = "evaluation.json"
MARKDOWN_FILE = "evaluation.md"


class EvaluationInputError(ChextrievError, ValueError):
    """The evaluation was asked for something the feature cache cannot give (k, too few images)."""


@dataclass(frozen=True)
class KEvaluation:
    """Everything measured at one k, per method in EvaluationResult.methods order."""

    k: int
    reports: dict[str, RetrievalReport]  # zero-hit queries count as 0: the honest numbers
    skipped_reports: dict[str, RetrievalReport]  # zero-hit queries left out, as the research code's `skip`
    tests: tuple[PairedTest, ...]  # CheXtriev against each baseline, per finding; empty without a checkpoint

    def test(self, baseline: str, finding: str) -> PairedTest:
        """The paired test of CheXtriev against `baseline` on `finding`."""
        return next(t for t in self.tests if t.baseline == baseline and t.finding == finding)

    def to_dict(self) -> dict:
        """A JSON-ready dict, the honest reports first."""
        return {
            "k": self.k,
            "zero_hit_counted": {name: report.to_dict() for name, report in self.reports.items()},
            "zero_hit_skipped": {name: report.to_dict() for name, report in self.skipped_reports.items()},
            "paired_tests": [test.to_dict() for test in self.tests],
        }


@dataclass(frozen=True)
class EvaluationResult:
    """The whole evaluation of one split of one feature cache."""

    dataset: str
    split: str
    regions_source: str
    backbone: BackboneRecord
    checkpoint_fingerprint: str | None
    model_variant: str | None
    exclude_same_patient: bool
    num_queries: int
    images_without_patient_id: int
    label_names: tuple[str, ...]
    absent_classes: tuple[str, ...]  # no positive query in the split
    methods: tuple[str, ...]  # baselines first, CheXtriev last (as in the paper's Table 2)
    per_k: tuple[KEvaluation, ...]

    @property
    def atlas_regions(self) -> bool:
        """True when the regions were placed from the atlas template, not annotated per image."""
        return self.regions_source == "atlas"

    def to_dict(self) -> dict:
        """Everything, JSON-ready (NaN becomes None)."""
        return {
            "format": REPORT_FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "regions_source": self.regions_source,
            "atlas_regions": self.atlas_regions,
            "backbone": asdict(self.backbone),
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "model_variant": self.model_variant,
            "ks": [evaluation.k for evaluation in self.per_k],
            "protocol": {
                "queries_and_gallery": f"every usable image of split '{self.split}'",
                "similarity": "cosine (inner product of L2-normalised embeddings)",
                "self_exclusion": "by case id",
                "exclude_same_patient": self.exclude_same_patient,
                "images_without_patient_id": self.images_without_patient_id,
                "paired_test": "scipy.stats.ttest_rel, two-sided, over each finding's positive queries "
                               "with zero-hit queries counted as 0",
                "significance_level": SIGNIFICANCE_LEVEL,
            },
            "num_queries": self.num_queries,
            "label_names": list(self.label_names),
            "absent_classes": list(self.absent_classes),
            "methods": list(self.methods),
            "results": [evaluation.to_dict() for evaluation in self.per_k],
        }

    def to_markdown(self) -> str:
        """Tables like the paper's Table 2, the honest ones first, with the p-values."""
        return render_markdown(self)


def evaluate(cache: FeatureCache, checkpoint_dir: str | os.PathLike | None, *, ks: Sequence[int] = (5,),
             split: str = "test", exclude_same_patient: bool = False, device: str = "auto") -> EvaluationResult:
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
    groups = patient_groups(cache, rows) if exclude_same_patient else None
    result = EvaluationResult(
        dataset=cache.dataset_name,
        split=split,
        regions_source=cache.regions_source,
        backbone=cache.backbone,
        checkpoint_fingerprint=None if checkpoint is None else checkpoint.fingerprint,
        model_variant=None if checkpoint is None else checkpoint.model_config.variant,
        exclude_same_patient=exclude_same_patient,
        num_queries=len(rows),
        images_without_patient_id=sum(cache.patient_ids[row] in (None, "") for row in rows),
        label_names=cache.label_names,
        absent_classes=tuple(name for name, count in zip(cache.label_names, labels.sum(axis=0)) if count == 0),
        methods=tuple(embeddings),
        per_k=tuple(evaluate_methods(embeddings, labels, ids, k, cache.label_names, groups) for k in ks),
    )
    logger.info("evaluation finished", extra={
        "dataset": result.dataset, "split": split, "queries": result.num_queries, "ks": list(ks),
        "methods": list(result.methods), "exclude_same_patient": exclude_same_patient,
        "regions_source": result.regions_source})
    return result


def evaluate_methods(embeddings: Mapping[str, np.ndarray], labels: np.ndarray, ids: Sequence[str], k: int,
                     label_names: Sequence[str], groups: Sequence[str] | None = None) -> KEvaluation:
    """Score each method's embeddings (N, D) of one query-and-gallery set at k; with a CHEXTRIEV entry,
    test it against every BASELINES entry present (per finding, over its positive queries)."""
    names = tuple(label_names)
    ranked = {method: rank_by_cosine(vectors, ids, k, groups) for method, vectors in embeddings.items()}
    reports = {method: evaluate_retrieval(labels, labels, r, names) for method, r in ranked.items()}
    skipped = {method: evaluate_retrieval(labels, labels, r, names, skip_zero_hit=True)
               for method, r in ranked.items()}
    tests: tuple[PairedTest, ...] = ()
    if CHEXTRIEV in ranked:
        ours = query_scores(labels, labels, ranked[CHEXTRIEV])
        for baseline in (name for name in BASELINES if name in ranked):
            tests += paired_tests(names, CHEXTRIEV, ours, baseline, query_scores(labels, labels, ranked[baseline]))
    return KEvaluation(k, reports, skipped, tests)


def write_report(result: EvaluationResult, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write evaluation.json and evaluation.md into `out_dir`, each atomically; returns their paths."""
    out = Path(out_dir)
    json_path, markdown_path = out / JSON_FILE, out / MARKDOWN_FILE
    atomic_write_bytes(json_path, json.dumps(result.to_dict(), indent=2, allow_nan=False).encode())
    atomic_write_bytes(markdown_path, result.to_markdown().encode())
    return json_path, markdown_path


def _checked_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise EvaluationInputError(f"k must be one or more positive integers, got {list(values)}")
    return tuple(sorted(set(int(k) for k in values)))
