"""The gallery embeddings file written by the offline trainer, and the model fingerprint it may carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_store.errors import SnapshotInputError
from index_store.gallery import read_gallery_npz, resolve_fingerprint
from tests.index_store.galleries import make_gallery


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_reads_the_documented_arrays(tmp_path: Path) -> None:
    gallery = make_gallery(50)
    path = _write(
        tmp_path / "gallery.npz",
        embeddings=gallery.embeddings,
        case_ids=np.array(gallery.case_ids),
        group_keys=np.array(gallery.group_keys),
        occlusion_embeddings=gallery.occlusion_embeddings,
        model_fingerprint=np.array("sha256:abc"),
    )
    read, fingerprint = read_gallery_npz(path)
    assert fingerprint == "sha256:abc"
    assert read.case_ids == gallery.case_ids and read.group_keys == gallery.group_keys
    np.testing.assert_array_equal(read.embeddings, gallery.embeddings)
    np.testing.assert_array_equal(read.occlusion_embeddings, gallery.occlusion_embeddings)


def test_optional_arrays_may_be_left_out(tmp_path: Path) -> None:
    gallery = make_gallery(20)
    read, fingerprint = read_gallery_npz(
        _write(tmp_path / "g.npz", embeddings=gallery.embeddings, case_ids=np.array(gallery.case_ids))
    )
    assert fingerprint is None and read.group_keys is None and read.occlusion_embeddings is None


def test_bad_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    gallery = make_gallery(20)
    ids = np.array(gallery.case_ids)
    cases = {
        "missing arrays \\['case_ids'\\]": {"embeddings": gallery.embeddings},
        "unknown arrays \\['labels'\\]": {"embeddings": gallery.embeddings, "case_ids": ids, "labels": ids},
        "not a readable .npz file without pickles": {
            "embeddings": gallery.embeddings,
            "case_ids": ids.astype(object),
        },
        "embeddings must be a float32": {
            "embeddings": gallery.embeddings.astype(np.float64),
            "case_ids": ids,
        },
        "L2 norm": {"embeddings": gallery.embeddings * 2, "case_ids": ids},
        "scalar unicode string": {
            "embeddings": gallery.embeddings,
            "case_ids": ids,
            "model_fingerprint": np.array([1]),
        },
    }
    for message, arrays in cases.items():
        with pytest.raises(SnapshotInputError, match=message):
            read_gallery_npz(_write(tmp_path / "bad.npz", **arrays))
    with pytest.raises(SnapshotInputError, match="does not exist"):
        read_gallery_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(SnapshotInputError, match="not a readable"):
        read_gallery_npz(tmp_path / "text.npz")


def test_fingerprint_comes_from_the_caller_or_the_file_and_must_agree() -> None:
    assert resolve_fingerprint("a", None) == "a"
    assert resolve_fingerprint(None, "b") == "b"
    assert resolve_fingerprint("c", "c") == "c"
    with pytest.raises(SnapshotInputError, match="differs"):
        resolve_fingerprint("a", "b")
    with pytest.raises(SnapshotInputError, match="no model fingerprint"):
        resolve_fingerprint(None, None)
