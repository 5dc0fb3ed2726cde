"""The local back end: the snapshot store directory (index_store.store) searched on this machine."""

from __future__ import annotations

from pathlib import Path

from index_store.faiss_index import EXACT_FACTORY
from index_store.gallery import GalleryData
from index_store.manifest import Manifest
from index_store.snapshot import Snapshot
from index_store.store import (
    StoreEntry,
    list_snapshots,
    open_version,
    publish_directory,
    publish_gallery,
    remove_abandoned_staging,
)


class LocalBackend:
    """Snapshots as directories of `store`; activation is the running service's choice alone."""

    name = "local"

    def __init__(self, store: Path):
        self.store = store
        self.where = f"index store {store}"

    def publish_gallery(
        self,
        gallery: GalleryData,
        *,
        model_fingerprint: str,
        factory: str | None = None,
        search_parameters: str | None = None,
        version: str | None = None,
    ) -> Manifest:
        """Build a FAISS snapshot (default: exact) and publish it atomically into the store."""
        return publish_gallery(self.store, gallery, model_fingerprint=model_fingerprint,
                               factory=factory or EXACT_FACTORY, search_parameters=search_parameters,
                               version=version)

    def publish_directory(self, source: Path, *, version: str | None = None) -> Manifest:
        """Copy the verified snapshot into the store, its files unchanged (index_store.store.publish_directory)."""
        return publish_directory(source, self.store, version=version)

    def list_snapshots(self) -> list[StoreEntry]:
        return list_snapshots(self.store)

    def remove_abandoned_staging(self) -> list[str]:
        """The staging directories of dead publishers (their lock is free)."""
        return [str(path) for path in remove_abandoned_staging(self.store)]

    def open_version(
        self,
        version: str,
        *,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        device: str = "cpu",
    ) -> Snapshot:
        return open_version(self.store, version, expected_fingerprint=expected_fingerprint,
                            expected_dimension=expected_dimension, device=device)

    def mark_active(self, version: str) -> None:
        """Nothing to move: the store has no active marker; the service database records the choice."""

    def close(self) -> None:
        """Nothing to release: each snapshot frees its own files."""
