"""Search benchmark on synthetic clustered unit vectors: build time, memory, latency and recall per index."""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_store.errors import SnapshotInputError
from index_store.faiss_index import (
    build_index,
    default_search_parameters,
    exact_neighbours,
    index_bytes,
    recall_at_k,
)
from index_store.files import write_atomically
from index_store.manifest import utc_timestamp
from index_store.search import make_searcher
from index_store.synthetic import cluster_centres, clustered_unit_vectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark: gallery sizes x FAISS factories, on one device, written to `out` as JSON."""

    sizes: tuple[int, ...]
    dimension: int
    factories: tuple[str, ...]
    out: Path
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 50
    max_latency_seconds: float = 20.0
    recall_queries: int = 200
    k: int = 10
    clusters: int = 1024
    spread: float = 0.8
    seed: int = 0


def run_search_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run every (size, factory) case, rewriting `config.out` atomically after each; returns the report."""
    if not config.sizes or not config.factories or min(config.sizes) < config.k:
        raise SnapshotInputError(f"benchmark needs sizes of at least k={config.k} and at least one factory")
    report: dict[str, Any] = {
        "created": utc_timestamp(datetime.now(UTC)),
        "config": {
            k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
            for k, v in asdict(config).items()
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "data": "mixture of Gaussians on the unit sphere: random unit centres + isotropic noise of norm "
        "`spread`, renormalised; queries drawn from the same mixture",
        "results": [],
    }
    centres = cluster_centres(config.clusters, config.dimension, config.seed)
    queries = clustered_unit_vectors(centres, config.recall_queries, config.spread, config.seed + 1)
    for size in config.sizes:
        log.info("generating gallery", extra={"size": size, "dimension": config.dimension})
        vectors = clustered_unit_vectors(centres, size, config.spread, config.seed + 2)
        exact = exact_neighbours(vectors, queries, config.k)
        for factory in config.factories:
            log.info("benchmarking", extra={"size": size, "factory": factory, "device": config.device})
            report["results"].append(_bench_case(config, vectors, queries, exact, factory))
            write_atomically(config.out, json.dumps(report, indent=2).encode("utf-8"))
            log.info("benchmark case done", extra=report["results"][-1])
        del vectors
        gc.collect()
    return report


def _bench_case(
    config: BenchConfig, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, factory: str
) -> dict[str, Any]:
    search_parameters = default_search_parameters(factory)
    result: dict[str, Any] = {
        "size": len(vectors),
        "factory": factory,
        "search_parameters": search_parameters,
    }
    rss_before = rss_bytes()
    started = time.perf_counter()
    try:
        index = build_index(vectors, factory, search_parameters)
    except SnapshotInputError as exc:
        return {**result, "error": str(exc)}
    result["build_seconds"] = round(time.perf_counter() - started, 3)
    result["rss_delta_bytes"] = rss_bytes() - rss_before
    result["index_bytes"] = index_bytes(index)
    searcher = make_searcher(index, config.device)
    searcher.search(queries[:1], config.k)  # warm-up
    result["latency_ms"] = {
        str(batch): measure_latency(lambda b=queries[:batch]: searcher.search(b, config.k), config.repeats,
                                       config.max_latency_seconds)
        for batch in config.batch_sizes
    }
    _, found = searcher.search(queries, config.k)
    result[f"recall_at_{config.k}"] = round(recall_at_k(found, exact, config.k), 4)
    searcher.close()
    del index
    gc.collect()
    return result


def measure_latency(call, repeats: int, max_seconds: float) -> dict[str, float | int]:
    """p50/p99 wall time in ms of `call` over `repeats` runs, stopping early after `max_seconds`."""
    samples = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50": round(float(np.percentile(samples, 50)), 3),
        "p99": round(float(np.percentile(samples, 99)), 3),
        "runs": len(samples),
    }


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
