"""Benchmark of the index back ends on the same synthetic gallery and queries: the local exact snapshot
against Milvus (FLAT, HNSW, IVF_FLAT): publish (build) time, open time (every checksum and the canary),
memory, single-query latency p50/p99 through the serving path (a snapshot's search) and recall@10
against exact search.

Milvus is milvus-lite (a fresh file per size, in this process, so its memory is this process's) unless
a server URI is given; then the memory figure is the client's only, and the benchmark drops the
collections it published."""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import platform
import tempfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index_store.backend import IndexBackend
from index_store.bench import measure_latency, rss_bytes
from index_store.errors import SnapshotInputError
from index_store.faiss_index import EXACT_FACTORY, exact_neighbours, recall_at_k
from index_store.files import write_atomically
from index_store.gallery import GalleryData
from index_store.local_backend import LocalBackend
from index_store.manifest import utc_timestamp
from index_store.milvus_backend import MilvusBackend, MilvusConfig
from index_store.milvus_layout import INDEX_TYPES, collection_name
from index_store.synthetic import cluster_centres, clustered_unit_vectors

log = logging.getLogger(__name__)

_FINGERPRINT = "sha256:backend-benchmark"


@dataclass(frozen=True)
class BackendBenchConfig:
    """Gallery sizes x (local Flat + the Milvus index types), written to `out` as JSON after each case."""

    sizes: tuple[int, ...]
    out: Path
    dimension: int = 1024
    milvus_indexes: tuple[str, ...] = INDEX_TYPES
    milvus_uri: str | None = None  # None: a fresh milvus-lite file per size
    milvus_token: str = ""
    work_dir: Path | None = None  # where the local store, milvus-lite files and sidecars go (default: TMPDIR)
    queries: int = 200
    repeats: int = 200
    max_latency_seconds: float = 30.0
    k: int = 10
    clusters: int = 1024
    spread: float = 0.8
    seed: int = 0


def run_backend_benchmark(config: BackendBenchConfig) -> dict[str, Any]:
    """Run every (size, back end, index) case, rewriting `config.out` atomically after each; returns the report."""
    if not config.sizes or min(config.sizes) < config.k:
        raise SnapshotInputError(f"benchmark needs sizes of at least k={config.k}")
    report: dict[str, Any] = {
        "created": utc_timestamp(datetime.now(UTC)),
        "config": {key: list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path)
                   else value for key, value in asdict(config).items() if key != "milvus_token"},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__,
                    "pymilvus": package_version("pymilvus"), "milvus_lite": package_version("milvus-lite")},
        "data": "mixture of Gaussians on the unit sphere (index_store.synthetic); queries from the same mixture",
        "memory": "RSS growth of this process over publish + open"
                  + (" (the Milvus server's memory is not included)" if config.milvus_uri else
                     " (milvus-lite runs in this process)"),
        "results": [],
    }
    centres = cluster_centres(config.clusters, config.dimension, config.seed)
    queries = clustered_unit_vectors(centres, config.queries, config.spread, config.seed + 1)
    for size in config.sizes:
        vectors = clustered_unit_vectors(centres, size, config.spread, config.seed + 2)
        gallery = GalleryData(vectors, tuple(f"case-{i}" for i in range(size)),
                              tuple(f"patient-{i // 4}" for i in range(size)))
        exact = exact_neighbours(vectors, queries, config.k)
        with tempfile.TemporaryDirectory(prefix="chextriev-bench-", dir=config.work_dir) as work, closing(
                MilvusBackend(MilvusConfig(uri=config.milvus_uri or str(Path(work) / "milvus.db"),
                                           sidecar_root=Path(work) / "sidecars", token=config.milvus_token))
        ) as milvus:
            cases = [(LocalBackend(Path(work) / "store"), EXACT_FACTORY)]
            cases += [(milvus, kind) for kind in config.milvus_indexes]
            for backend, factory in cases:
                log.info("benchmarking", extra={"size": size, "backend": backend.name, "factory": factory})
                report["results"].append(_bench_case(config, backend, factory, gallery, queries, exact))
                write_atomically(config.out, json.dumps(report, indent=2).encode("utf-8"))
                log.info("benchmark case done", extra=report["results"][-1])
        del vectors, gallery
        gc.collect()
    return report


def _bench_case(config: BackendBenchConfig, backend: IndexBackend, factory: str, gallery: GalleryData,
                queries: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    version = f"bench-{len(gallery.case_ids)}-{factory.lower()}-{time.time_ns()}"
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    manifest = backend.publish_gallery(gallery, model_fingerprint=_FINGERPRINT, factory=factory, version=version)
    built = time.perf_counter()
    snapshot = backend.open_version(version, expected_fingerprint=_FINGERPRINT)
    opened = time.perf_counter()
    gc.collect()
    result: dict[str, Any] = {
        "size": manifest.count, "backend": backend.name, "factory": manifest.factory,
        "search_parameters": manifest.search_parameters,
        "build_seconds": round(built - started, 3), "open_seconds": round(opened - built, 3),
        "rss_delta_bytes": rss_bytes() - rss_before,
    }
    each = itertools.cycle(queries)
    snapshot.search(queries[0], config.k)  # warm-up
    result["latency_ms"] = measure_latency(lambda: snapshot.search(next(each), config.k), config.repeats,
                                           config.max_latency_seconds)
    found = np.asarray([[int(case_id.removeprefix("case-")) for case_id in hits.case_ids]
                        for hits in snapshot.search(queries, config.k)])
    result[f"recall_at_{config.k}"] = round(recall_at_k(found, exact, config.k), 4)
    snapshot.close()
    if isinstance(backend, MilvusBackend) and config.milvus_uri:
        backend.client.drop_collection(collection_name(version))
    return result
