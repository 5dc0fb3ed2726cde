"""Region-level search: "cases like this one in these regions".

A snapshot may carry each case's per-region vectors (the network's node embeddings, L2-normalised per
region) in `region_embeddings.npy`, float32 region-major (R, N, D): scanning one region reads one
contiguous block. The score of a case for a query and a set of regions is the mean over those regions
of the inner product of the query's and the case's vectors of the same region, so it lies in [-1, 1]
like the whole-image score.

Two ways to rank, both here and used alike by the local and the Milvus snapshot:
- exact (the default): every case scored, the file read block by block (nothing of it is held in
  memory beyond one block; the page cache serves repeated scans);
- re-ranking a shortlist: only the M best cases of the whole-image search are scored (M reads per region).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index_store.errors import RegionSearchUnavailableError, SnapshotInputError
from index_store.files import FileDigest, NpyRows, write_npy_blocks
from index_store.manifest import REGION_FILE, Manifest
from index_store.search import CaseRows, Exclusion, QueryHits, check_k, check_queries

SCAN_BLOCK_ROWS = 16384  # cases per block of an exact scan: 16 MiB of one region's vectors at D = 256

ImageSearch = Callable[[np.ndarray, int, Exclusion], list[QueryHits]]


@dataclass(frozen=True)
class RegionQuery:
    """A checked region query: one float32 vector (D,) per chosen region, and the regions' numbers."""

    vectors: np.ndarray  # (len(regions), D)
    regions: tuple[int, ...]


def region_query(query_nodes: np.ndarray, regions: Sequence[int], region_count: int, dimension: int) -> RegionQuery:
    """Check a region query. `query_nodes` is either every region's vector (region_count, D), indexed by
    region number, or one vector per entry of `regions` (len(regions), D), in that order; `regions` are
    1..region_count distinct region numbers. SnapshotInputError otherwise."""
    chosen = tuple(regions)
    if (not chosen or len(set(chosen)) != len(chosen)
            or not all(isinstance(r, int | np.integer) and not isinstance(r, bool) and 0 <= r < region_count
                       for r in chosen)):
        raise SnapshotInputError(f"regions must be 1 to {region_count} distinct region numbers in "
                                 f"0..{region_count - 1}, got {list(chosen)}")
    chosen = tuple(int(r) for r in chosen)
    nodes = np.asarray(query_nodes)
    if nodes.ndim != 2 or nodes.shape[0] not in (region_count, len(chosen)):
        raise SnapshotInputError(f"query_nodes must have shape ({region_count}, {dimension}) or "
                                 f"({len(chosen)}, {dimension}), got {nodes.shape}")
    vectors = check_queries(nodes[list(chosen)] if nodes.shape[0] == region_count else nodes, dimension)
    return RegionQuery(vectors, chosen)


def region_count(region_embeddings: np.ndarray | None) -> int | None:
    """How many regions a gallery's (N, R, D) region embeddings hold (None without them)."""
    return None if region_embeddings is None else region_embeddings.shape[1]


def write_region_file(directory: Path, region_embeddings: np.ndarray | None) -> dict[str, FileDigest]:
    """Write a gallery's (N, R, D) region embeddings region-major (R, N, D) into `directory`, one region at
    a time; returns its manifest entry ({} without region embeddings)."""
    if region_embeddings is None:
        return {}
    count, regions, dimension = region_embeddings.shape
    blocks = (region_embeddings[:, region] for region in range(regions))
    return {REGION_FILE: write_npy_blocks(directory / REGION_FILE, (regions, count, dimension), blocks)}


def read_region_embeddings(directory: Path, manifest: Manifest) -> np.ndarray | None:
    """The verified snapshot's region embeddings as a gallery holds them, (N, R, D): a transposed memory
    map of its region-major file, nothing read (None without them)."""
    if manifest.region_count is None:
        return None
    return np.load(directory / REGION_FILE, mmap_mode="r", allow_pickle=False).transpose(1, 0, 2)


class RegionVectors:
    """The region-major float32 (R, N, D) file of one snapshot, its header and size checked on opening;
    read with positional reads (index_store.files.NpyRows), never memory-mapped."""

    def __init__(self, path: Path, region_count: int, count: int, dimension: int):
        self.region_count, self.count, self.dimension = region_count, count, dimension
        self._file = NpyRows(path, (region_count, count, dimension))

    def scores(self, query: RegionQuery, rows: np.ndarray | None = None) -> np.ndarray:
        """The region score (float32) of every case in row order, or of the cases `rows` in their order."""
        if rows is None:
            return self._scan(query)
        order = np.argsort(rows, kind="stable")  # reads in file order
        block = np.empty((len(rows), self.dimension), dtype=np.float32)
        total = np.zeros(len(rows), dtype=np.float32)
        for vector, region in zip(query.vectors, query.regions, strict=True):
            for position in order:
                row = int(rows[position])
                self._file.sub_rows(region, row, row + 1, out=block[position:position + 1])
            total += block @ vector
        return total / np.float32(len(query.regions))

    def _scan(self, query: RegionQuery) -> np.ndarray:
        total = np.zeros(self.count, dtype=np.float32)
        buffer = np.empty((min(SCAN_BLOCK_ROWS, self.count), self.dimension), dtype=np.float32)
        for vector, region in zip(query.vectors, query.regions, strict=True):
            for start in range(0, self.count, SCAN_BLOCK_ROWS):
                stop = min(start + SCAN_BLOCK_ROWS, self.count)
                block = self._file.sub_rows(region, start, stop, out=buffer[:stop - start])
                total[start:stop] += block @ vector
        return total / np.float32(len(query.regions))

    def close(self) -> None:
        self._file.close()


