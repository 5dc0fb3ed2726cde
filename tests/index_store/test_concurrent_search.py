"""Concurrent searches through the GPU code path: the PyTorch searcher, on the CPU here, behind its lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from index_store.faiss_index import build_index
from index_store.gallery import GalleryData
from index_store.search import FaissSearcher, Searcher, SerialSearcher, TorchExactSearcher
from index_store.synthetic import cluster_centres, clustered_unit_vectors
from tests.index_store.galleries import DIMENSION

THREADS = 8
BATCHES = 48
FETCH = 10


class CountingTorchSearcher(TorchExactSearcher):
    """The real PyTorch searcher, recording the most searches that were ever inside it at the same time."""

    def __init__(self, vectors: np.ndarray):
        super().__init__(vectors, "cpu", score_budget=256)  # a small budget: many chunks, longer searches
        self._count_lock = threading.Lock()
        self._inside = 0
        self.most_inside = 0

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._count_lock:
            self._inside += 1
            self.most_inside = max(self.most_inside, self._inside)
        try:
            time.sleep(0.002)  # widen the window in which an unguarded second search would overlap
            return super().search(queries, fetch)
        finally:
            with self._count_lock:
                self._inside -= 1


def _query_batches() -> list[np.ndarray]:
    queries = clustered_unit_vectors(cluster_centres(12, DIMENSION, 0), BATCHES * 3, 0.8, 11)
    return np.split(queries, BATCHES)


def _search_from_threads(searcher: Searcher, batches: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every batch searched, spread over THREADS threads that start together; the results in batch order."""
    results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(batches)  # type: ignore[list-item]
    start = threading.Barrier(THREADS)

    def work(first: int) -> None:
        start.wait()
        for position in range(first, len(batches), THREADS):
            results[position] = searcher.search(batches[position], FETCH)

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(work, first) for first in range(THREADS)]:
            future.result()
    return results


def test_concurrent_searches_through_the_gpu_path_run_one_at_a_time_and_equal_serial_faiss(
    gallery: GalleryData,
) -> None:
    batches = _query_batches()
    expected = [FaissSearcher(build_index(gallery.embeddings, "Flat", "")).search(b, FETCH) for b in batches]
    counting = CountingTorchSearcher(gallery.embeddings)
    found = _search_from_threads(SerialSearcher(counting), batches)
    assert counting.most_inside == 1
    for (scores, rows), (expected_scores, expected_rows) in zip(found, expected, strict=True):
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_without_the_lock_the_same_searches_overlap(gallery: GalleryData) -> None:
    """The instrument sees overlap when nothing serialises: the test above would catch a missing lock."""
    counting = CountingTorchSearcher(gallery.embeddings)
    _search_from_threads(counting, _query_batches())
    assert counting.most_inside > 1
