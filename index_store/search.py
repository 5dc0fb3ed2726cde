"""Top-k inner-product search back ends (FAISS CPU/GPU, exact PyTorch) and exclusion-aware over-fetching."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from index_store.errors import SnapshotInputError
from index_store.faiss_index import flat_vectors, is_exact

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
_TORCH_SCORE_BUDGET = 1 << 24  # elements of one (queries x gallery chunk) score block: 64 MiB of float32


@dataclass(frozen=True)
class Exclusion:
    """Gallery items a query must not return: by case id (e.g. the query itself) and by group key (same patient)."""

    case_ids: frozenset[str] = frozenset()
    group_keys: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QueryHits:
    """The results of one query, best first, and the snapshot version that served them."""

    index_version: str
    case_ids: tuple[str, ...]
    scores: tuple[float, ...]
    ranks: tuple[int, ...]


class CaseRows:
    """A snapshot's case ids in row order and its patient groups: row lookups and the rows an exclusion removes."""

    def __init__(self, case_ids: tuple[str, ...], group_keys: tuple[str, ...] | None):
        self.case_ids = case_ids
        self.has_group_keys = group_keys is not None
        self._rows = {case_id: row for row, case_id in enumerate(case_ids)}
        grouped: dict[str, list[int]] = defaultdict(list)
        for row, key in enumerate(group_keys or ()):
            grouped[key].append(row)
        self._group_rows = {key: np.asarray(rows, dtype=np.int64) for key, rows in grouped.items()}

    def row(self, case_id: str) -> int | None:
        """The row of `case_id`, or None when the snapshot does not hold it."""
        return self._rows.get(case_id)

    def excluded(self, exclusion: Exclusion, version: str) -> np.ndarray:
        """The sorted rows `exclusion` removes; SnapshotInputError for group keys the snapshot `version` lacks."""
        if exclusion.group_keys and not self.has_group_keys:
            raise SnapshotInputError(f"snapshot {version} has no group keys to exclude by")
        rows = [self._rows[c] for c in exclusion.case_ids if c in self._rows]
        groups = [self._group_rows[g] for g in exclusion.group_keys if g in self._group_rows]
        return np.unique(np.concatenate([np.asarray(rows, dtype=np.int64), *groups]))


def check_queries(queries: np.ndarray, dimension: int) -> np.ndarray:
    """Queries (Q, D) or one query (D,) as a contiguous float32 (Q, D) batch; SnapshotInputError otherwise."""
    batch = np.asarray(queries)
    if batch.ndim == 1:
        batch = batch[None, :]
    if batch.ndim != 2 or batch.shape[1] != dimension or batch.shape[0] == 0:
        raise SnapshotInputError(
            f"queries must have shape (Q, {dimension}) or ({dimension},), got {np.shape(queries)}"
        )
    if batch.dtype.kind != "f" or not np.isfinite(batch).all():
        raise SnapshotInputError("queries must be finite floating-point vectors")
    return np.ascontiguousarray(batch, dtype=np.float32)


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SnapshotInputError(f"k must be a positive integer, got {k!r}")


def per_query(exclusions: Exclusion | Sequence[Exclusion] | None, count: int) -> list[Exclusion]:
    """One Exclusion per query, from none, one for all, or one each."""
    if exclusions is None:
        return [Exclusion()] * count
    if isinstance(exclusions, Exclusion):
        return [exclusions] * count
    if len(exclusions) != count:
        raise SnapshotInputError(f"{len(exclusions)} exclusions given for {count} queries")
    return list(exclusions)


class Searcher(Protocol):
    """A top-k back end: rows (Q, fetch) int64 (-1 where fewer found) and their scores, best first."""

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class FaissSearcher:
    """Search with a FAISS index (CPU, or GPU when `resources` holds the GPU resources it was copied with)."""

    def __init__(self, index: faiss.Index, resources: object | None = None):
        self._index = index
        self._resources = resources

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self._index.search(queries, fetch)
        return scores, rows.astype(np.int64, copy=False)

    def close(self) -> None:
        self._index = None
        self._resources = None


