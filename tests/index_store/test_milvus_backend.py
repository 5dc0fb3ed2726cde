"""The Milvus back end on milvus-lite (embedded, no server): publish, activate (the alias moves), search
with exclusions, roll back, refuse incompatible or corrupt snapshots, searches in flight during a swap,
occlusion sidecars; exact results equal the local exact back end, approximate indexes' recall measured."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus.exceptions import MilvusException

from index_store.active import ActiveIndex
from index_store.errors import (
    IndexUnavailableError,
    SnapshotCorruptError,
    SnapshotExistsError,
    SnapshotIncompatibleError,
    SnapshotNotFoundError,
)
from index_store.gallery import GalleryData
from index_store.local_backend import LocalBackend
from index_store.manifest import OCCLUSION_FILE
from index_store.milvus_backend import MilvusBackend, MilvusConfig
from index_store.milvus_layout import MANIFEST_PROPERTY, VECTORS_ENTRY, collection_name, staging_name
from index_store.search import Exclusion
from index_store.synthetic import cluster_centres, clustered_unit_vectors
from tests.index_store.galleries import DIMENSION, FINGERPRINT, make_gallery


@pytest.fixture
def milvus(tmp_path: Path) -> MilvusBackend:
    backend = MilvusBackend(MilvusConfig(uri=str(tmp_path / "milvus.db"), sidecar_root=tmp_path / "sidecars"))
    yield backend
    backend.close()


@pytest.fixture
def published(milvus: MilvusBackend, gallery: GalleryData) -> MilvusBackend:
    """Milvus holding "v1" (the `gallery` fixture) and "v2" (another gallery), both exact."""
    milvus.publish_gallery(gallery, model_fingerprint=FINGERPRINT, version="v1")
    milvus.publish_gallery(make_gallery(seed=7, prefix="v2"), model_fingerprint=FINGERPRINT, version="v2")
    return milvus


def _queries(count: int, seed: int = 42) -> np.ndarray:
    return clustered_unit_vectors(cluster_centres(12, DIMENSION, 0), count, 0.8, seed)


def _recall(found: list, expected: list, k: int = 10) -> float:
    return float(np.mean([len(set(f.case_ids) & set(e.case_ids)) / k for f, e in zip(found, expected, strict=True)]))


def test_flat_search_matches_the_local_exact_back_end(published: MilvusBackend, store: Path) -> None:
    queries = _queries(32)
    expected = LocalBackend(store).open_version("v1").search(queries, 10)
    snapshot = published.open_version("v1", expected_fingerprint=FINGERPRINT, expected_dimension=DIMENSION)
    found = snapshot.search(queries, 10)
    assert _recall(found, expected) == 1.0
    for hits, exact in zip(found, expected, strict=True):
        np.testing.assert_allclose(hits.scores, exact.scores, atol=1e-5)
        assert hits.index_version == "v1" and hits.ranks == tuple(range(1, 11))
    assert snapshot.search(make_gallery().embeddings[9], 1)[0].case_ids == ("case-9",)


@pytest.mark.parametrize(("factory", "floor"), [("HNSW", 0.95), ("IVF_FLAT", 0.9)])
def test_approximate_indexes_keep_a_measured_recall(milvus: MilvusBackend, factory: str, floor: float) -> None:
    gallery = make_gallery(3000, seed=3)
    milvus.publish_gallery(gallery, model_fingerprint=FINGERPRINT, factory=factory, version=factory.lower())
    queries = _queries(100, seed=5)
    found = milvus.open_version(factory.lower()).search(queries, 10)
    exact = np.argsort(-(queries @ gallery.embeddings.T), axis=1)[:, :10]
    recall = np.mean([len(set(hits.case_ids) & {gallery.case_ids[r] for r in rows}) / 10
                      for hits, rows in zip(found, exact, strict=True)])
    print(f"Milvus {factory} recall@10 on 3000 vectors: {recall:.3f}")
    assert recall >= floor


def test_a_patient_and_a_case_are_excluded_by_filter(published: MilvusBackend, gallery: GalleryData) -> None:
    snapshot = published.open_version("v1")
    query = gallery.embeddings[4]  # case-4, patient-1 holds case-3, case-4, case-5
    excluded = Exclusion(case_ids=frozenset({"case-0", 'odd "id"\\'}), group_keys=frozenset({"patient-1"}))
    hits = snapshot.search(np.stack([query, query]), 10, [excluded, Exclusion()])
    assert len(hits[0].case_ids) == 10
    assert not {"case-0", "case-3", "case-4", "case-5"} & set(hits[0].case_ids)
    assert hits[1].case_ids[0] == "case-4"


def test_activation_moves_the_alias_and_rollback_moves_it_back(published: MilvusBackend) -> None:
    active = ActiveIndex(published, expected_fingerprint=FINGERPRINT)
    active.activate("v1")
    assert published.active_collection() == collection_name("v1")
    active.activate("v2")
    assert published.active_collection() == collection_name("v2")
    assert active.search(make_gallery(seed=7, prefix="v2").embeddings[3], 1)[0].case_ids == ("v2-3",)
    assert active.rollback().version == "v1" and published.active_collection() == collection_name("v1")
    assert active.search(make_gallery().embeddings[3], 1)[0].index_version == "v1"


def test_a_failed_commit_leaves_the_alias_on_the_serving_version(published: MilvusBackend) -> None:
    active = ActiveIndex(published)
    active.activate("v1")

    def commit(manifest, previous_version) -> None:
        raise RuntimeError("the database is down")

    with pytest.raises(RuntimeError):
        active.activate("v2", commit=commit)
    assert active.manifest.version == "v1" and published.active_collection() == collection_name("v1")


def test_a_search_in_flight_during_a_swap_finishes_on_its_snapshot(published: MilvusBackend) -> None:
    active = ActiveIndex(published)
    active.activate("v1")
    queries = _queries(4)
    before = active.search(queries, 5)
    with active.lease() as pinned:
        active.activate("v2")
        assert pinned.search(queries, 5) == before
    assert {hits.index_version for hits in active.search(queries, 5)} == {"v2"}


def test_incompatible_snapshots_are_refused_and_the_active_one_stays(milvus: MilvusBackend) -> None:
    milvus.publish_gallery(make_gallery(), model_fingerprint=FINGERPRINT, version="v1")
    milvus.publish_gallery(make_gallery(prefix="other"), model_fingerprint="sha256:other-model", version="other")
    wide = make_gallery()
    wide = replace(wide, embeddings=np.hstack([wide.embeddings, np.zeros_like(wide.embeddings)]),
                   occlusion_embeddings=None)
    milvus.publish_gallery(wide, model_fingerprint=FINGERPRINT, version="wide")
    active = ActiveIndex(milvus, expected_fingerprint=FINGERPRINT, expected_dimension=DIMENSION)
    active.activate("v1")
    for version in ("other", "wide"):
        with pytest.raises(SnapshotIncompatibleError):
            active.activate(version)
    with pytest.raises(SnapshotNotFoundError):
        active.activate("missing")
    assert active.manifest.version == "v1" and milvus.active_collection() == collection_name("v1")


def _rewrite_manifest(milvus: MilvusBackend, version: str, change) -> None:
    collection = collection_name(version)
    properties = milvus.client.describe_collection(collection)["properties"]
    milvus.client.alter_collection_properties(collection,
                                              properties={MANIFEST_PROPERTY: change(properties[MANIFEST_PROPERTY])})


def test_corrupt_manifests_contents_and_sidecars_are_refused(published: MilvusBackend, tmp_path: Path) -> None:
    def wrong_vectors_digest(text: str) -> str:
        manifest = json.loads(text)
        manifest["files"][VECTORS_ENTRY]["sha256"] = "0" * 64
        return json.dumps(manifest)

    _rewrite_manifest(published, "v1", wrong_vectors_digest)
    with pytest.raises(SnapshotCorruptError, match="vectors.f32"):
        published.open_version("v1")
    _rewrite_manifest(published, "v2", lambda text: text[:-10])
    with pytest.raises(SnapshotCorruptError, match="not valid JSON"):
        published.open_version("v2")
    assert [entry.problem is not None for entry in published.list_snapshots()] == [False, True]  # digests: on open

    published.publish_gallery(make_gallery(prefix="v3"), model_fingerprint=FINGERPRINT, version="v3")
    published.client.delete(collection_name("v3"), filter="row == 5")
    published.client.flush(collection_name("v3"))
    with pytest.raises(SnapshotCorruptError):
        published.open_version("v3")

    published.publish_gallery(make_gallery(prefix="v4"), model_fingerprint=FINGERPRINT, version="v4")
    with open(tmp_path / "sidecars" / "v4" / OCCLUSION_FILE, "r+b") as sidecar:
        sidecar.seek(-4, 2)
        sidecar.write(b"\0\0\0\0")
    with pytest.raises(SnapshotCorruptError, match=OCCLUSION_FILE):
        published.open_version("v4")


def test_occlusions_come_from_the_sidecar_and_unknown_cases_are_refused(
        published: MilvusBackend, gallery: GalleryData) -> None:
    snapshot = published.open_version("v1")
    assert snapshot.has_occlusions and snapshot.has_group_keys
    np.testing.assert_array_equal(snapshot.occlusion_embeddings("case-7"), gallery.occlusion_embeddings[7])
    np.testing.assert_array_equal(snapshot.embedding("case-7"), gallery.embeddings[7])
    with pytest.raises(SnapshotNotFoundError):
        snapshot.embedding("case-unknown")
    snapshot.close()


def test_versions_are_published_once_listed_oldest_first_and_kept_apart(
        published: MilvusBackend, gallery: GalleryData) -> None:
    with pytest.raises(SnapshotExistsError):
        published.publish_gallery(gallery, model_fingerprint=FINGERPRINT, version="v1")
    plain = GalleryData(gallery.embeddings[:50], gallery.case_ids[:50])
    published.publish_gallery(plain, model_fingerprint=FINGERPRINT, version="2026-05.a")
    published.publish_gallery(plain, model_fingerprint=FINGERPRINT, version="2026_05_a")
    assert [entry.version for entry in published.list_snapshots()] == ["v1", "v2", "2026-05.a", "2026_05_a"]
    snapshot = published.open_version("2026-05.a")
    assert not snapshot.has_occlusions and not snapshot.has_group_keys
    assert snapshot.manifest.factory == "milvus:FLAT" and snapshot.manifest.count == 50
    assert not any(name.startswith("chextriev_staging_") for name in published.client.list_collections())


def test_an_unreachable_milvus_is_an_index_unavailable_error(published: MilvusBackend, tmp_path: Path) -> None:
    with pytest.raises(IndexUnavailableError, match="connecting"):
        MilvusBackend(MilvusConfig(uri="http://127.0.0.1:1", sidecar_root=tmp_path / "elsewhere"))
    snapshot = published.open_version("v1")
    server_manager_instance.release_server(published.config.uri)  # the embedded server stops
    with pytest.raises(IndexUnavailableError, match="searching snapshot v1"):
        snapshot.search(_queries(1), 5)


def test_a_local_snapshot_is_published_into_milvus_with_its_keys_and_occlusions(
        milvus: MilvusBackend, store: Path, gallery: GalleryData) -> None:
    manifest = milvus.publish_directory(store / "v1", version="copied")
    assert (manifest.version, manifest.model_fingerprint, manifest.factory) == ("copied", FINGERPRINT, "milvus:FLAT")
    snapshot = milvus.open_version("copied")
    assert snapshot.has_group_keys and snapshot.has_occlusions
    np.testing.assert_array_equal(snapshot.occlusion_embeddings("case-11"), gallery.occlusion_embeddings[11])
    queries = _queries(8)
    assert _recall(snapshot.search(queries, 10), LocalBackend(store).open_version("v1").search(queries, 10)) == 1.0


def test_abandoned_staging_collections_are_dropped_and_recent_ones_kept(milvus: MilvusBackend) -> None:
    old, recent = staging_name(time.time() - 2 * 86400), staging_name(time.time() - 60)
    for name in (old, recent):
        milvus.client.create_collection(name, dimension=4)
    assert milvus.remove_abandoned_staging() == [old]
    assert recent in milvus.client.list_collections() and old not in milvus.client.list_collections()
    assert milvus.list_snapshots() == []  # staging collections are never listed


class _RenameAnsweredAsFailed:
    """The real client, whose rename is carried out and then reported as failed, as pymilvus's retry of
    a rename that milvus-lite completed late reports it."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def rename_collection(self, old_name: str, new_name: str) -> None:
        self._client.rename_collection(old_name, new_name)
        raise MilvusException(message=f"('default', '{old_name}')")


def test_a_rename_reported_as_failed_but_carried_out_publishes_the_version(
        milvus: MilvusBackend, gallery: GalleryData) -> None:
    real_client = milvus.client
    milvus.client = _RenameAnsweredAsFailed(real_client)
    manifest = milvus.publish_gallery(gallery, model_fingerprint=FINGERPRINT, version="v1")
    milvus.client = real_client
    snapshot = milvus.open_version("v1", expected_fingerprint=FINGERPRINT)
    assert snapshot.manifest == manifest
    hits = snapshot.search(gallery.embeddings[:1], 1)[0]
    assert hits.case_ids[0] == gallery.case_ids[0]
    snapshot.close()
    assert [entry.version for entry in milvus.list_snapshots()] == ["v1"]
