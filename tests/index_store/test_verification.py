"""A corrupt, truncated or incompatible snapshot is refused, naming the file, and the good one stays active."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from index_store.active import ActiveIndex
from index_store.errors import (
    SnapshotCorruptError,
    SnapshotError,
    SnapshotIncompatibleError,
    SnapshotNotFoundError,
)
from index_store.files import file_digest
from index_store.local_backend import LocalBackend
from index_store.store import open_version
from tests.index_store.galleries import DIMENSION, FINGERPRINT


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _edit_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _shorten_ids_and_reseal(directory: Path) -> None:
    """A consistent-looking lie: one id fewer, with the manifest's checksum updated to match."""
    ids_path = directory / "case_ids.json"
    ids_path.write_text(json.dumps(json.loads(ids_path.read_text())[:-1]))
    manifest = json.loads((directory / "manifest.json").read_text())
    digest = file_digest(ids_path)
    manifest["files"]["case_ids.json"] = {"sha256": digest.sha256, "bytes": digest.bytes}
    (directory / "manifest.json").write_text(json.dumps(manifest))


DAMAGE: dict[str, tuple[Callable[[Path], None], type[SnapshotError], str, str]] = {
    "flipped byte in the index": (
        lambda d: _flip_byte(d / "index.faiss", 1000),
        SnapshotCorruptError,
        "index.faiss",
        "SHA-256",
    ),
    "truncated ids file": (
        lambda d: _truncate(d / "case_ids.json"),
        SnapshotCorruptError,
        "case_ids.json",
        "truncated",
    ),
    "missing occlusion file": (
        lambda d: (d / "occlusion.npy").unlink(),
        SnapshotCorruptError,
        "occlusion.npy",
        "missing",
    ),
    "missing manifest": (
        lambda d: (d / "manifest.json").unlink(),
        SnapshotCorruptError,
        "manifest.json",
        "missing",
    ),
    "manifest not JSON": (
        lambda d: _truncate(d / "manifest.json"),
        SnapshotCorruptError,
        "manifest.json",
        "not valid JSON",
    ),
    "edited manifest dimension": (
        lambda d: _edit_manifest(d, dimension=DIMENSION * 2),
        SnapshotCorruptError,
        "manifest.json",
        "dimension 64 but index.faiss holds 32-d",
    ),
    "edited manifest count": (
        lambda d: _edit_manifest(d, count=700),
        SnapshotCorruptError,
        "manifest.json",
        "count 700 but index.faiss holds 600",
    ),
    "unknown manifest field": (
        lambda d: _edit_manifest(d, extra=1),
        SnapshotCorruptError,
        "manifest.json",
        "unknown fields",
    ),
    "newer format": (
        lambda d: _edit_manifest(d, format_version=99),
        SnapshotIncompatibleError,
        "manifest.json",
        "format version 99",
    ),
    "ids resealed but inconsistent": (
        _shorten_ids_and_reseal,
        SnapshotCorruptError,
        "case_ids.json",
        "599 entries",
    ),
    "other model": (
        lambda d: _edit_manifest(d, model_fingerprint="sha256:older-model"),
        SnapshotIncompatibleError,
        "manifest.json",
        "fingerprint",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_snapshot_is_refused_naming_the_file_and_the_good_one_stays(
    damage: str, store: Path, publish
) -> None:
    corrupt, error, file_name, why = DAMAGE[damage]
    active = ActiveIndex(LocalBackend(store), expected_fingerprint=FINGERPRINT, expected_dimension=DIMENSION)
    active.activate("v1")
    corrupt(publish("v2"))
    with pytest.raises(error, match=why) as raised:
        active.activate("v2")
    assert raised.value.path.name == file_name and file_name in str(raised.value)
    assert active.manifest.version == "v1"
    query = open_version(store, "v1").embedding("case-3")
    assert active.search(query, 3)[0].case_ids[0] == "case-3"
    assert active.search(query, 3)[0].index_version == "v1"


def test_snapshot_of_another_dimension_is_incompatible(store: Path) -> None:
    with pytest.raises(SnapshotIncompatibleError, match="dimension 32 is not the expected 1024"):
        open_version(store, "v1", expected_dimension=1024)


def test_renamed_version_directory_is_refused(store: Path) -> None:
    (store / "v1").rename(store / "v2")
    with pytest.raises(SnapshotCorruptError, match="does not match its directory"):
        open_version(store, "v2")


def test_a_failed_canary_refuses_the_snapshot(store: Path) -> None:
    """Vectors that pass their checksums but belong to other rows (a wrong id order) fail the canary."""
    canary_path = store / "v1" / "canary.npy"
    canary = np.load(canary_path)
    np.save(canary_path, canary[::-1].copy())
    manifest = json.loads((store / "v1" / "manifest.json").read_text())
    digest = file_digest(canary_path)
    manifest["files"]["canary.npy"] = {"sha256": digest.sha256, "bytes": digest.bytes}
    (store / "v1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotCorruptError, match="canary"):
        open_version(store, "v1")


def test_activating_an_unknown_version_keeps_the_active_one(store: Path) -> None:
    active = ActiveIndex(LocalBackend(store))
    with pytest.raises(SnapshotNotFoundError, match="no index snapshot is active"):
        active.search(np.ones(DIMENSION, dtype=np.float32) / np.sqrt(DIMENSION), 1)
    active.activate("v1")
    with pytest.raises(SnapshotNotFoundError, match="v7"):
        active.activate("v7")
    assert active.manifest.version == "v1"
