"""Building, publishing, listing and opening snapshots: the round trip and the store's guarantees."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index_store.errors import SnapshotExistsError, SnapshotInputError, SnapshotNotFoundError
from index_store.files import file_digest
from index_store.manifest import FORMAT_VERSION, MANIFEST_FILE
from index_store.store import build_snapshot, list_snapshots, open_version, publish_directory, publish_gallery
from tests.index_store.galleries import DIMENSION, FINGERPRINT, REGIONS, make_gallery


def test_round_trip_keeps_vectors_ids_groups_and_occlusions(store: Path, gallery) -> None:
    snapshot = open_version(store, "v1", expected_fingerprint=FINGERPRINT, expected_dimension=DIMENSION)
    manifest = snapshot.manifest
    assert (manifest.version, manifest.count, manifest.dimension) == ("v1", len(gallery.case_ids), DIMENSION)
    assert (manifest.metric, manifest.factory, manifest.format_version) == (
        "inner_product",
        "Flat",
        FORMAT_VERSION,
    )
    assert manifest.model_fingerprint == FINGERPRINT and manifest.occlusion_regions == REGIONS
    assert manifest.created.endswith("Z")
    assert snapshot.case_ids == gallery.case_ids
    np.testing.assert_array_equal(snapshot.embedding("case-17"), gallery.embeddings[17])
    np.testing.assert_array_equal(snapshot.occlusion_embeddings("case-17"), gallery.occlusion_embeddings[17])
    with pytest.raises(SnapshotNotFoundError):
        snapshot.embedding("not-a-case")
    snapshot.close()


def test_manifest_records_the_sha256_of_every_file(store: Path) -> None:
    directory = store / "v1"
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    on_disk = {p.name for p in directory.iterdir()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        digest = file_digest(directory / name)
        assert entry == {"sha256": digest.sha256, "bytes": digest.bytes}


def test_publishing_an_existing_version_is_refused_and_changes_nothing(store: Path) -> None:
    before = {p.name: file_digest(p) for p in (store / "v1").iterdir()}
    with pytest.raises(SnapshotExistsError, match="v1"):
        publish_gallery(store, make_gallery(seed=5), model_fingerprint="other", version="v1")
    assert {p.name: file_digest(p) for p in (store / "v1").iterdir()} == before
    assert [p.name for p in store.iterdir()] == ["v1"]  # no temporary directory left behind


def test_invalid_gallery_is_refused_and_leaves_the_store_unchanged(store: Path, gallery) -> None:
    not_normalised = gallery.embeddings * 1.01
    with_nan = gallery.embeddings.copy()
    with_nan[5, 3] = np.nan
    cases = {
        "norm 1.01": replace(gallery, embeddings=not_normalised),
        "row 5 is not finite": replace(gallery, embeddings=with_nan),
        "not unique": replace(gallery, case_ids=("case-0",) * len(gallery.case_ids)),
        "group_keys must be a tuple of 600": replace(gallery, group_keys=gallery.group_keys[:-1]),
        "occlusion_embeddings must be float32": replace(
            gallery, occlusion_embeddings=gallery.occlusion_embeddings[:, :, :4]
        ),
    }
    for message, bad in cases.items():
        with pytest.raises(SnapshotInputError, match=message):
            publish_gallery(store, bad, model_fingerprint=FINGERPRINT, version="v2")
    with pytest.raises(SnapshotInputError, match="factory"):
        publish_gallery(store, gallery, model_fingerprint=FINGERPRINT, version="v2", factory="NotAnIndex")
    with pytest.raises(SnapshotInputError, match="version"):
        publish_gallery(store, gallery, model_fingerprint=FINGERPRINT, version="../escape")
    assert [p.name for p in store.iterdir()] == ["v1"]


def test_list_sorts_by_creation_and_reports_unreadable_versions(store: Path, publish) -> None:
    publish("a-later", factory="HNSW8")
    publish("0-latest")
    (store / "broken").mkdir()
    entries = list_snapshots(store)
    assert [e.version for e in entries] == ["v1", "a-later", "0-latest", "broken"]
    assert entries[1].manifest.factory == "HNSW8" and entries[1].manifest.search_parameters == "efSearch=128"
    assert entries[3].manifest is None and entries[3].problem == "manifest.json is missing"
    with pytest.raises(SnapshotNotFoundError):
        list_snapshots(store / "nowhere")


def test_staged_build_is_verified_then_published(tmp_path: Path, store: Path, gallery) -> None:
    staging = tmp_path / "staging"
    manifest = build_snapshot(
        staging, gallery, model_fingerprint=FINGERPRINT, version="v2", factory="IVF8,Flat"
    )
    with pytest.raises(SnapshotExistsError):
        build_snapshot(staging, gallery, model_fingerprint=FINGERPRINT)
    assert publish_directory(staging, store) == manifest
    snapshot = open_version(store, "v2")
    assert snapshot.manifest == manifest and snapshot.manifest.search_parameters == "nprobe=32"
    snapshot.close()
    with pytest.raises(SnapshotExistsError):
        publish_directory(staging, store)


def test_a_published_snapshot_is_published_again_under_another_version(store: Path, gallery) -> None:
    copy = publish_directory(store / "v1", store, version="v1-again")
    original = open_version(store, "v1")
    again = open_version(store, "v1-again")
    assert (again.version, again.manifest.files) == ("v1-again", original.manifest.files)
    assert again.manifest.created >= original.manifest.created and copy == again.manifest
    query = gallery.embeddings[3]
    assert again.search(query, 3)[0].case_ids == original.search(query, 3)[0].case_ids
    for snapshot in (original, again):
        snapshot.close()
    with pytest.raises(SnapshotExistsError):
        publish_directory(store / "v1", store, version="v1-again")


def test_unknown_version_is_not_found(store: Path) -> None:
    with pytest.raises(SnapshotNotFoundError, match="v9"):
        open_version(store, "v9")
