"""Export a gallery's CheXtriev embeddings for the index store (`chextriev index build --embeddings`).

The `.npz` follows the gallery embeddings format of index_store.gallery: `embeddings` float32 (N, D)
L2-normalised, `region_embeddings` float32 (N, 18, D) (each region's node embedding, L2-normalised, for
region-level search), `case_ids` unicode (N,), `model_fingerprint` a 0-d unicode string (the checkpoint's
fingerprint) and, when a salt is given, `group_keys` unicode (N,) for same-patient exclusion.
A group key is HMAC-SHA256(salt, patient group) (model.patient_keys, shared with the service
database): opaque without the salt, so no patient id leaves the trainer. An image without a patient
id is its own group (keyed by its case id).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import ChextrievError
from model.fileio import atomic_write_bytes
from model.patient_keys import PatientKeyError, patient_group_keys
from trainer.cached_embeddings import load_network_for, network_embeddings, network_node_embeddings, patient_groups
from trainer.feature_cache import FeatureCache

logger = logging.getLogger(__name__)

PATIENT_SALT_ENV = "CHEXTRIEV_PATIENT_SALT"
ALL_SPLITS = "all"


class GalleryExportError(ChextrievError, ValueError):
    """The gallery cannot be exported as asked (empty split, weak salt)."""


@dataclass(frozen=True)
class GalleryExport:
    """What was written: where, how many vectors of which size, for which model."""

    path: Path
    count: int
    dimension: int
    model_fingerprint: str
    group_keys: bool


def export_gallery(cache: FeatureCache, checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                   split: str = "test", salt: str | None = None, device: str = "auto") -> GalleryExport:
    """Embed the images of `split` ("all" for every image) with the checkpoint and write the `.npz` atomically."""
    rows = _rows(cache, split)
    group_keys = None if salt is None else _group_keys(cache, rows, salt)
    network, info = load_network_for(cache, checkpoint_dir)
    arrays = {
        "embeddings": network_embeddings(network, cache, rows, device=device).astype(np.float32),
        "region_embeddings": network_node_embeddings(network, cache, rows, device=device).astype(np.float32),
        "case_ids": np.asarray(cache.case_ids[rows], dtype=str),
        "model_fingerprint": np.array(info.fingerprint, dtype=str),
    }
    if group_keys is not None:
        arrays["group_keys"] = np.array(group_keys, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = Path(out_path)
    atomic_write_bytes(path, buffer.getvalue())
    export = GalleryExport(path, len(rows), arrays["embeddings"].shape[1], info.fingerprint, salt is not None)
    logger.info("gallery embeddings exported", extra={
        "split": split, "count": export.count, "dimension": export.dimension,
        "model_fingerprint": export.model_fingerprint, "group_keys": export.group_keys})
    return export


def _rows(cache: FeatureCache, split: str) -> np.ndarray:
    """The usable rows of `split`, or of every split for ALL_SPLITS."""
    rows = np.flatnonzero(cache.usable) if split == ALL_SPLITS else cache.indices(split)
    if len(rows) == 0:
        raise GalleryExportError(f"the feature cache has no usable image in split '{split}'")
    return rows


def _group_keys(cache: FeatureCache, rows: np.ndarray, salt: str) -> list[str]:
    """The salted patient group keys of the cache rows `rows`, checked before any embedding is computed."""
    try:
        return patient_group_keys(patient_groups(cache, rows), salt)
    except PatientKeyError as error:
        raise GalleryExportError(str(error)) from error