class SerialSearcher:
    """Runs the searches of a back end that is not thread-safe one at a time (FAISS GPU, PyTorch on CUDA)."""

    def __init__(self, searcher: Searcher):
        self._searcher = searcher
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._searcher.search(queries, fetch)

    def close(self) -> None:
        with self._lock:
            self._searcher.close()


class TorchExactSearcher:
    """Exact inner-product top-k in PyTorch (float32 matmul + topk), chunked over the gallery to bound memory.

    `score_budget` bounds the elements of one (queries x gallery chunk) score block.
    """

    def __init__(self, vectors: np.ndarray, device: str, score_budget: int = _TORCH_SCORE_BUDGET):
        import torch

        self._torch = torch
        self._score_budget = score_budget
        self._device = torch.device(device)
        self._gallery = torch.tensor(np.asarray(vectors, dtype=np.float32), device=self._device)

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        gallery = self._gallery
        query = torch.as_tensor(queries, dtype=torch.float32).to(self._device)
        chunk_rows = max(fetch, self._score_budget // max(1, len(query)))
        best_scores = torch.empty((len(query), 0), dtype=torch.float32, device=self._device)
        best_rows = torch.empty((len(query), 0), dtype=torch.int64, device=self._device)
        with torch.inference_mode():
            for start in range(0, len(gallery), chunk_rows):
                scores = query @ gallery[start : start + chunk_rows].T
                top = scores.topk(min(fetch, scores.shape[1]), dim=1)
                merged_scores = torch.cat([best_scores, top.values], dim=1)
                merged_rows = torch.cat([best_rows, top.indices + start], dim=1)
                keep = merged_scores.topk(min(fetch, merged_scores.shape[1]), dim=1)
                best_scores = keep.values
                best_rows = merged_rows.gather(1, keep.indices)
        return best_scores.cpu().numpy(), best_rows.cpu().numpy()

    def close(self) -> None:
        self._gallery = None


def make_searcher(index: faiss.Index, device: str) -> Searcher:
    """The back end for `device`: FAISS on the CPU; on "cuda" FAISS GPU when installed, else exact PyTorch.

    CPU FAISS searches run concurrently; the GPU back ends are not thread-safe and run one search at a time.
    """
    if device not in DEVICES:
        raise SnapshotInputError(f"unknown search device {device!r}; use one of {DEVICES}")
    if device == "cpu":
        return FaissSearcher(index)
    import torch

    if not torch.cuda.is_available():
        raise SnapshotInputError("search device 'cuda' was requested but no CUDA device is available")
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, torch.cuda.current_device(), index)
        return SerialSearcher(FaissSearcher(gpu_index, resources))
    if is_exact(index):
        return SerialSearcher(TorchExactSearcher(flat_vectors(index), "cuda"))
    log.warning("faiss-gpu is not installed and the index is approximate: searching it with FAISS on the CPU")
    return FaissSearcher(index)


def search_excluding(
    searcher: Searcher, queries: np.ndarray, k: int, excluded_rows: list[np.ndarray], count: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, up to k (scores, rows) outside its excluded rows: over-fetch, doubling until k or the gallery ends."""
    results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
    pending = np.arange(len(queries))
    fetch = min(count, k + max(len(rows) for rows in excluded_rows))
    while pending.size:
        scores, rows = searcher.search(queries[pending], fetch)
        unfinished = []
        for position, query in enumerate(pending):
            keep = rows[position] >= 0
            if excluded_rows[query].size:
                keep &= ~np.isin(rows[position], excluded_rows[query])
            found_rows, found_scores = rows[position][keep][:k], scores[position][keep][:k]
            if len(found_rows) < k and fetch < count:
                unfinished.append(query)
            else:
                results[query] = (found_scores, found_rows)
        pending = np.asarray(unfinished, dtype=np.int64)
        fetch = min(count, fetch * 2)
    return results
