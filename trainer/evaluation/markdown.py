"""Markdown rendering of an EvaluationResult: tables like the paper's Table 2, methods as column groups.

Values are percentages with one decimal. A baseline's cell carries the paper's asterisk where its
paired t-test against CheXtriev gives p < 0.05 for that finding and metric. Per k: all images, then
other patients only beside it, then the p-values of both, then the research code's skipped variant.
"""

from __future__ import annotations

import math

from trainer.cached_embeddings import BASELINES, CHEXTRIEV
from trainer.evaluation.metrics import RetrievalReport
from trainer.evaluation.results import EvaluationResult, KEvaluation
from trainer.evaluation.significance import METRICS, SIGNIFICANCE_LEVEL, PairedTest

_LABELS = {"ap": "AP", "hr": "HR", "rr": "RR"}
# Table scopes: all images (honest), other patients only (honest), all images with zero-hit queries skipped.
_ALL, _OTHER_PATIENTS, _SKIPPED = "all", "other patients", "skipped"


def render_markdown(result: EvaluationResult) -> str:
    """The whole report: what was evaluated, then per k the honest tables of both scopes, their p-values,
    and the skipped table."""
    sections = [_header(result)]
    for evaluation in result.per_k:
        sections.append(_scores_table(result, evaluation, _ALL))
        sections.append(_scores_table(result, evaluation, _OTHER_PATIENTS) if evaluation.other_patient_reports
                        else f"## Top-{evaluation.k}, other patients only: not scored (a patient in the split "
                             f"has so many images that a query would have fewer than {evaluation.k} candidates)")
        if evaluation.tests:
            sections.append(_p_value_table(result, evaluation, _ALL))
        if evaluation.other_patient_tests:
            sections.append(_p_value_table(result, evaluation, _OTHER_PATIENTS))
        sections.append(_scores_table(result, evaluation, _SKIPPED))
    return "\n\n".join(sections) + "\n"



def _header(result: EvaluationResult) -> str:
    lines = [f"# Retrieval evaluation: {result.dataset}, split '{result.split}'", ""]
    if result.atlas_regions:
        lines.append("**REGIONS FROM THE ATLAS**: the 18 regions were placed from a mean template scaled "
                     "to each image, not annotated per image; region-based methods are handicapped.")
        lines.append("")
    checkpoint = ("none: baselines only, no t-tests" if result.checkpoint_fingerprint is None
                  else f"{result.model_variant}, fingerprint `{result.checkpoint_fingerprint}`")
    lines += [
        f"- Regions: {result.regions_source}",
        f"- Backbone: {result.backbone.name} ({result.backbone.weights_id}), "
        f"fingerprint `{result.backbone.fingerprint[:16]}`",
        f"- Checkpoint: {checkpoint}",
        f"- Queries = gallery = the {result.num_queries} images of split '{result.split}' "
        f"({result.num_patients} patients); cosine similarity; a query never retrieves itself (by case id); "
        "\"other patients only\" tables leave out every image of the query's patient too",
    ]
    if result.images_without_patient_id:
        lines.append(f"- {result.images_without_patient_id} images have no patient id: each is its own patient")
    if result.absent_classes:
        lines.append(f"- Absent from the split (no positive query, not scored): {', '.join(result.absent_classes)}")
    return "\n".join(lines)


def _scores_table(result: EvaluationResult, evaluation: KEvaluation, scope: str) -> str:
    skipped, other_patients = scope == _SKIPPED, scope == _OTHER_PATIENTS
    reports = {_ALL: evaluation.reports, _OTHER_PATIENTS: evaluation.other_patient_reports,
               _SKIPPED: evaluation.skipped_reports}[scope]
    tested = not skipped and bool(evaluation.other_patient_tests if other_patients else evaluation.tests)
    title = {_ALL: f"## Top-{evaluation.k}, zero-hit queries counted as 0",
             _OTHER_PATIENTS: f"## Top-{evaluation.k}, other patients only, zero-hit queries counted as 0",
             _SKIPPED: f"## Top-{evaluation.k}, zero-hit queries SKIPPED (research code's `skip`: inflated, "
                       "for comparison with its tables only)"}[scope]
    header = ["finding", "n"] + [f"{method} {_LABELS[m]}" for method in result.methods for m in METRICS]
    lines = [title, "", _row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for c, name in enumerate(result.label_names):
        if name in result.absent_classes:
            continue
        cells = [name, str(reports[result.methods[0]].per_class[c].n_positive)]
        for method in result.methods:
            scores = reports[method].per_class[c].scores
            marked = method in BASELINES and tested
            cells += [_percent(getattr(scores, m))
                      + ("*" if marked and evaluation.test(method, name, other_patients=other_patients).significant(m)
                         else "") for m in METRICS]
        lines.append(_row(cells))
    for label, attribute in (("Mean", "mean"), ("wMean", "weighted_mean")):
        lines.append(_row([label, ""] + [_percent(getattr(getattr(reports[method], attribute), m))
                                         for method in result.methods for m in METRICS]))
    lines.append("")
    lines.append(_footnote(result, reports, skipped, tested))
    return "\n".join(lines)


def _footnote(result: EvaluationResult, reports: dict[str, RetrievalReport], skipped: bool, tested: bool) -> str:
    notes = ["Percent; n = positive queries; Mean over findings, wMean weighted by n."]
    if skipped:
        left_out = ", ".join(f"{method} {sum(r.n_positive - r.n_scored for r in reports[method].per_class)}"
                             for method in result.methods)
        notes.append(f"Zero-hit queries left out: {left_out}. No significance marks here: skipping leaves "
                     "different queries per method, which cannot be paired.")
    elif tested:
        notes.append(f"* {CHEXTRIEV} differs from this baseline (either way), paired t-test p < {SIGNIFICANCE_LEVEL}.")
    return " ".join(notes)


def _p_value_table(result: EvaluationResult, evaluation: KEvaluation, scope: str) -> str:
    other_patients = scope == _OTHER_PATIENTS
    baselines = [method for method in result.methods if method in BASELINES]
    header = ["finding", "n"] + [f"vs {baseline} {_LABELS[m]}" for baseline in baselines for m in METRICS]
    where = ", other patients only" if other_patients else ""
    lines = [f"### Top-{evaluation.k}{where}: p-values, {CHEXTRIEV} vs each baseline (paired t-test, two-sided)",
             "", _row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for name in result.label_names:
        if name in result.absent_classes:
            continue
        tests: list[PairedTest] = [evaluation.test(baseline, name, other_patients=other_patients)
                                   for baseline in baselines]
        lines.append(_row([name, str(tests[0].n_queries)]
                          + [_p_value(getattr(test.p_values, m)) for test in tests for m in METRICS]))
    lines.append("")
    lines.append(f"Each test pairs, over the finding's n positive queries, a query's score under {CHEXTRIEV} "
                 "with the same query's score under the baseline (zero-hit queries count as 0). "
                 f"The {result.num_queries} queries come from {result.num_patients} patients, and queries of "
                 "one patient are not independent: where patients have several images these p-values are "
                 "optimistic. n/a: undefined (fewer than 2 queries, or both methods scored every query alike).")
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _p_value(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"

