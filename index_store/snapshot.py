"""One snapshot directory: writing it from a gallery, and opening it with full verification."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from index_store import faiss_index
from index_store.errors import (
    SnapshotCorruptError,
    SnapshotError,
    SnapshotIncompatibleError,
    SnapshotInputError,
    SnapshotNotFoundError,
)
from index_store.files import FileDigest, NpyRows, fsync_directory, verify_digest, write_new_file
from index_store.gallery import GalleryData, validate_gallery
from index_store.manifest import (
    CANARY_FILE,
    CASE_IDS_FILE,
    GROUP_KEYS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    OCCLUSION_FILE,
    Manifest,
    check_version_name,
    new_version_name,
    parse_manifest,
    utc_timestamp,
)
from index_store.region_search import (
    RegionIndex,
    RegionSearching,
    RegionVectors,
    open_region_vectors,
    read_region_embeddings,
    region_count,
    write_region_file,
)
from index_store.search import (
    CaseRows,
    Exclusion,
    QueryHits,
    check_k,
    check_queries,
    make_searcher,
    per_query,
    search_excluding,
)

log = logging.getLogger(__name__)

CANARY_COUNT = 4
_CANARY_CANDIDATES = 64


def write_snapshot(
    directory: Path,
    gallery: GalleryData,
    *,
    model_fingerprint: str,
    factory: str = faiss_index.EXACT_FACTORY,
    search_parameters: str | None = None,
    version: str | None = None,
) -> Manifest:
    """Validate `gallery`, build its index and write a complete snapshot into the empty `directory`."""
    validate_gallery(gallery)
    if not isinstance(model_fingerprint, str) or not model_fingerprint:
        raise SnapshotInputError("a snapshot needs a non-empty model fingerprint")
    now = datetime.now(UTC)
    version = check_version_name(version if version is not None else new_version_name(now))
    if search_parameters is None:
        search_parameters = faiss_index.default_search_parameters(factory)
    embeddings = gallery.embeddings
    index = faiss_index.build_index(embeddings, factory, search_parameters)
    canary_rows = _choose_canary_rows(index, embeddings, factory)

    files: dict[str, FileDigest] = {
        INDEX_FILE: write_new_file(directory / INDEX_FILE, lambda f: faiss_index.write_index(index, f)),
        CASE_IDS_FILE: _write_json(directory / CASE_IDS_FILE, list(gallery.case_ids)),
        CANARY_FILE: _write_npy(directory / CANARY_FILE, embeddings[list(canary_rows)]),
    }
    if gallery.group_keys is not None:
        files[GROUP_KEYS_FILE] = _write_json(directory / GROUP_KEYS_FILE, list(gallery.group_keys))
    occlusion = gallery.occlusion_embeddings
    if occlusion is not None:
        files[OCCLUSION_FILE] = _write_npy(directory / OCCLUSION_FILE, occlusion)
    files.update(write_region_file(directory, gallery.region_embeddings))
    manifest = Manifest(
        version=version,
        created=utc_timestamp(now),
        model_fingerprint=model_fingerprint,
        dimension=embeddings.shape[1],
        count=embeddings.shape[0],
        factory=factory,
        search_parameters=search_parameters,
        occlusion_regions=None if occlusion is None else occlusion.shape[1],
        canary_rows=canary_rows,
        files=files,
        region_count=region_count(gallery.region_embeddings),
    )
    write_new_file(directory / MANIFEST_FILE, lambda f: f.write(manifest.to_json()))
    fsync_directory(directory)
    log.info("snapshot written", extra={"version": version, "count": manifest.count, "factory": factory})
    return manifest


def _write_json(path: Path, values: list[str]) -> FileDigest:
    return write_new_file(path, lambda f: f.write(json.dumps(values).encode("utf-8")))


def _write_npy(path: Path, array: np.ndarray) -> FileDigest:
    return write_new_file(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def canary_candidates(count: int) -> np.ndarray:
    """The rows tried as canaries: up to 64 evenly spread over `count` rows (the first CANARY_COUNT
    that find themselves first are kept)."""
    return np.unique(np.linspace(0, count - 1, _CANARY_CANDIDATES).astype(np.int64))


def _choose_canary_rows(index: faiss.Index, embeddings: np.ndarray, factory: str) -> tuple[int, ...]:
    """Up to CANARY_COUNT evenly spread rows whose own vector finds them first in this index."""
    candidates = canary_candidates(len(embeddings))
    _, found = index.search(embeddings[candidates], 1)
    rows = tuple(int(r) for r in candidates[found[:, 0] == candidates][:CANARY_COUNT])
    if not rows:
        raise SnapshotInputError(
            f"no gallery vector finds itself first in a {factory!r} index: the index is too lossy "
            "or the gallery vectors are duplicates"
        )
    return rows


class Snapshot(RegionSearching):
    """A verified, loaded snapshot: search, region-level search, per-case embeddings and occlusion embeddings;
    `close()` frees it."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        index: faiss.Index,
        case_ids: tuple[str, ...],
        group_keys: tuple[str, ...] | None,
        occlusion: NpyRows | None,
        region_vectors: RegionVectors | None,
        device: str,
    ):
        self.path = path
        self.manifest = manifest
        self.case_ids = case_ids
        self.has_group_keys = group_keys is not None
        self._index = index
        self._occlusion = occlusion
        self._case_rows = CaseRows(case_ids, group_keys)
        self._regions = None if region_vectors is None else RegionIndex(
            region_vectors, self._case_rows, manifest.version, self.search)
        self._searcher = make_searcher(index, device)
        self._close_lock = threading.Lock()
        self.closed = False

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_occlusions(self) -> bool:
        """True when the snapshot holds every case's occlusion embeddings."""
        return self._occlusion is not None

    def search(
        self, queries: np.ndarray, k: int, exclusions: Exclusion | Sequence[Exclusion] | None = None
    ) -> list[QueryHits]:
        """Top-k gallery cases for each query row (Q, D) or single query (D,), outside each query's exclusions.

        `exclusions` is one Exclusion for every query or one per query. Returns k hits per query unless
        the gallery holds fewer eligible cases.
        """
        batch = check_queries(queries, self.manifest.dimension)
        check_k(k)
        excluded = [self._case_rows.excluded(e, self.version) for e in per_query(exclusions, len(batch))]
        self._require_open()
        found = search_excluding(
            self._searcher, batch, min(k, self.manifest.count), excluded, self.manifest.count
        )
        return [
            QueryHits(
                index_version=self.version,
                case_ids=tuple(self.case_ids[r] for r in rows),
                scores=tuple(float(s) for s in scores),
                ranks=tuple(range(1, len(rows) + 1)),
            )
            for scores, rows in found
        ]

    def embedding(self, case_id: str) -> np.ndarray:
        """The gallery vector of `case_id` (D,) as the index stores it (exact for Flat, approximate for PQ codes)."""
        row = self._row(case_id)
        self._require_open()
        return self._index.reconstruct(row)

    def occlusion_embeddings(self, case_id: str) -> np.ndarray | None:
        """The (R, D) region-occluded embeddings of `case_id`, or None if this snapshot has none.

        Only this case's rows are read from the file; SnapshotFileChangedError if it was truncated since.
        """
        row = self._row(case_id)
        self._require_open()
        return None if self._occlusion is None else self._occlusion.rows(row, row + 1)[0]

    def close(self) -> None:
        """Free the index, the search back end and the occlusion file."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self._searcher.close()
            self._index = None
            if self._occlusion is not None:
                self._occlusion.close()
            self._close_regions()
        log.info("snapshot closed", extra={"version": self.version})

    def _require_open(self) -> None:
        if self.closed:
            raise SnapshotError(f"snapshot {self.version} is closed")

    def _row(self, case_id: str) -> int:
        row = self._case_rows.row(case_id)
        if row is None:
            raise SnapshotNotFoundError(f"case is not in snapshot {self.version}")
        return row


def open_snapshot(
    directory: Path,
    *,
    expected_version: str | None = None,
    expected_fingerprint: str | None = None,
    expected_dimension: int | None = None,
    device: str = "cpu",
) -> Snapshot:
    """Verify (schema, fingerprint, every checksum, cross-file consistency, dimension), load, run the canary."""
    manifest = _read_verified_manifest(directory, expected_version, expected_fingerprint)
    index = _read_consistent_index(directory, manifest, expected_dimension)
    case_ids = _read_strings(directory / CASE_IDS_FILE, manifest.count)
    _agree(len(set(case_ids)) == len(case_ids), directory / CASE_IDS_FILE, "case ids are not unique")
    group_keys = None
    if GROUP_KEYS_FILE in manifest.files:
        group_keys = _read_strings(directory / GROUP_KEYS_FILE, manifest.count)
    canary_count = len(manifest.canary_rows)
    with NpyRows(directory / CANARY_FILE, (canary_count, manifest.dimension)) as canary_file:
        canary = canary_file.rows(0, canary_count)
    occlusion = None
    if manifest.occlusion_regions is not None:
        shape = (manifest.count, manifest.occlusion_regions, manifest.dimension)
        occlusion = NpyRows(directory / OCCLUSION_FILE, shape)
    snapshot = Snapshot(directory, manifest, index, case_ids, group_keys, occlusion,
                        open_region_vectors(directory, manifest), device)
    try:
        _run_canary(snapshot, canary)
    except BaseException:
        snapshot.close()
        raise
    log.info(
        "snapshot opened", extra={"version": manifest.version, "count": manifest.count, "device": device}
    )
    return snapshot


def read_gallery(directory: Path) -> tuple[GalleryData, Manifest]:
    """The gallery of the snapshot in `directory`, verified and canary-checked as `open_snapshot` does, to
    publish it into another back end. Only an exact (Flat) snapshot holds the gallery's vectors unchanged;
    its occlusion and region embeddings are memory-mapped, not read."""
    snapshot = open_snapshot(directory)
    try:
        if not faiss_index.is_exact(snapshot._index):
            raise SnapshotInputError(
                f"snapshot {snapshot.version} uses the approximate index {snapshot.manifest.factory!r}: only an "
                "exact (Flat) snapshot holds the gallery's vectors to publish elsewhere")
        embeddings = np.array(faiss_index.flat_vectors(snapshot._index))  # a copy: the index is freed below
        manifest = snapshot.manifest
        group_keys = None
        if snapshot.has_group_keys:
            group_keys = _read_strings(directory / GROUP_KEYS_FILE, manifest.count)
        occlusion = None
        if manifest.occlusion_regions is not None:
            occlusion = np.load(directory / OCCLUSION_FILE, mmap_mode="r", allow_pickle=False)
        regions = read_region_embeddings(directory, manifest)
    finally:
        snapshot.close()
    return GalleryData(embeddings, snapshot.case_ids, group_keys, occlusion, regions), manifest


def _read_verified_manifest(directory: Path, version: str | None, fingerprint: str | None) -> Manifest:
    """The manifest, checked against the caller's expectations, after every file matched its checksum."""
    if not directory.is_dir():
        raise SnapshotNotFoundError(f"snapshot directory {directory} does not exist", directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = parse_manifest(path.read_bytes(), path)
    except FileNotFoundError as exc:
        raise SnapshotCorruptError(f"{MANIFEST_FILE} is missing from {directory}", path) from exc
    _agree(
        version is None or manifest.version == version,
        path,
        f"version {manifest.version!r} does not match its directory {version!r}",
    )
    if fingerprint is not None and manifest.model_fingerprint != fingerprint:
        raise SnapshotIncompatibleError(
            f"{path.name} of snapshot {manifest.version}: model fingerprint {manifest.model_fingerprint!r} "
            f"is not the expected {fingerprint!r}",
            path,
        )
    for name, expected in manifest.files.items():
        verify_digest(directory / name, expected)
    return manifest


def _read_consistent_index(
    directory: Path, manifest: Manifest, expected_dimension: int | None
) -> faiss.Index:
    """The FAISS index, checked against the manifest (dimension, count, metric) and the expected dimension."""
    index = faiss_index.read_index(directory / INDEX_FILE)
    manifest_path = directory / MANIFEST_FILE
    _agree(
        index.d == manifest.dimension,
        manifest_path,
        f"dimension {manifest.dimension} but {INDEX_FILE} holds {index.d}-d vectors",
    )
    _agree(
        index.ntotal == manifest.count,
        manifest_path,
        f"count {manifest.count} but {INDEX_FILE} holds {index.ntotal} vectors",
    )
    _agree(
        index.metric_type == faiss.METRIC_INNER_PRODUCT,
        directory / INDEX_FILE,
        "the index does not use the inner-product metric",
    )
    if expected_dimension is not None and manifest.dimension != expected_dimension:
        raise SnapshotIncompatibleError(
            f"{MANIFEST_FILE} of snapshot {manifest.version}: dimension {manifest.dimension} "
            f"is not the expected {expected_dimension}",
            manifest_path,
        )
    faiss_index.apply_search_parameters(index, manifest.search_parameters)
    faiss_index.enable_reconstruction(index)
    return index


def _agree(condition: bool, path: Path, why: str) -> None:
    if not condition:
        raise SnapshotCorruptError(f"{path.name} in {path.parent}: {why}", path)


def _read_strings(path: Path, count: int) -> tuple[str, ...]:
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotCorruptError(f"{path.name} in {path.parent}: not valid JSON ({exc})", path) from exc
    _agree(
        isinstance(values, list) and all(isinstance(v, str) and v for v in values),
        path,
        "must be a JSON list of non-empty strings",
    )
    _agree(len(values) == count, path, f"holds {len(values)} entries, the manifest count is {count}")
    return tuple(values)


def _run_canary(snapshot: Snapshot, canary: np.ndarray) -> None:
    """Each canary vector must find its own case first, through the same search path queries take."""
    hits = snapshot.search(canary, 1)
    for row, hit in zip(snapshot.manifest.canary_rows, hits, strict=True):
        if hit.case_ids != (snapshot.case_ids[row],):
            raise SnapshotCorruptError(
                f"canary search failed in {snapshot.path}: the vector of row {row} did not find its own case first",
                snapshot.path / INDEX_FILE,
            )
