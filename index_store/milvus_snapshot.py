"""One snapshot version served from its own Milvus collection: search with exclusion filters, stored
vectors, occlusion embeddings and region-level search from the local sidecar files, and the checks run
before it may serve (every digest of the manifest recomputed from the collection's rows, then the canary search)."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient, MilvusException

from index_store.errors import (
    IndexUnavailableError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotInputError,
    SnapshotNotFoundError,
)
from index_store.files import NpyRows, verify_digest
from index_store.manifest import GROUP_KEYS_FILE, OCCLUSION_FILE, REGION_FILE, Manifest
from index_store.milvus_layout import (
    CASE_ID,
    GROUP_KEY,
    ROW,
    VECTOR,
    ContentDigests,
    exclusion_filter,
    id_filter,
    row_range_filter,
    search_parameters,
)
from index_store.region_search import RegionIndex, RegionSearching, RegionVectors, open_region_vectors
from index_store.search import CaseRows, Exclusion, QueryHits, check_k, check_queries, per_query

log = logging.getLogger(__name__)

_READ_ROWS = 4096  # rows per query while verifying: 16 MiB of vectors at D = 1024


@contextmanager
def milvus_errors(doing: str) -> Iterator[None]:
    """Raise a Milvus client error as IndexUnavailableError, saying what was being done."""
    try:
        yield
    except MilvusException as exc:
        raise IndexUnavailableError(f"Milvus failed while {doing}: {exc}") from exc


class MilvusSnapshot(RegionSearching):
    """A verified snapshot pinned to its concrete collection (never the alias), so a search that holds it
    keeps its version whatever is activated meanwhile. `close()` keeps the collection loaded: other
    replicas may serve it."""

    def __init__(self, client: MilvusClient, collection: str, manifest: Manifest, occlusion: NpyRows | None,
                 regions: tuple[RegionVectors, CaseRows] | None = None):
        self.manifest = manifest
        self.collection = collection
        self._client = client
        self._occlusion = occlusion
        self._regions = None if regions is None else RegionIndex(*regions, manifest.version, self.search)
        self._close_lock = threading.Lock()
        self.closed = False

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_group_keys(self) -> bool:
        return GROUP_KEYS_FILE in self.manifest.files

    @property
    def has_occlusions(self) -> bool:
        return self._occlusion is not None

    def search(
        self, queries: np.ndarray, k: int, exclusions: Exclusion | Sequence[Exclusion] | None = None
    ) -> list[QueryHits]:
        """Top-k cases per query row, outside each query's exclusions (one Milvus request per distinct
        exclusion); the same contract as index_store.snapshot.Snapshot.search."""
        batch = check_queries(queries, self.manifest.dimension)
        check_k(k)
        each = per_query(exclusions, len(batch))
        if not self.has_group_keys and any(e.group_keys for e in each):
            raise SnapshotInputError(f"snapshot {self.version} has no group keys to exclude by")
        limit = min(k, self.manifest.count)
        alike: dict[Exclusion, list[int]] = defaultdict(list)
        for position, exclusion in enumerate(each):
            alike[exclusion].append(position)
        hits: list[QueryHits | None] = [None] * len(batch)
        for exclusion, positions in alike.items():
            self._require_open()
            with milvus_errors(f"searching snapshot {self.version}"):
                found = self._client.search(
                    self.collection, data=batch[positions].tolist(), limit=limit,
                    filter=exclusion_filter(exclusion), output_fields=[CASE_ID], anns_field=VECTOR,
                    search_params={"metric_type": "IP",
                                   "params": search_parameters(self.manifest.search_parameters, limit)})
            for position, rows in zip(positions, found, strict=True):
                hits[position] = QueryHits(
                    index_version=self.version,
                    case_ids=tuple(row["entity"][CASE_ID] for row in rows),
                    scores=tuple(float(row["distance"]) for row in rows),
                    ranks=tuple(range(1, len(rows) + 1)))
        return hits

    def embedding(self, case_id: str) -> np.ndarray:
        """The stored vector (D,) of `case_id`."""
        self._require_open()
        with milvus_errors(f"reading a case of snapshot {self.version}"):
            rows = self._client.query(self.collection, filter=id_filter(case_id), output_fields=[VECTOR], limit=1)
        if not rows:
            raise SnapshotNotFoundError(f"case is not in snapshot {self.version}")
        return np.asarray(rows[0][VECTOR], dtype=np.float32)

    def occlusion_embeddings(self, case_id: str) -> np.ndarray | None:
        """The (R, D) region-occluded embeddings of `case_id` from the sidecar file, or None without one."""
        if self._occlusion is None:
            self.embedding(case_id)  # an unknown case is refused either way
            return None
        row = self._row(case_id)
        return self._occlusion.rows(row, row + 1)[0]

    def close(self) -> None:
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            if self._occlusion is not None:
                self._occlusion.close()
            self._close_regions()
        log.info("snapshot closed", extra={"version": self.version})

    def _row(self, case_id: str) -> int:
        self._require_open()
        with milvus_errors(f"reading a case of snapshot {self.version}"):
            rows = self._client.query(self.collection, filter=id_filter(case_id), output_fields=[ROW], limit=1)
        if not rows:
            raise SnapshotNotFoundError(f"case is not in snapshot {self.version}")
        return int(rows[0][ROW])

    def _require_open(self) -> None:
        if self.closed:
            raise SnapshotError(f"snapshot {self.version} is closed")


def open_collection(client: MilvusClient, collection: str, manifest: Manifest, sidecar: Path) -> MilvusSnapshot:
    """Load `collection`, recompute every digest of `manifest` from its rows (and the occlusion and region
    files in `sidecar`), then run the canary: each canary row's stored vector must find its own case first."""
    where = Path(collection)
    client.load_collection(collection)
    digests, canary = _read_back(client, collection, manifest)
    found = digests.entries(GROUP_KEYS_FILE in manifest.files)
    for name, digest in found.items():
        if manifest.files.get(name) != digest:
            raise SnapshotCorruptError(f"{name} of collection {collection}: the rows do not match the manifest's "
                                       "SHA-256", where / name)
    for name in (OCCLUSION_FILE, REGION_FILE):
        if name in manifest.files:
            verify_digest(sidecar / name, manifest.files[name])
    occlusion = None
    if manifest.occlusion_regions is not None:
        occlusion = NpyRows(sidecar / OCCLUSION_FILE, (manifest.count, manifest.occlusion_regions, manifest.dimension))
    region_vectors = open_region_vectors(sidecar, manifest)
    regions = None if region_vectors is None else (region_vectors, digests.case_rows(GROUP_KEYS_FILE in manifest.files))
    snapshot = MilvusSnapshot(client, collection, manifest, occlusion, regions)
    try:
        hits = snapshot.search(np.stack([vector for vector, _ in canary]), 1)
        for (_, case_id), hit in zip(canary, hits, strict=True):
            if hit.case_ids != (case_id,):
                raise SnapshotCorruptError(
                    f"canary search failed in collection {collection}: the vector of {case_id!r} did not find "
                    "its own case first", where)
    except BaseException:
        snapshot.close()
        raise
    return snapshot


