"""The search benchmark on a tiny configuration: every case measured, exact recall 1, JSON on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from index_store.bench import BenchConfig, run_search_benchmark
from index_store.synthetic import cluster_centres, clustered_unit_vectors


def test_benchmark_measures_every_case_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    config = BenchConfig(
        sizes=(500, 2000),
        dimension=16,
        factories=("Flat", "IVF16,Flat", "NoSuchIndex"),
        out=out,
        repeats=5,
        recall_queries=50,
        clusters=32,
    )
    report = run_search_benchmark(config)
    assert json.loads(out.read_text()) == report
    assert [(r["size"], r["factory"]) for r in report["results"]] == [
        (size, factory) for size in (500, 2000) for factory in config.factories
    ]
    for result in report["results"]:
        if result["factory"] == "NoSuchIndex":
            assert "invalid FAISS factory string" in result["error"]
            continue
        assert result["build_seconds"] >= 0 and result["index_bytes"] > result["size"] * 16 * 4 * 0.9
        assert set(result["latency_ms"]) == {"1", "64"}
        assert 0 < result["latency_ms"]["1"]["p50"] <= result["latency_ms"]["1"]["p99"]
        assert result["latency_ms"]["64"]["runs"] == 5
        expected_recall = 1.0 if result["factory"] == "Flat" else result["recall_at_10"]
        assert 0.5 < result["recall_at_10"] == expected_recall
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_synthetic_vectors_are_unit_length_and_clustered() -> None:
    centres = cluster_centres(8, 64, 0)
    vectors = clustered_unit_vectors(centres, 1000, 0.8, 1)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    nearest_centre = (vectors @ centres.T).max(axis=1)
    assert np.median(nearest_centre) > 0.7  # ~1/sqrt(1 + 0.8**2) = 0.78: near a centre, not uniform noise
