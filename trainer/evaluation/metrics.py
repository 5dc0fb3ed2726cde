"""Retrieval metrics exactly as CheXtriev reports them: per-finding AP, HR and RR over the top-k.

For a query positive for finding c, h[i] = 1 when the i-th retrieved item (1-based rank i) is also
positive for c:
- AP = mean over hit positions i of (hits within the first i) / i; 0 with no hit.
- HR = (number of hits) / k: a precision at k, although the paper calls it hit ratio.
- RR = 1 / (rank of the first hit); 0 with no hit.
Per finding, each is averaged over the queries positive for it. "Mean" is the unweighted mean over
the findings; "wMean" weights each finding by its number of positive queries, as the authors' code
does (the paper's text says "inversely proportional to frequency", which its numbers do not follow).
By default a query with no hit counts as 0; `skip_zero_hit=True` leaves such queries out, as the
research code's `skip` did, which inflates rare findings: use it only to compare with those tables.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from model.catalogue import FINDING_NAMES
from model.errors import MetricsInputError

logger = logging.getLogger(__name__)

# Similarity is computed for this many (query, gallery) pairs at a time in evaluate_embeddings.
_PAIRS_PER_BLOCK = 1 << 22


@dataclass(frozen=True)
class Scores:
    """AP, HR and RR as fractions in [0, 1]; NaN where there was nothing to average."""

    ap: float
    hr: float
    rr: float


@dataclass(frozen=True)
class ClassScores:
    """One finding's scores: means over its `n_scored` queries out of `n_positive` positive ones."""

    name: str
    n_positive: int
    n_scored: int
    scores: Scores


@dataclass(frozen=True)
class QueryScores:
    """Each query's AP, HR and RR for every class, arrays (Q, C); NaN where the query is not positive
    for the class. `hit` (Q, C) is True where a positive query retrieved at least one positive item."""

    ap: np.ndarray
    hr: np.ndarray
    rr: np.ndarray
    hit: np.ndarray

    def class_mean(self, c: int, rows: np.ndarray) -> Scores:
        """Mean AP, HR and RR of class `c` over the queries selected by the boolean `rows`; NaN if none."""
        if not rows.any():
            return Scores(math.nan, math.nan, math.nan)
        return Scores(*(float(values[rows, c].mean()) for values in (self.ap, self.hr, self.rr)))


@dataclass(frozen=True)
class RetrievalReport:
    """Per-finding and averaged top-k retrieval scores, with how zero-hit queries were treated."""

    k: int
    num_queries: int
    skip_zero_hit: bool
    per_class: tuple[ClassScores, ...]
    mean: Scores
    weighted_mean: Scores

    @property
    def missing_classes(self) -> tuple[str, ...]:
        """Findings with no query to average over: NaN, and left out of both means."""
        return tuple(row.name for row in self.per_class if row.n_scored == 0)

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN becomes None)."""
        return {
            "k": self.k,
            "num_queries": self.num_queries,
            "skip_zero_hit": self.skip_zero_hit,
            "weighting": "wMean weights each finding by its number of positive queries",
            "per_class": [
                {"name": row.name, "n_positive": row.n_positive, "n_scored": row.n_scored,
                 **_scores_dict(row.scores)}
                for row in self.per_class
            ],
            "mean": _scores_dict(self.mean),
            "weighted_mean": _scores_dict(self.weighted_mean),
            "missing_classes": list(self.missing_classes),
        }

    def to_markdown(self) -> str:
        """A table like the paper's Table 2 (percent, one decimal), then how it was computed."""
        lines = ["| finding | AP | HR | RR | n |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {row.name} | {_percent_cells(row.scores)} | {row.n_positive} |"
                  for row in self.per_class]
        lines.append(f"| Mean | {_percent_cells(self.mean)} |  |")
        lines.append(f"| wMean | {_percent_cells(self.weighted_mean)} |  |")
        lines.append("")
        lines.append(f"Top-{self.k} retrieval, {self.num_queries} queries; n = positive queries; "
                     "wMean weights each finding by n.")
        if self.skip_zero_hit:
            skipped = sum(row.n_positive - row.n_scored for row in self.per_class)
            lines.append(f"Zero-hit queries SKIPPED ({skipped} left out), as the research code's "
                         "`skip` did: inflated, for comparison only.")
        else:
            lines.append("Zero-hit queries not skipped (they score 0).")
        if self.missing_classes:
            lines.append("No query to score, left out of the means: "
                         + ", ".join(self.missing_classes) + ".")
        return "\n".join(lines)