def _read_back(client: MilvusClient, collection: str, manifest: Manifest
               ) -> tuple[ContentDigests, list[tuple[np.ndarray, str]]]:
    """The digests of every row, read in row order, and the (vector, case id) of each canary row."""
    digests = ContentDigests()
    canary_rows = set(manifest.canary_rows)
    canary: dict[int, tuple[np.ndarray, str]] = {}
    for start in range(0, manifest.count, _READ_ROWS):
        stop = min(start + _READ_ROWS, manifest.count)
        rows = client.query(collection, filter=row_range_filter(start, stop),
                            output_fields=[ROW, CASE_ID, GROUP_KEY, VECTOR], limit=stop - start)
        rows.sort(key=lambda row: row[ROW])
        if [row[ROW] for row in rows] != list(range(start, stop)):
            raise SnapshotCorruptError(
                f"collection {collection} does not hold rows {start}..{stop - 1} of its manifest count "
                f"{manifest.count}", Path(collection))
        vectors = np.asarray([row[VECTOR] for row in rows], dtype=np.float32)
        if vectors.shape[1] != manifest.dimension:
            raise SnapshotCorruptError(f"collection {collection} holds {vectors.shape[1]}-d vectors, the manifest "
                                       f"says {manifest.dimension}", Path(collection))
        digests.add(vectors, (row[CASE_ID] for row in rows), (row[GROUP_KEY] for row in rows))
        for offset, row in enumerate(rows):
            if row[ROW] in canary_rows:
                canary[row[ROW]] = (vectors[offset], row[CASE_ID])
    return digests, [canary[row] for row in manifest.canary_rows]
