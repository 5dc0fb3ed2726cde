"""FAISS indexes from factory strings (inner-product metric): build with training, search parameters, recall."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss
import numpy as np

from index_store.errors import SnapshotCorruptError, SnapshotInputError

log = logging.getLogger(__name__)

EXACT_FACTORY = "Flat"


def default_search_parameters(factory: str) -> str:
    """Search-time settings used when none are configured: nprobe for IVF, efSearch for HNSW, none otherwise."""
    components = [part.strip() for part in factory.split(",")]
    if any(part.startswith("IVF") for part in components):
        return "nprobe=32"
    if any(part.startswith("HNSW") for part in components):
        return "efSearch=128"
    return ""


def build_index(vectors: np.ndarray, factory: str, search_parameters: str) -> faiss.Index:
    """An inner-product index of `vectors` (float32 (N, D)) from a FAISS factory string, trained on them if needed."""
    dimension = vectors.shape[1]
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise SnapshotInputError(
            f"invalid FAISS factory string {factory!r} for dimension {dimension}: {exc}"
        ) from exc
    started = time.perf_counter()
    if not index.is_trained:
        _skip_polysemous_training(index)
        try:
            index.train(vectors)
        except RuntimeError as exc:
            raise SnapshotInputError(
                f"FAISS index {factory!r} could not be trained on {len(vectors)} vectors: {exc}"
            ) from exc
        log.info(
            "index trained",
            extra={"factory": factory, "count": len(vectors), "seconds": time.perf_counter() - started},
        )
    index.add(vectors)
    apply_search_parameters(index, search_parameters)
    log.info(
        "index built",
        extra={"factory": factory, "count": len(vectors), "seconds": time.perf_counter() - started},
    )
    return index


def _skip_polysemous_training(index: faiss.Index) -> None:
    """Factory-made PQ indexes train polysemous codes, used only by Hamming-filtered search (off here); it is
    the slowest part of their training (about 50 s of 56 s for IVF1024,PQ64 on 10k 1024-d vectors here)."""
    for candidate in (index, faiss.try_extract_index_ivf(index)):
        if candidate is not None and hasattr(
            inner := faiss.downcast_index(candidate), "do_polysemous_training"
        ):
            inner.do_polysemous_training = False


def apply_search_parameters(index: faiss.Index, search_parameters: str) -> None:
    """Apply settings such as "nprobe=32" or "efSearch=128" (comma-separated); empty means none."""
    if not search_parameters:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_parameters)
    except RuntimeError as exc:
        raise SnapshotInputError(f"invalid FAISS search parameters {search_parameters!r}: {exc}") from exc


def is_exact(index: faiss.Index) -> bool:
    """True for a flat (brute-force) index, whose scores are exact inner products."""
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def flat_vectors(index: faiss.Index) -> np.ndarray:
    """A read-only view of the vectors stored in a flat index (valid while the index lives)."""
    flat = faiss.downcast_index(index)
    view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    view.flags.writeable = False
    return view


def enable_reconstruction(index: faiss.Index) -> None:
    """Let `index.reconstruct` work for IVF indexes too (adds a row -> list map, 8 bytes per vector)."""
    try:
        faiss.extract_index_ivf(index).make_direct_map()
    except RuntimeError:
        pass  # not an IVF index: reconstruct works without a map


def write_index(index: faiss.Index, writer) -> None:
    """Serialise `index` into a binary file-like `writer` (anything with write(bytes))."""
    faiss.write_index(index, faiss.PyCallbackIOWriter(writer.write))


def read_index(path: Path) -> faiss.Index:
    """Read an index file; a damaged file raises SnapshotCorruptError naming it."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise SnapshotCorruptError(
            f"{path.name} in {path.parent}: FAISS cannot read it ({exc})", path
        ) from exc


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index in bytes, counted without holding a copy in memory."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows (Q, k) of the exact top-k inner products of `queries` over `vectors`, without building an index."""
    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def recall_at_k(found_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k  ∩  exact top-k| / k."""
    hits = [
        len(set(found[:k].tolist()) & set(exact[:k].tolist()))
        for found, exact in zip(found_rows, exact_rows, strict=True)
    ]
    return float(np.mean(hits)) / k


def measure_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of `index` (built over `vectors`) against exact inner-product search, on `queries`."""
    _, found = index.search(queries, k)
    return recall_at_k(found, exact_neighbours(vectors, queries, k), k)
