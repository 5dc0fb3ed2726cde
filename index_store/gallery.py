"""The gallery a snapshot is built from, its validation, and the `.npz` file the offline trainer writes.

Gallery embeddings file (`.npz`, written with `numpy.savez`, read with `allow_pickle=False`):

| array | dtype, shape | required |
| --- | --- | --- |
| `embeddings` | float32 (N, D), each row L2-normalised | yes |
| `case_ids` | unicode (`<U`), (N,), unique, non-empty | yes |
| `group_keys` | unicode (N,): opaque keys such as salted patient hashes, for same-group exclusion | no |
| `occlusion_embeddings` | float32 (N, R, D): the embedding of case i with region r blanked, L2-normalised | no |
| `region_embeddings` | float32 (N, R, D): region r's own embedding of case i (R = 18), L2-normalised | no |
| `model_fingerprint` | unicode, 0-d (a scalar string): hash of the checkpoint and preprocessing config | no |

Strings must be stored as numpy unicode arrays (`np.array(list_of_str)`), not object arrays.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index_store.errors import SnapshotInputError

NORM_TOLERANCE = 1e-3
_NORM_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class GalleryData:
    """Vectors and ids of a gallery: embeddings (N, D) float32, case ids, optional group keys, occlusion
    embeddings (N, R, D) and region embeddings (N, R, D)."""

    embeddings: np.ndarray
    case_ids: tuple[str, ...]
    group_keys: tuple[str, ...] | None = None
    occlusion_embeddings: np.ndarray | None = None
    region_embeddings: np.ndarray | None = None


def validate_gallery(gallery: GalleryData) -> None:
    """Raise SnapshotInputError unless shapes agree, ids are unique strings and vectors are finite unit vectors."""
    embeddings = gallery.embeddings
    if not isinstance(embeddings, np.ndarray) or embeddings.dtype != np.float32 or embeddings.ndim != 2:
        raise SnapshotInputError("embeddings must be a float32 array of shape (N, D)")
    count, dimension = embeddings.shape
    if count == 0 or dimension == 0:
        raise SnapshotInputError(f"embeddings are empty (shape {embeddings.shape})")
    _check_strings("case_ids", gallery.case_ids, count)
    if len(set(gallery.case_ids)) != count:
        raise SnapshotInputError("case_ids are not unique")
    if gallery.group_keys is not None:
        _check_strings("group_keys", gallery.group_keys, count)
    check_unit_vectors("embeddings", embeddings)
    for name in ("occlusion_embeddings", "region_embeddings"):
        _check_per_region(name, getattr(gallery, name), count, dimension)


def _check_per_region(name: str, vectors: np.ndarray | None, count: int, dimension: int) -> None:
    """Unless None, `vectors` must be float32 (count, R, D) unit vectors (checked region by region, so a
    memory-mapped or transposed array is never copied whole)."""
    if vectors is None:
        return
    if (
        not isinstance(vectors, np.ndarray)
        or vectors.dtype != np.float32
        or vectors.ndim != 3
        or vectors.shape[0] != count
        or vectors.shape[2] != dimension
        or vectors.shape[1] == 0
    ):
        raise SnapshotInputError(
            f"{name} must be float32 of shape ({count}, R, {dimension}), "
            f"got {getattr(vectors, 'dtype', None)} {getattr(vectors, 'shape', None)}"
        )
    for region in range(vectors.shape[1]):
        check_unit_vectors(f"{name}[:, {region}]", vectors[:, region])


def check_unit_vectors(name: str, vectors: np.ndarray) -> None:
    """Raise SnapshotInputError unless every row of the 2-d `vectors` is finite with L2 norm 1 (+-1e-3)."""
    for start in range(0, len(vectors), _NORM_CHUNK_ROWS):
        chunk = vectors[start : start + _NORM_CHUNK_ROWS]
        if not np.isfinite(chunk).all():
            row = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise SnapshotInputError(f"{name} row {row} is not finite (NaN or infinity)")
        norms = np.linalg.norm(chunk.astype(np.float64), axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.size:
            row = start + int(bad[0])
            raise SnapshotInputError(
                f"{name} row {row} has L2 norm {norms[bad[0]]:.6f}; the inner-product metric expects "
                f"L2-normalised vectors (norm 1 +- {NORM_TOLERANCE})"
            )


def _check_strings(name: str, values: object, count: int) -> None:
    if not isinstance(values, tuple) or len(values) != count:
        raise SnapshotInputError(f"{name} must be a tuple of {count} strings (one per embedding row)")
    if not all(isinstance(v, str) and v for v in values):
        raise SnapshotInputError(f"{name} must all be non-empty strings")


def read_gallery_npz(path: Path) -> tuple[GalleryData, str | None]:
    """Read and validate a gallery embeddings file (format above); returns the gallery and its fingerprint."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise SnapshotInputError(f"embeddings file {path} does not exist") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SnapshotInputError(f"{path} is not a readable .npz file without pickles ({exc})") from exc
    missing = {"embeddings", "case_ids"} - set(arrays)
    unknown = set(arrays) - {
        "embeddings",
        "case_ids",
        "group_keys",
        "occlusion_embeddings",
        "region_embeddings",
        "model_fingerprint",
    }
    if missing or unknown:
        raise SnapshotInputError(
            f"{path}: missing arrays {sorted(missing)}, unknown arrays {sorted(unknown)}"
        )
    fingerprint = arrays.get("model_fingerprint")
    if fingerprint is not None and (fingerprint.dtype.kind != "U" or fingerprint.ndim != 0):
        raise SnapshotInputError(f"{path}: model_fingerprint must be a scalar unicode string")
    gallery = GalleryData(
        embeddings=arrays["embeddings"],
        case_ids=_strings(path, "case_ids", arrays["case_ids"]),
        group_keys=_strings(path, "group_keys", arrays["group_keys"]) if "group_keys" in arrays else None,
        occlusion_embeddings=arrays.get("occlusion_embeddings"),
        region_embeddings=arrays.get("region_embeddings"),
    )
    validate_gallery(gallery)
    return gallery, (str(fingerprint) if fingerprint is not None else None)


def _strings(path: Path, name: str, array: np.ndarray) -> tuple[str, ...]:
    if array.dtype.kind != "U" or array.ndim != 1:
        raise SnapshotInputError(
            f"{path}: {name} must be a 1-d unicode string array, got {array.dtype} {array.shape}"
        )
    return tuple(array.tolist())


def resolve_fingerprint(given: str | None, in_file: str | None) -> str:
    """The model fingerprint from the caller or from the embeddings file; both given must agree."""
    if given and in_file and given != in_file:
        raise SnapshotInputError(
            f"model fingerprint {given!r} differs from the embeddings file's {in_file!r}"
        )
    fingerprint = given or in_file
    if not fingerprint:
        raise SnapshotInputError(
            "no model fingerprint: pass one or store model_fingerprint in the embeddings file"
        )
    return fingerprint
