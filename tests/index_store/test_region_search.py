"""Region-level search: snapshots carry per-region vectors (local and milvus-lite), the exact region
ranking equals a brute-force reference, a shortlist of the whole gallery equals it, exclusions hold, a
damaged region file is refused and a snapshot without region vectors says so."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index_store.errors import RegionSearchUnavailableError, SnapshotCorruptError, SnapshotInputError
from index_store.gallery import GalleryData, read_gallery_npz
from index_store.local_backend import LocalBackend
from index_store.manifest import MANIFEST_FILE, REGION_FILE
from index_store.milvus_backend import MilvusBackend, MilvusConfig
from index_store.region_bench import RegionBenchConfig, run_region_benchmark
from index_store.search import Exclusion
from index_store.store import open_version, publish_gallery
from index_store.synthetic import region_centres, region_gallery
from tests.index_store.galleries import DIMENSION, FINGERPRINT

REGIONS = 6
COUNT = 500


def _region_gallery(count: int = COUNT, seed: int = 0) -> GalleryData:
    image, nodes = region_gallery(region_centres(REGIONS, 8, DIMENSION, seed), count, 0.8, seed + 100)
    return GalleryData(image, tuple(f"case-{i}" for i in range(count)),
                       tuple(f"patient-{i // 3}" for i in range(count)), region_embeddings=nodes)


def _query(seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    image, nodes = region_gallery(region_centres(REGIONS, 8, DIMENSION, 0), 1, 0.8, seed)
    return image[0], nodes[0]


def _reference(gallery: GalleryData, nodes: np.ndarray, regions: list[int], k: int,
               excluded: set[int] = frozenset()) -> tuple[list[str], np.ndarray]:
    """Brute force: the mean over `regions` of the same-region inner products, best first."""
    scores = np.mean([gallery.region_embeddings[:, r].astype(np.float64) @ nodes[r] for r in regions], axis=0)
    order = [row for row in np.argsort(-scores, kind="stable") if row not in excluded][:k]
    return [gallery.case_ids[row] for row in order], scores[order]


@pytest.fixture
def region_store(tmp_path: Path) -> tuple[Path, GalleryData]:
    gallery = _region_gallery()
    publish_gallery(tmp_path / "store", gallery, model_fingerprint=FINGERPRINT, version="r1")
    return tmp_path / "store", gallery


@pytest.fixture
def milvus(tmp_path: Path) -> MilvusBackend:
    backend = MilvusBackend(MilvusConfig(uri=str(tmp_path / "milvus.db"), sidecar_root=tmp_path / "sidecars"))
    yield backend
    backend.close()


def test_the_snapshot_stores_region_vectors_region_major_and_lists_them(region_store) -> None:
    store, gallery = region_store
    manifest = json.loads((store / "r1" / MANIFEST_FILE).read_text())
    assert manifest["region_count"] == REGIONS and REGION_FILE in manifest["files"]
    stored = np.load(store / "r1" / REGION_FILE)
    assert stored.shape == (REGIONS, COUNT, DIMENSION)
    np.testing.assert_array_equal(stored, gallery.region_embeddings.transpose(1, 0, 2))
    assert open_version(store, "r1").has_region_vectors


@pytest.mark.parametrize("regions", [[4], [0, 3], [5, 1, 2, 0], list(range(REGIONS))])
def test_exact_region_ranking_equals_the_brute_force_reference(region_store, regions: list[int]) -> None:
    store, gallery = region_store
    snapshot = open_version(store, "r1")
    _, nodes = _query()
    expected_ids, expected_scores = _reference(gallery, nodes, regions, 10)
    for query_nodes in (nodes, nodes[regions]):  # every region's vector, or one per chosen region
        hits = snapshot.search_regions(query_nodes, regions, 10)
        assert list(hits.case_ids) == expected_ids
        np.testing.assert_allclose(hits.scores, expected_scores, atol=1e-5)
        assert hits.ranks == tuple(range(1, 11)) and hits.index_version == "r1"
        assert all(-1.0 <= s <= 1.0 for s in hits.scores)
    # A case's own region vectors find it first with score 1.
    own = snapshot.search_regions(gallery.region_embeddings[7], regions, 1)
    assert own.case_ids == ("case-7",) and own.scores[0] == pytest.approx(1.0, abs=1e-5)


def test_a_shortlist_of_the_whole_gallery_equals_the_exact_ranking_and_a_short_one_reranks(region_store) -> None:
    store, gallery = region_store
    snapshot = open_version(store, "r1")
    image, nodes = _query(seed=7)
    exact = snapshot.search_regions(nodes, [1, 2], 10)
    full = snapshot.search_regions(nodes, [1, 2], 10, shortlist=COUNT, image_query=image)
    assert full.case_ids == exact.case_ids
    np.testing.assert_allclose(full.scores, exact.scores, atol=1e-6)
    shortlisted = set(snapshot.search(image, 50)[0].case_ids)
    short = snapshot.search_regions(nodes, [1, 2], 10, shortlist=50, image_query=image)
    assert set(short.case_ids) <= shortlisted and list(short.scores) == sorted(short.scores, reverse=True)
    with pytest.raises(SnapshotInputError, match="image_query"):
        snapshot.search_regions(nodes, [1, 2], 10, shortlist=50)


def test_exclusions_by_case_and_by_patient_hold_in_both_modes(region_store) -> None:
    store, gallery = region_store
    snapshot = open_version(store, "r1")
    image, nodes = _query(seed=9)
    first = snapshot.search_regions(nodes, [3], 10).case_ids[0]
    row = gallery.case_ids.index(first)
    patient = gallery.group_keys[row]
    excluded_rows = {r for r, key in enumerate(gallery.group_keys) if key == patient} | {0}
    exclusion = Exclusion(case_ids=frozenset({"case-0"}), group_keys=frozenset({patient}))
    expected_ids, _ = _reference(gallery, nodes, [3], 10, excluded_rows)
    assert list(snapshot.search_regions(nodes, [3], 10, exclusion).case_ids) == expected_ids
    reranked = snapshot.search_regions(nodes, [3], 10, exclusion, shortlist=COUNT, image_query=image)
    assert list(reranked.case_ids) == expected_ids
    # k beyond the eligible cases: every eligible case, none excluded.
    everything = snapshot.search_regions(nodes, [3], COUNT, exclusion)
    assert len(everything.case_ids) == COUNT - len(excluded_rows)


@pytest.mark.parametrize(("regions", "nodes_shape"), [([], None), ([1, 1], None), ([REGIONS], None),
                                                      ([0, 1], (3, DIMENSION)), ([0], (REGIONS, DIMENSION + 1))])
def test_bad_region_queries_are_refused(region_store, regions, nodes_shape) -> None:
    store, _ = region_store
    nodes = np.ones(nodes_shape or (REGIONS, DIMENSION), dtype=np.float32)
    with pytest.raises(SnapshotInputError):
        open_version(store, "r1").search_regions(nodes, regions, 5)


def test_a_damaged_region_file_is_refused_on_opening(region_store) -> None:
    store, _ = region_store
    path = store / "r1" / REGION_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptError, match=REGION_FILE):
        open_version(store, "r1")


def test_a_snapshot_without_region_vectors_says_it_cannot_search_by_region(store: Path) -> None:
    snapshot = open_version(store, "v1")
    assert not snapshot.has_region_vectors
    with pytest.raises(RegionSearchUnavailableError, match="snapshot v1"):
        snapshot.search_regions(np.ones((18, DIMENSION), dtype=np.float32), [0], 5)
    assert json.loads((store / "v1" / MANIFEST_FILE).read_text())["region_count"] is None


def test_a_format_1_manifest_still_opens_as_one_without_region_vectors(store: Path) -> None:
    path = store / "v1" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest["region_count"]
    path.write_text(json.dumps({**manifest, "format_version": 1}))
    assert not open_version(store, "v1").has_region_vectors


def test_the_gallery_file_carries_region_embeddings_and_refuses_bad_ones(tmp_path: Path) -> None:
    gallery = _region_gallery(40)
    arrays = {"embeddings": gallery.embeddings, "case_ids": np.array(gallery.case_ids),
              "region_embeddings": gallery.region_embeddings}
    path = tmp_path / "gallery.npz"
    np.savez(path, **arrays)
    read, _ = read_gallery_npz(path)
    np.testing.assert_array_equal(read.region_embeddings, gallery.region_embeddings)
    unnormalised = gallery.region_embeddings.copy()
    unnormalised[3, 2] *= 2
    for bad, problem in ((unnormalised, r"region_embeddings\[:, 2\] row 3"),
                         (gallery.region_embeddings[:, :, :-1].copy(), "region_embeddings must be float32")):
        buffer = io.BytesIO()
        np.savez(buffer, **{**arrays, "region_embeddings": bad})
        (tmp_path / "bad.npz").write_bytes(buffer.getvalue())
        with pytest.raises(SnapshotInputError, match=problem):
            read_gallery_npz(tmp_path / "bad.npz")


def test_milvus_keeps_region_vectors_in_its_sidecar_and_ranks_as_the_local_snapshot(
        region_store, milvus: MilvusBackend, tmp_path: Path) -> None:
    store, gallery = region_store
    milvus.publish_directory(store / "r1")  # local -> Milvus carries the region vectors
    assert (tmp_path / "sidecars" / "r1" / REGION_FILE).is_file()
    local, remote = LocalBackend(store).open_version("r1"), milvus.open_version("r1")
    assert remote.has_region_vectors and remote.manifest.region_count == REGIONS
    image, nodes = _query(seed=11)
    exclusion = Exclusion(group_keys=frozenset({"patient-5"}))
    for options in ({}, {"shortlist": 100, "image_query": image}):
        expected = local.search_regions(nodes, [0, 4], 10, exclusion, **options)
        found = remote.search_regions(nodes, [0, 4], 10, exclusion, **options)
        assert found.case_ids == expected.case_ids and found.index_version == "r1"
        np.testing.assert_allclose(found.scores, expected.scores, atol=1e-5)
    remote.close()
    milvus.publish_gallery(replace(gallery, region_embeddings=None), model_fingerprint=FINGERPRINT, version="plain")
    with pytest.raises(RegionSearchUnavailableError, match="snapshot plain"):
        milvus.open_version("plain").search_regions(nodes, [0], 5)


def test_milvus_refuses_a_damaged_region_sidecar(region_store, milvus: MilvusBackend, tmp_path: Path) -> None:
    _, gallery = region_store
    milvus.publish_gallery(gallery, model_fingerprint=FINGERPRINT, version="r2")
    path = tmp_path / "sidecars" / "r2" / REGION_FILE
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SnapshotCorruptError, match=REGION_FILE):
        milvus.open_version("r2")


def test_synthetic_image_vectors_are_the_normalised_mean_of_the_region_vectors() -> None:
    image, nodes = region_gallery(region_centres(REGIONS, 8, DIMENSION, 0), 50, 0.8, 1)
    np.testing.assert_allclose(np.linalg.norm(nodes, axis=-1), 1.0, atol=1e-5)
    mean = nodes.mean(axis=1)
    np.testing.assert_allclose(image, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)


def test_the_region_benchmark_measures_every_case_and_the_growth(tmp_path: Path) -> None:
    out = tmp_path / "regions.json"
    report = run_region_benchmark(RegionBenchConfig(
        sizes=(300, 900), out=out, dimensions=(16,), regions_of_interest=(1, 3), shortlists=(50, 300),
        region_count=REGIONS, work_dir=tmp_path, queries=8, repeats=3, clusters=4))
    assert json.loads(out.read_text()) == report
    modes = ["exact", "shortlist 50", "shortlist 300"]
    assert [(r["size"], r["regions_of_interest"], r["mode"]) for r in report["results"]] == [
        (size, count, mode) for size in (300, 900) for count in (1, 3) for mode in modes]
    for result in report["results"]:
        assert result["region_file_bytes"] > REGIONS * result["size"] * 16 * 4
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
        assert result["recall_at_10"] == 1.0 if result["mode"] == "exact" else 0 <= result["recall_at_10"] <= 1
    # A shortlist of the whole smallest gallery is the exact ranking.
    assert all(r["recall_at_10"] == 1.0 for r in report["results"] if r["size"] == 300 and r["shortlist"] == 300)
    assert len(report["growth"]) == 2 * len(modes)
    assert all(np.isfinite(row["slope_log_latency_per_log_size"]) for row in report["growth"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["regions.json"]  # temporary snapshots removed
