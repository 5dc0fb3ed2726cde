"""Search: exact results equal brute force, the PyTorch path equals FAISS, exclusions still give k, recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_store.errors import SnapshotInputError
from index_store.faiss_index import build_index, measure_recall
from index_store.gallery import GalleryData
from index_store.search import Exclusion, FaissSearcher, TorchExactSearcher
from index_store.store import open_version, publish_gallery
from index_store.synthetic import cluster_centres, clustered_unit_vectors
from tests.index_store.galleries import DIMENSION, make_gallery


def _queries(count: int, seed: int = 42) -> np.ndarray:
    return clustered_unit_vectors(cluster_centres(12, DIMENSION, 0), count, 0.8, seed)


def test_exact_search_equals_numpy_brute_force(store: Path, gallery: GalleryData) -> None:
    queries = _queries(16)
    hits = open_version(store, "v1").search(queries, 10)
    scores = queries.astype(np.float64) @ gallery.embeddings.T.astype(np.float64)
    for query_hits, row_scores in zip(hits, scores, strict=True):
        expected = np.argsort(-row_scores, kind="stable")[:10]
        assert query_hits.case_ids == tuple(gallery.case_ids[i] for i in expected)
        np.testing.assert_allclose(query_hits.scores, row_scores[expected], atol=1e-5)
        assert query_hits.ranks == tuple(range(1, 11)) and query_hits.index_version == "v1"


def test_single_query_vector_gives_one_result_list(store: Path, gallery: GalleryData) -> None:
    hits = open_version(store, "v1").search(gallery.embeddings[9], 1)
    assert len(hits) == 1 and hits[0].case_ids == ("case-9",)
    assert hits[0].scores[0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("score_budget", [1 << 24, 256])
def test_torch_exact_path_equals_faiss(gallery: GalleryData, score_budget: int) -> None:
    """The PyTorch path (the one used on CUDA without faiss-gpu), run on the CPU, chunked or not."""
    index = build_index(gallery.embeddings, "Flat", "")
    queries = _queries(7)
    for fetch in (1, 10, 100):
        faiss_scores, faiss_rows = FaissSearcher(index).search(queries, fetch)
        torch_scores, torch_rows = TorchExactSearcher(gallery.embeddings, "cpu", score_budget).search(
            queries, fetch
        )
        np.testing.assert_array_equal(torch_rows, faiss_rows)
        np.testing.assert_allclose(torch_scores, faiss_scores, atol=1e-5)


def test_excluding_the_query_and_its_patient_still_returns_k(tmp_path: Path) -> None:
    """Groups of 40 near-identical cases: without over-fetching, the top 10 would all be excluded."""
    centres = cluster_centres(15, DIMENSION, 3)
    vectors = np.concatenate([clustered_unit_vectors(c[None], 40, 0.1, i) for i, c in enumerate(centres)])
    gallery = GalleryData(
        embeddings=vectors,
        case_ids=tuple(f"case-{i}" for i in range(len(vectors))),
        group_keys=tuple(f"patient-{i // 40}" for i in range(len(vectors))),
    )
    publish_gallery(tmp_path, gallery, model_fingerprint="fp", version="groups")
    snapshot = open_version(tmp_path, "groups")
    exclusions = [
        Exclusion(case_ids=frozenset({f"case-{q}"}), group_keys=frozenset({f"patient-{q // 40}"}))
        for q in (0, 45, 599)
    ]
    hits = snapshot.search(vectors[[0, 45, 599]], 10, exclusions)
    for query, query_hits in zip((0, 45, 599), hits, strict=True):
        rows = [int(c.split("-")[1]) for c in query_hits.case_ids]
        assert len(rows) == 10 and all(r // 40 != query // 40 for r in rows)
        eligible = np.flatnonzero(np.arange(len(vectors)) // 40 != query // 40)
        best = eligible[np.argsort(-(vectors[eligible] @ vectors[query]))[:10]]
        assert rows == best.tolist()
    plain = snapshot.search(vectors[0], 10)[0]
    assert all(int(c.split("-")[1]) // 40 == 0 for c in plain.case_ids)  # the exclusion made the difference


def test_exclusions_apply_to_all_queries_and_unknown_ids_are_ignored(
    store: Path, gallery: GalleryData
) -> None:
    snapshot = open_version(store, "v1")
    excluded = frozenset({"case-1", "case-2", "no-such-case"})
    hits = snapshot.search(gallery.embeddings[:3], 600, Exclusion(case_ids=excluded))
    assert [len(h.case_ids) for h in hits] == [598] * 3  # the gallery is exhausted: all eligible, no more
    assert all(excluded.isdisjoint(h.case_ids) for h in hits)


def test_group_exclusion_needs_group_keys(tmp_path: Path, gallery: GalleryData) -> None:
    publish_gallery(
        tmp_path, GalleryData(gallery.embeddings, gallery.case_ids), model_fingerprint="fp", version="plain"
    )
    snapshot = open_version(tmp_path, "plain")
    with pytest.raises(SnapshotInputError, match="no group keys"):
        snapshot.search(gallery.embeddings[0], 5, Exclusion(group_keys=frozenset({"patient-0"})))
    assert snapshot.occlusion_embeddings("case-0") is None


def test_bad_queries_are_refused(store: Path) -> None:
    snapshot = open_version(store, "v1")
    good = _queries(2)
    with_nan = good.copy()
    with_nan[0, 0] = np.nan
    for queries, k, message in [
        (good[:, :8], 5, r"shape \(Q, 32\)"),
        (with_nan, 5, "finite"),
        (good, 0, "positive integer"),
        (good.astype(np.int64), 5, "floating-point"),
    ]:
        with pytest.raises(SnapshotInputError, match=message):
            snapshot.search(queries, k)
    with pytest.raises(SnapshotInputError, match="3 exclusions given for 2 queries"):
        snapshot.search(good, 5, [Exclusion()] * 3)


def test_recall_of_approximate_indexes_is_measured_against_exact() -> None:
    centres = cluster_centres(32, DIMENSION, 1)
    vectors = clustered_unit_vectors(centres, 4000, 1.5, 2)
    queries = clustered_unit_vectors(centres, 100, 1.5, 3)

    def recall(factory: str, parameters: str) -> float:
        return measure_recall(build_index(vectors, factory, parameters), vectors, queries, k=10)

    assert recall("Flat", "") == 1.0
    assert recall("IVF16,Flat", "nprobe=1") < 0.9  # one list of sixteen misses neighbours
    assert recall("IVF16,Flat", "nprobe=16") == 1.0  # every list: exhaustive again
    assert recall("HNSW16", "efSearch=64") >= 0.9


def test_approximate_snapshot_serves_searches(store: Path, publish) -> None:
    snapshot = open_version(store, publish("pq", factory="IVF8,PQ8x4").name)
    assert snapshot.manifest.factory == "IVF8,PQ8x4" and snapshot.manifest.search_parameters == "nprobe=32"
    hits = snapshot.search(_queries(5), 10, Exclusion(group_keys=frozenset({"patient-0"})))
    assert all(len(h.case_ids) == 10 and h.index_version == "pq" for h in hits)
    original = make_gallery(seed=7, prefix="pq").embeddings[5]
    assert 0.5 < float(snapshot.embedding("pq-5") @ original) < 0.999  # PQ codes reconstruct approximately
