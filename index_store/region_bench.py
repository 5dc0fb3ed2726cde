"""Benchmark of region-level search (index_store.region_search) on synthetic galleries: the exact scan
of the region file against re-ranking a whole-image shortlist of M cases, for 1, 2 or 4 regions of
interest. Per case: latency p50/p99 of a single query through a local snapshot's `search_regions`,
recall@k of re-ranking against the exact region ranking, the region file's size, and the RSS growth of
opening the snapshot (its whole-image Flat index, N x D floats; the region file is read per search, so it
lives in the kernel's page cache, not in the process); at the end, how the latency grows with the
gallery size (the slope of log latency against log size, and milliseconds per 100k cases).

Synthetic cases (index_store.synthetic.region_gallery): each region's vector drawn from that region's own
mixture of Gaussians, the image vector the normalised mean of the region vectors, as in the network.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from index_store.bench import measure_latency, rss_bytes
from index_store.errors import SnapshotInputError
from index_store.files import write_atomically
from index_store.gallery import GalleryData
from index_store.manifest import REGION_FILE, utc_timestamp
from index_store.snapshot import Snapshot, open_snapshot, write_snapshot
from index_store.synthetic import region_centres, region_gallery

log = logging.getLogger(__name__)

_FINGERPRINT = "sha256:region-benchmark"
EXACT = "exact"


@dataclass(frozen=True)
class RegionBenchConfig:
    """Gallery sizes x dimensions x regions of interest x (exact, shortlists), written to `out` as JSON."""

    sizes: tuple[int, ...]
    out: Path
    dimensions: tuple[int, ...] = (256,)
    regions_of_interest: tuple[int, ...] = (1, 2, 4)
    shortlists: tuple[int, ...] = (100, 1000)
    region_count: int = 18
    work_dir: Path | None = None  # where the temporary snapshots go (default: TMPDIR)
    queries: int = 50
    repeats: int = 50
    max_latency_seconds: float = 20.0
    k: int = 10
    clusters: int = 64
    spread: float = 0.8
    seed: int = 0


def run_region_benchmark(config: RegionBenchConfig) -> dict[str, Any]:
    """Run every case, rewriting `config.out` atomically after each; returns the report."""
    if not config.sizes or min(config.sizes) < max(config.k, *config.shortlists):
        raise SnapshotInputError(f"benchmark sizes must be at least k={config.k} and every shortlist")
    if max(config.regions_of_interest) > config.region_count:
        raise SnapshotInputError(f"at most {config.region_count} regions of interest")
    report: dict[str, Any] = {
        "created": utc_timestamp(datetime.now(UTC)),
        "config": {key: list(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path)
                   else value for key, value in asdict(config).items()},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__},
        "data": "per case and region a vector of that region's mixture of Gaussians on the unit sphere; the "
                "image vector is the normalised mean of the case's region vectors (as in the network); "
                "queries drawn the same way",
        "results": [],
    }
    for dimension in config.dimensions:
        centres = region_centres(config.region_count, config.clusters, dimension, config.seed)
        query_images, query_nodes = region_gallery(centres, config.queries, config.spread, config.seed + 1000)
        for size in config.sizes:
            log.info("generating gallery", extra={"size": size, "dimension": dimension})
            images, nodes = region_gallery(centres, size, config.spread, config.seed + 2000)
            gallery = GalleryData(images, tuple(f"case-{i}" for i in range(size)), region_embeddings=nodes)
            with tempfile.TemporaryDirectory(prefix="chextriev-region-bench-", dir=config.work_dir) as work:
                directory = Path(work) / "snapshot"
                directory.mkdir()
                write_snapshot(directory, gallery, model_fingerprint=_FINGERPRINT)
                del gallery, images, nodes
                gc.collect()
                rss_before = rss_bytes()
                snapshot = open_snapshot(directory)
                opened = {"size": size, "dimension": dimension,
                          "region_file_bytes": (directory / REGION_FILE).stat().st_size,
                          "image_vectors_bytes": size * dimension * 4,
                          "rss_delta_open_bytes": rss_bytes() - rss_before}
                try:
                    for count in config.regions_of_interest:
                        regions = tuple(int(r) for r in np.random.default_rng(count).permutation(
                            config.region_count)[:count])
                        report["results"] += _bench_regions(config, snapshot, regions, query_images, query_nodes,
                                                            opened)
                        write_atomically(config.out, json.dumps(report, indent=2).encode("utf-8"))
                finally:
                    snapshot.close()
    report["growth"] = growth(report["results"])
    write_atomically(config.out, json.dumps(report, indent=2).encode("utf-8"))
    return report


def _bench_regions(config: RegionBenchConfig, snapshot: Snapshot, regions: tuple[int, ...],
                   query_images: np.ndarray, query_nodes: np.ndarray, opened: dict[str, Any]) -> list[dict[str, Any]]:
    """The exact scan and each shortlist for one set of regions: latency, and recall against the exact ranking."""
    queries = range(len(query_nodes))
    exact = [set(snapshot.search_regions(query_nodes[q], regions, config.k).case_ids) for q in queries]
    results = []
    for shortlist in (None, *config.shortlists):
        def search(q: int, shortlist: int | None = shortlist):
            return snapshot.search_regions(query_nodes[q], regions, config.k, shortlist=shortlist,
                                           image_query=query_images[q])

        each = itertools.cycle(queries)
        search(0)  # warm-up: the region file's blocks into the page cache
        latency = measure_latency(lambda search=search, each=each: search(next(each)), config.repeats,
                                  config.max_latency_seconds)
        recall = np.mean([len(set(search(q).case_ids) & exact[q]) / config.k for q in queries])
        result = {**opened, "regions_of_interest": len(regions), "regions": list(regions),
                  "mode": EXACT if shortlist is None else f"shortlist {shortlist}", "shortlist": shortlist,
                  "latency_ms": latency, f"recall_at_{config.k}": round(float(recall), 4)}
        log.info("benchmark case done", extra=result)
        results.append(result)
    return results


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dimension, regions of interest, mode) measured at two sizes or more: the least-squares slope of
    log p50 latency against log gallery size (1: linear, 0: constant) and p50 milliseconds per 100k cases
    at the largest size."""
    rows = []
    key = ("dimension", "regions_of_interest", "mode")
    for group, cases in itertools.groupby(sorted(results, key=lambda r: tuple(r[k] for k in key) + (r["size"],)),
                                          key=lambda r: tuple(r[k] for k in key)):
        cases = list(cases)
        if len(cases) < 2:
            continue
        sizes = np.log([case["size"] for case in cases])
        latencies = np.log([case["latency_ms"]["p50"] for case in cases])
        largest = cases[-1]
        rows.append({**dict(zip(key, group, strict=True)), "sizes": [case["size"] for case in cases],
                     "slope_log_latency_per_log_size": round(float(np.polyfit(sizes, latencies, 1)[0]), 3),
                     "p50_ms_per_100k_cases_at_largest": round(
                         largest["latency_ms"]["p50"] * 100_000 / largest["size"], 3)})
    return rows