def open_region_vectors(directory: Path, manifest: Manifest) -> RegionVectors | None:
    """The region file of the snapshot in `directory` (its digest already verified), or None without one."""
    if manifest.region_count is None:
        return None
    return RegionVectors(directory / REGION_FILE, manifest.region_count, manifest.count, manifest.dimension)


class RegionIndex:
    """Region-level search over one snapshot: its region vectors, its case rows (for ids and exclusions)
    and its whole-image search (for the shortlist)."""

    def __init__(self, vectors: RegionVectors, case_rows: CaseRows, version: str, image_search: ImageSearch):
        self._vectors = vectors
        self._case_rows = case_rows
        self._version = version
        self._image_search = image_search

    def search(self, query_nodes: np.ndarray, regions: Sequence[int], k: int, exclusion: Exclusion | None = None,
               *, shortlist: int | None = None, image_query: np.ndarray | None = None) -> QueryHits:
        """The k best cases by region score outside `exclusion`, best first.

        Exact over the whole gallery when `shortlist` is None; otherwise only the max(shortlist, k) best
        cases of the whole-image search for `image_query` (D,) are scored."""
        vectors = self._vectors
        query = region_query(query_nodes, regions, vectors.region_count, vectors.dimension)
        check_k(k)
        exclusion = exclusion or Exclusion()
        if shortlist is None:
            scores = vectors.scores(query)
            scores[self._case_rows.excluded(exclusion, self._version)] = -np.inf
            rows = np.arange(vectors.count)
        else:
            rows = self._shortlist(image_query, shortlist, k, exclusion)
            scores = vectors.scores(query, rows)
        best = _best(scores, k)
        return QueryHits(index_version=self._version,
                         case_ids=tuple(self._case_rows.case_ids[rows[i]] for i in best),
                         scores=tuple(float(scores[i]) for i in best),
                         ranks=tuple(range(1, len(best) + 1)))

    def close(self) -> None:
        self._vectors.close()

    def _shortlist(self, image_query: np.ndarray | None, shortlist: int, k: int, exclusion: Exclusion) -> np.ndarray:
        if isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1:
            raise SnapshotInputError(f"shortlist must be a positive integer or None, got {shortlist!r}")
        if image_query is None:
            raise SnapshotInputError("a shortlist search needs the query's whole-image embedding (image_query)")
        hits = self._image_search(image_query, max(shortlist, k), exclusion)[0]
        return np.asarray([self._case_rows.row(case_id) for case_id in hits.case_ids], dtype=np.int64)


class RegionSearching:
    """Region-level search for a snapshot class (local and Milvus): it sets `_regions` (its RegionIndex, None
    without region vectors) and has `version` and `_require_open()`."""

    _regions: RegionIndex | None
    version: str

    @property
    def has_region_vectors(self) -> bool:
        """True when the snapshot holds every case's per-region vectors."""
        return self._regions is not None

    def search_regions(
        self,
        query_nodes: np.ndarray,
        regions: Sequence[int],
        k: int,
        exclusions: Exclusion | None = None,
        *,
        shortlist: int | None = None,
        image_query: np.ndarray | None = None,
    ) -> QueryHits:
        """Top-k cases by the mean over `regions` of the query's and the case's same-region inner products
        (RegionIndex.search); RegionSearchUnavailableError naming the snapshot without region vectors."""
        self._require_open()
        if self._regions is None:
            raise RegionSearchUnavailableError(
                f"snapshot {self.version} holds no per-region vectors, so it cannot search by region: publish "
                "one built from a gallery embeddings file with region_embeddings (chextriev embed writes them)")
        return self._regions.search(query_nodes, regions, k, exclusions, shortlist=shortlist,
                                    image_query=image_query)

    def _close_regions(self) -> None:
        if self._regions is not None:
            self._regions.close()


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest finite scores, best first, ties by position."""
    eligible = int(np.isfinite(scores).sum())
    take = min(k, eligible)
    if take == 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, take - 1)[:take] if take < len(scores) else np.arange(len(scores))
    top = top[np.isfinite(scores[top])]
    return top[np.lexsort((top, -scores[top]))]
