"""`chextriev index build|publish|list` and `chextriev bench search` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index_store.store import open_version
from index_store.synthetic import cluster_centres, clustered_unit_vectors
from service.cli import main


@pytest.fixture
def embeddings_file(tmp_path: Path) -> Path:
    """A gallery embeddings file exactly as the offline trainer writes it (index_store.gallery)."""
    vectors = clustered_unit_vectors(cluster_centres(8, 16, 0), 300, 0.8, 1)
    path = tmp_path / "gallery.npz"
    np.savez(
        path,
        embeddings=vectors,
        case_ids=np.array([f"case-{i}" for i in range(300)]),
        group_keys=np.array([f"patient-{i // 2}" for i in range(300)]),
        model_fingerprint=np.array("sha256:trainer-model"),
    )
    return path


def test_build_into_a_store_then_list(tmp_path: Path, embeddings_file: Path, capsys) -> None:
    store = tmp_path / "store"
    assert (
        main(
            ["index", "build", "--embeddings", str(embeddings_file), "--store", str(store), "--version", "v1"]
        )
        == 0
    )
    built = json.loads(capsys.readouterr().out)
    assert (built["version"], built["count"], built["model_fingerprint"]) == (
        "v1",
        300,
        "sha256:trainer-model",
    )
    snapshot = open_version(store, "v1", expected_fingerprint="sha256:trainer-model")
    assert snapshot.search(snapshot.embedding("case-7"), 1)[0].case_ids == ("case-7",)

    assert main(["index", "list", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["factory"], e["problem"]) for e in listed] == [("v1", "Flat", None)]
    assert main(["index", "list", "--store", str(store)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["version", "created", "count", "dimension", "factory", "model_fingerprint"]
    assert table[1].split()[0] == "v1" and table[1].split()[2:5] == ["300", "16", "Flat"]


def test_build_staged_then_publish(tmp_path: Path, embeddings_file: Path, capsys) -> None:
    staging, store = tmp_path / "staging", tmp_path / "store"
    args = [
        "index",
        "build",
        "--embeddings",
        str(embeddings_file),
        "--out",
        str(staging),
        "--version",
        "v2",
        "--factory",
        "IVF4,Flat",
        "--search-params",
        "nprobe=2",
    ]
    assert main(args) == 0
    assert not store.exists()
    assert main(["index", "publish", "--snapshot", str(staging), "--store", str(store)]) == 0
    published = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (published["version"], published["factory"], published["search_parameters"]) == (
        "v2",
        "IVF4,Flat",
        "nprobe=2",
    )
    assert open_version(store, "v2").manifest.count == 300


def test_errors_exit_nonzero_with_the_reason(tmp_path: Path, embeddings_file: Path, capsys) -> None:
    store = tmp_path / "store"
    build = ["index", "build", "--embeddings", str(embeddings_file), "--store", str(store), "--version", "v1"]
    assert main(build + ["--model-fingerprint", "sha256:other"]) == 1
    assert "differs from the embeddings file" in capsys.readouterr().err
    assert main(build) == 0
    assert main(build) == 1
    assert "already published" in capsys.readouterr().err
    assert main(["index", "list", "--store", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bench_search_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "search",
        "--sizes",
        "300",
        "--dim",
        "16",
        "--factory",
        "Flat",
        "--factory",
        "HNSW8",
        "--out",
        str(out),
        "--repeats",
        "3",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [(r["size"], r["factory"]) for r in report["results"]] == [(300, "Flat"), (300, "HNSW8")]
    assert report["results"][0]["recall_at_10"] == 1.0


def test_build_and_list_against_the_configured_milvus(tmp_path: Path, embeddings_file: Path, capsys,
                                                       monkeypatch) -> None:
    monkeypatch.setenv("CHEXTRIEV_INDEX_BACKEND", "milvus")
    monkeypatch.setenv("CHEXTRIEV_MILVUS_URI", str(tmp_path / "milvus.db"))
    monkeypatch.setenv("CHEXTRIEV_INDEX_STORE", str(tmp_path / "sidecars"))
    build = ["index", "build", "--embeddings", str(embeddings_file), "--version", "v1"]
    assert main(build + ["--factory", "HNSW"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert (built["version"], built["factory"], built["search_parameters"]) == ("v1", "milvus:HNSW", "ef=128")
    assert main(["index", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["count"], e["problem"]) for e in listed] == [("v1", 300, None)]
    assert main(build) == 1
    assert "already published" in capsys.readouterr().err
    assert main(build + ["--backend", "milvus", "--out", str(tmp_path / "staged")]) == 2

    staged = ["index", "build", "--embeddings", str(embeddings_file), "--out"]
    assert main(staged + [str(tmp_path / "exact")]) == 0  # a local staging directory, whatever the back end
    assert main(["index", "publish", "--snapshot", str(tmp_path / "exact"), "--as-version", "v2"]) == 0
    published = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (published["version"], published["factory"], published["count"]) == ("v2", "milvus:FLAT", 300)
    assert main(staged + [str(tmp_path / "ivf"), "--factory", "IVF4,Flat"]) == 0
    assert main(["index", "publish", "--snapshot", str(tmp_path / "ivf")]) == 1
    assert "only an exact (Flat) snapshot" in capsys.readouterr().err


def test_bench_backends_compares_the_same_queries_on_both(tmp_path: Path) -> None:
    out = tmp_path / "backends.json"
    args = ["bench", "backends", "--sizes", "300", "--dim", "16", "--milvus-index", "FLAT", "--milvus-index",
            "HNSW", "--out", str(out), "--repeats", "3", "--work-dir", str(tmp_path)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    results = [(r["backend"], r["factory"], r["recall_at_10"]) for r in report["results"]]
    assert results[:2] == [("local", "Flat", 1.0), ("milvus", "milvus:FLAT", 1.0)]
    assert results[2][:2] == ("milvus", "milvus:HNSW") and results[2][2] >= 0.9
    for result in report["results"]:
        assert result["build_seconds"] > 0 and result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0


def test_an_unusable_setting_is_an_error_message_not_a_traceback(tmp_path: Path, embeddings_file: Path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("CHEXTRIEV_INDEX_BACKEND", "elasticsearch")
    assert main(["index", "list", "--store", str(tmp_path)]) == 1
    assert "CHEXTRIEV_INDEX_BACKEND" in capsys.readouterr().err