def average_precision(hits: Sequence[int | bool]) -> float:
    """Mean over hit positions i of (hits within the first i)/i; 0 when there is no hit."""
    return float(_per_query_scores(_hit_row(hits))[0][0])


def hit_ratio(hits: Sequence[int | bool], k: int | None = None) -> float:
    """Number of hits / k, where k (default: len(hits)) may exceed the number of items retrieved."""
    row = _hit_row(hits)
    k = row.shape[1] if k is None else k
    if not _is_int(k) or k < row.shape[1]:
        raise MetricsInputError(f"k must be an integer >= len(hits) = {row.shape[1]}, got {k!r}")
    return float(row.sum()) / k


def reciprocal_rank(hits: Sequence[int | bool]) -> float:
    """1 / (1-based rank of the first hit); 0 when there is no hit."""
    return float(_per_query_scores(_hit_row(hits))[2][0])


def retrieve_top_k(
    similarity: np.ndarray,
    k: int,
    query_ids: Sequence[Hashable],
    gallery_ids: Sequence[Hashable],
    query_groups: Sequence[Hashable] | None = None,
    gallery_groups: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Indices (Q, k) of each query's k most similar gallery items, best first.

    A gallery item whose id equals the query's id is the query itself and is never returned
    (identity, not position: a duplicate image under another id stays eligible). With groups
    (e.g. patient ids), every gallery item of the query's group is excluded too. Ties are broken
    by the lower gallery index. Raises MetricsInputError when a query has fewer than k eligible
    items.
    """
    sim = np.asarray(similarity)
    if sim.ndim != 2 or not np.issubdtype(sim.dtype, np.number) or not np.isfinite(sim).all():
        raise MetricsInputError(f"similarity must be a finite 2-D numeric array, got shape "
                                f"{sim.shape} of {sim.dtype}")
    num_queries, num_gallery = sim.shape
    if not _is_int(k) or k < 1:
        raise MetricsInputError(f"k must be a positive integer, got {k!r}")
    query_codes, gallery_codes = _codes(query_ids, gallery_ids, num_queries, num_gallery, "ids")
    if len(set(gallery_codes.tolist())) != num_gallery:
        raise MetricsInputError("gallery_ids must be unique")
    eligible = query_codes[:, None] != gallery_codes[None, :]
    if (query_groups is None) != (gallery_groups is None):
        raise MetricsInputError("give both query_groups and gallery_groups, or neither")
    if query_groups is not None:
        query_group_codes, gallery_group_codes = _codes(
            query_groups, gallery_groups, num_queries, num_gallery, "groups")
        eligible &= query_group_codes[:, None] != gallery_group_codes[None, :]
    counts = eligible.sum(axis=1)
    if num_queries and counts.min() < k:
        worst = int(counts.argmin())
        raise MetricsInputError(
            f"query '{query_ids[worst]}' has only {int(counts[worst])} eligible gallery items "
            f"after excluding itself{' and its group' if query_groups is not None else ''}; "
            f"need k={k}")
    return _top_k_indices(np.where(eligible, sim.astype(np.float64), -np.inf), k)


def query_scores(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ranked: np.ndarray,
) -> QueryScores:
    """Per-query AP, HR and RR of ranked results (Q, k) for every class, e.g. for paired tests.

    Same inputs as evaluate_retrieval; a query that is not positive for a class gets NaN there.
    """
    queries = _labels(query_labels, "query_labels")
    gallery = _labels(gallery_labels, "gallery_labels")
    if queries.shape[1] != gallery.shape[1]:
        raise MetricsInputError(f"class counts disagree: query_labels {queries.shape[1]}, "
                                f"gallery_labels {gallery.shape[1]}")
    return _query_scores(queries, gallery, _ranked(ranked, queries.shape[0], gallery.shape[0]))


def evaluate_retrieval(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ranked: np.ndarray,
    class_names: Sequence[str] = FINDING_NAMES,
    skip_zero_hit: bool = False,
) -> RetrievalReport:
    """Score ranked results (Q, k) of gallery indices against multi-label ground truth.

    query_labels (Q, C) and gallery_labels (N, C) are boolean (or 0/1). The ranking must already
    exclude each query itself (see retrieve_top_k).
    """
    queries = _labels(query_labels, "query_labels")
    gallery = _labels(gallery_labels, "gallery_labels")
    names = tuple(class_names)
    if queries.shape[1] != gallery.shape[1] or len(names) != queries.shape[1]:
        raise MetricsInputError(
            f"class counts disagree: query_labels {queries.shape[1]}, gallery_labels "
            f"{gallery.shape[1]}, class_names {len(names)}")
    if len(set(names)) != len(names):
        raise MetricsInputError("class_names must be unique")
    ranked = _ranked(ranked, queries.shape[0], gallery.shape[0])
    k = ranked.shape[1]
    per_query = _query_scores(queries, gallery, ranked)
    rows = []
    for c, name in enumerate(names):
        positive = queries[:, c]
        scored = positive & per_query.hit[:, c] if skip_zero_hit else positive
        rows.append(ClassScores(name, int(positive.sum()), int(scored.sum()),
                                per_query.class_mean(c, scored)))
    report = RetrievalReport(k, queries.shape[0], bool(skip_zero_hit), tuple(rows),
                             _class_mean(rows, weighted=False), _class_mean(rows, weighted=True))
    logger.info("retrieval evaluated", extra={
        "k": k, "num_queries": report.num_queries, "skip_zero_hit": report.skip_zero_hit,
        "mean_ap": report.mean.ap, "missing_classes": list(report.missing_classes)})
    return report


def evaluate_embeddings(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[Hashable],
    k: int,
    class_names: Sequence[str] = FINDING_NAMES,
    groups: Sequence[Hashable] | None = None,
    skip_zero_hit: bool = False,
) -> RetrievalReport:
    """Evaluate a test set as both queries and gallery, by cosine similarity (see rank_by_cosine)."""
    if np.shape(labels)[:1] != np.shape(embeddings)[:1]:
        raise MetricsInputError(f"embeddings ({np.shape(embeddings)[:1]}) and labels "
                                f"({np.shape(labels)[:1]}) must describe the same items")
    ranked = rank_by_cosine(embeddings, ids, k, groups)
    return evaluate_retrieval(labels, labels, ranked, class_names, skip_zero_hit)


def rank_by_cosine(
    embeddings: np.ndarray,
    ids: Sequence[Hashable],
    k: int,
    groups: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Indices (N, k) of each item's k most cosine-similar other items of the same set, best first.

    Each item retrieves its top-k among the others (never itself, by id); with `groups` (e.g.
    patient ids) it also never retrieves an item of its own group, which the research code did not
    exclude. Similarity is computed in blocks of queries, so large test sets fit in memory.
    """
    vectors = np.asarray(embeddings)
    if (vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number)
            or not np.isfinite(vectors).all()):
        raise MetricsInputError(f"embeddings must be a finite 2-D numeric array, got shape "
                                f"{vectors.shape} of {vectors.dtype}")
    ids = list(ids)
    if len(ids) != len(vectors):
        raise MetricsInputError(
            f"embeddings ({len(vectors)}) and ids ({len(ids)}) must describe the same items")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise MetricsInputError(f"embedding of '{ids[int(np.argmin(norms))]}' is all zeros; "
                                "cosine similarity is undefined")
    vectors = vectors.astype(np.float64) / norms
    groups = None if groups is None else list(groups)
    block = max(1, _PAIRS_PER_BLOCK // max(1, len(vectors)))
    ranked = [
        retrieve_top_k(vectors[start:start + block] @ vectors.T, k, ids[start:start + block], ids,
                       None if groups is None else groups[start:start + block], groups)
        for start in range(0, len(vectors), block)
    ]
    return np.concatenate(ranked) if ranked else np.zeros((0, k), dtype=np.int64)


def _per_query_scores(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, HR and RR of each row of a (Q, k) boolean hit matrix."""
    k = hits.shape[1]
    num_hits = hits.sum(axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = np.where(num_hits > 0, (precision_at * hits).sum(axis=1) / np.maximum(num_hits, 1), 0.0)
    rr = np.where(num_hits > 0, 1.0 / (hits.argmax(axis=1) + 1), 0.0)
    return ap, num_hits / k, rr


def _query_scores(queries: np.ndarray, gallery: np.ndarray, ranked: np.ndarray) -> QueryScores:
    """QueryScores of checked boolean labels and a checked ranking."""
    hits = gallery[ranked].transpose(0, 2, 1)  # (Q, C, k): is the i-th retrieved item positive for c
    num_queries, num_classes, k = hits.shape
    scores = [np.where(queries, values.reshape(num_queries, num_classes), np.nan)
              for values in _per_query_scores(hits.reshape(-1, k))]
    return QueryScores(*scores, hit=queries & hits.any(axis=2))


def _top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the k largest scores, best first, ties to the lower index."""
    if scores.shape[0] == 0:
        return np.zeros((0, k), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    above = scores > kth
    tied = scores == kth
    # Of the items tied with the k-th score, keep only as many as are needed, lowest index first.
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= k - above.sum(axis=1, keepdims=True)))
    indices = np.nonzero(chosen)[1].reshape(scores.shape[0], k)  # ascending within each row
    order = np.argsort(-np.take_along_axis(scores, indices, axis=1), axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1)


def _class_mean(rows: Sequence[ClassScores], weighted: bool) -> Scores:
    """Mean of the scored classes' scores, unweighted or weighted by positive-query count."""
    scored = [row for row in rows if row.n_scored > 0]
    if not scored:
        return Scores(math.nan, math.nan, math.nan)
    weights = [row.n_positive for row in scored] if weighted else None
    values = np.array([[row.scores.ap, row.scores.hr, row.scores.rr] for row in scored])
    return Scores(*(float(v) for v in np.average(values, axis=0, weights=weights)))


def _hit_row(hits: Sequence[int | bool]) -> np.ndarray:
    """One query's hits as a (1, k) boolean matrix, after checking they are 0/1 and not empty."""
    row = np.asarray(hits)
    if row.ndim != 1 or row.size == 0:
        raise MetricsInputError(f"hits must be a non-empty 1-D sequence, got shape {row.shape}")
    return _binary(row, "hits")[None, :]


def _labels(labels: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2:
        raise MetricsInputError(f"{name} must be 2-D (items, classes), got shape {array.shape}")
    return _binary(array, name)


def _binary(array: np.ndarray, name: str) -> np.ndarray:
    """`array` as booleans; only bool or numbers equal to 0 or 1 are accepted."""
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.isin(array, (0, 1)).all():
        raise MetricsInputError(f"{name} must hold only 0/1 or booleans")
    return array == 1


def _ranked(ranked: np.ndarray, num_queries: int, num_gallery: int) -> np.ndarray:
    array = np.asarray(ranked)
    if array.ndim != 2 or array.shape[0] != num_queries or array.shape[1] < 1:
        raise MetricsInputError(f"ranked must have shape ({num_queries}, k>=1), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise MetricsInputError(f"ranked must hold integer gallery indices, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_gallery):
        raise MetricsInputError(f"ranked holds indices outside the gallery [0, {num_gallery})")
    if array.shape[1] > 1 and (np.diff(np.sort(array, axis=1), axis=1) == 0).any():
        raise MetricsInputError("ranked lists a gallery item twice for one query")
    return array


def _codes(query_keys: Sequence[Hashable], gallery_keys: Sequence[Hashable], num_queries: int,
           num_gallery: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for query and gallery keys, equal exactly where the keys are equal."""
    if len(query_keys) != num_queries or len(gallery_keys) != num_gallery:
        raise MetricsInputError(
            f"{what}: expected {num_queries} query and {num_gallery} gallery entries, got "
            f"{len(query_keys)} and {len(gallery_keys)}")
    table: dict[Hashable, int] = {}
    try:
        query_codes = [table.setdefault(key, len(table)) for key in query_keys]
        gallery_codes = [table.setdefault(key, len(table)) for key in gallery_keys]
    except TypeError as error:
        raise MetricsInputError(f"{what} must be hashable: {error}") from None
    return np.array(query_codes, dtype=np.int64), np.array(gallery_codes, dtype=np.int64)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _scores_dict(scores: Scores) -> dict[str, float | None]:
    return {name: None if math.isnan(value) else value
            for name, value in (("ap", scores.ap), ("hr", scores.hr), ("rr", scores.rr))}


def _percent_cells(scores: Scores) -> str:
    return " | ".join("n/a" if math.isnan(v) else f"{100 * v:.1f}"
                      for v in (scores.ap, scores.hr, scores.rr))
