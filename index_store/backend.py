"""The index back-end interface the service talks to: publish, list and open snapshot versions, and
point the back end's own active marker at one. Two implementations: the local snapshot store
(index_store.local_backend: FAISS or PyTorch on this machine) and Milvus (index_store.milvus_backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from index_store.gallery import GalleryData
from index_store.manifest import Manifest
from index_store.search import Exclusion, QueryHits
from index_store.store import StoreEntry


class ServingSnapshot(Protocol):
    """One verified, opened snapshot version: what a search lease holds until it ends."""

    manifest: Manifest

    @property
    def version(self) -> str: ...

    @property
    def has_group_keys(self) -> bool: ...

    @property
    def has_occlusions(self) -> bool: ...

    @property
    def has_region_vectors(self) -> bool: ...

    def search(
        self, queries: np.ndarray, k: int, exclusions: Exclusion | Sequence[Exclusion] | None = None
    ) -> list[QueryHits]: ...

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
        """Top-k by the mean over `regions` of same-region inner products (index_store.region_search);
        RegionSearchUnavailableError when the snapshot has no region vectors."""
        ...

    def embedding(self, case_id: str) -> np.ndarray: ...

    def occlusion_embeddings(self, case_id: str) -> np.ndarray | None: ...

    def close(self) -> None: ...


class IndexBackend(Protocol):
    """Where snapshot versions are published, listed and opened (verified, canary-checked)."""

    name: str  # "local" or "milvus"
    where: str  # for messages: the store directory or the Milvus URI

    def publish_gallery(
        self,
        gallery: GalleryData,
        *,
        model_fingerprint: str,
        factory: str | None = None,
        search_parameters: str | None = None,
        version: str | None = None,
    ) -> Manifest: ...

    def publish_directory(self, source: Path, *, version: str | None = None) -> Manifest:
        """Publish the verified local snapshot directory `source` (e.g. built with `index build --out`),
        under its own version or `version`."""
        ...

    def list_snapshots(self) -> list[StoreEntry]: ...

    def remove_abandoned_staging(self) -> list[str]:
        """Remove what publishers that died left behind; returns what was removed."""
        ...

    def open_version(
        self,
        version: str,
        *,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        device: str = "cpu",
    ) -> ServingSnapshot: ...

    def mark_active(self, version: str) -> None:
        """Point the back end's own active marker (Milvus: the alias) at `version`, atomically."""
        ...

    def close(self) -> None:
        """Release the connection (once no snapshot of this back end serves any more)."""
        ...
