"""Paired t-tests between two retrieval methods on the same queries, as the paper's Table 2 marks them.

For each finding, the per-query AP (and HR, RR) of the queries positive for it under one method are
paired with the same queries' values under the other, and scipy.stats.ttest_rel (two-sided) gives
the p-value. Zero-hit queries count as 0 on both sides: skipping them would leave different
queries per method and break the pairing. A p-value is NaN where the test is undefined: fewer than
two queries, or both methods scoring every query exactly alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import ttest_rel

from model.errors import MetricsInputError
from trainer.evaluation.metrics import QueryScores, Scores

SIGNIFICANCE_LEVEL = 0.05
METRICS: tuple[str, ...] = ("ap", "hr", "rr")


@dataclass(frozen=True)
class PairedTest:
    """p-values of one finding's per-query AP, HR and RR: `method` against `baseline`."""

    finding: str
    method: str
    baseline: str
    n_queries: int
    p_values: Scores

    def significant(self, metric: str) -> bool:
        """True where the p-value of `metric` ("ap", "hr" or "rr") is below SIGNIFICANCE_LEVEL."""
        p = getattr(self.p_values, metric)
        return not math.isnan(p) and p < SIGNIFICANCE_LEVEL

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN p-values become None)."""
        p_values = {name: _none_if_nan(getattr(self.p_values, name)) for name in METRICS}
        return {"finding": self.finding, "method": self.method, "baseline": self.baseline,
                "n_queries": self.n_queries, "p_values": p_values,
                "significant": {name: self.significant(name) for name in METRICS}}


def paired_p_value(values: np.ndarray, baseline_values: np.ndarray) -> float:
    """Two-sided p of scipy.stats.ttest_rel(values, baseline_values); NaN where undefined."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(baseline_values, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MetricsInputError(f"paired values must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if a.size < 2 or np.array_equal(a, b):
        return math.nan
    with warnings.catch_warnings():
        # A constant non-zero difference makes scipy warn about precision; its p of 0 is right.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_rel(a, b).pvalue)


def paired_tests(finding_names: Sequence[str], method: str, scores: QueryScores, baseline: str,
                 baseline_scores: QueryScores) -> tuple[PairedTest, ...]:
    """One PairedTest per finding, over the queries positive for it (both scored on the same queries)."""
    positive = ~np.isnan(scores.ap)
    if positive.shape != baseline_scores.ap.shape or not (positive == ~np.isnan(baseline_scores.ap)).all():
        raise MetricsInputError(f"{method} and {baseline} were not scored on the same queries and labels")
    if positive.shape[1] != len(finding_names):
        raise MetricsInputError(f"{len(finding_names)} finding names for {positive.shape[1]} classes")
    tests = []
    for c, finding in enumerate(finding_names):
        rows = positive[:, c]
        p_values = Scores(*(paired_p_value(getattr(scores, name)[rows, c], getattr(baseline_scores, name)[rows, c])
                            for name in METRICS))
        tests.append(PairedTest(finding, method, baseline, int(rows.sum()), p_values))
    return tuple(tests)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
