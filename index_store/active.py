"""The active snapshot of a running service, from any index back end: lease-counted, swapped atomically,
with rollback.

Readers take a lease on the current snapshot (a short lock only to read the pointer and count the
lease, never held during a search), so a search runs entirely on one snapshot; a swap only moves the
pointer, and a replaced snapshot is closed when its last lease ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from index_store.backend import IndexBackend, ServingSnapshot
from index_store.errors import SnapshotNotFoundError
from index_store.manifest import Manifest
from index_store.search import Exclusion, QueryHits

log = logging.getLogger(__name__)


class NoPreviousSnapshotError(SnapshotNotFoundError):
    """A rollback was asked for, but no snapshot was active before the current one."""


# Called with the manifest about to serve and the version a rollback would then return to.
Commit = Callable[[Manifest, str | None], None]


@dataclass
class _Held:
    snapshot: ServingSnapshot
    leases: int = 0
    retired: bool = False


class ActiveIndex:
    """The snapshot that serves searches, chosen from a back end; activate, roll back, search, lease."""

    def __init__(
        self,
        backend: IndexBackend,
        *,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        device: str = "cpu",
    ):
        self.backend = backend
        self._expected_fingerprint = expected_fingerprint
        self._expected_dimension = expected_dimension
        self._device = device
        self._lock = threading.Lock()  # guards _current and lease counts only
        self._activation_lock = threading.Lock()  # one activation or rollback at a time
        self._current: _Held | None = None
        self._previous_version: str | None = None

    @property
    def manifest(self) -> Manifest | None:
        """The manifest of the active snapshot, or None before the first activation."""
        held = self._current
        return held.snapshot.manifest if held else None

    @property
    def previous_version(self) -> str | None:
        """The version a rollback would return to."""
        return self._previous_version

    def activate(self, version: str, *, commit: Commit | None = None) -> Manifest:
        """Verify, load and canary-check `version`, then swap it in; on any failure the active one stays.

        The back end's own active marker (Milvus: the alias) is moved after the checks; then
        `commit(manifest, previous_version)`, when given, runs before the swap, under the activation
        lock: the swap happens only if it returns (e.g. once the choice is recorded), so whatever it
        records is what serves; if it fails, the marker is moved back. Activating the active version
        again swaps nothing but still commits."""
        with self._activation_lock:
            current = self._current
            if current is not None and current.snapshot.version == version:
                if commit is not None:
                    commit(current.snapshot.manifest, self._previous_version)
                return current.snapshot.manifest
            return self._swap_in(version, self._current_version(), commit)

    def rollback(self, *, commit: Commit | None = None) -> Manifest:
        """Activate the previously active version again (verified and committed like any activation);
        the rollback target is read under the activation lock, so concurrent rollbacks take turns."""
        with self._activation_lock:
            if self._previous_version is None:
                raise NoPreviousSnapshotError("there is no previous snapshot to roll back to")
            return self._swap_in(self._previous_version, self._current_version(), commit)

    def restore(self, version: str, previous_version: str | None, *,
                commit: Commit | None = None) -> Manifest | None:
        """At start-up: activate `version` with `previous_version` as the rollback target, unless a
        snapshot is already active (an activation that came first is kept; None is returned then)."""
        with self._activation_lock:
            if self._current is not None:
                return None
            return self._swap_in(version, previous_version, commit)

    @contextmanager
    def lease(self) -> Iterator[ServingSnapshot]:
        """The active snapshot, guaranteed open until the block ends even if another is swapped in meanwhile."""
        with self._lock:
            held = self._current
            if held is None:
                raise SnapshotNotFoundError("no index snapshot is active")
            held.leases += 1
        try:
            yield held.snapshot
        finally:
            with self._lock:
                held.leases -= 1
                release = held.retired and held.leases == 0
            if release:
                held.snapshot.close()

    def search(
        self, queries: np.ndarray, k: int, exclusions: Exclusion | Sequence[Exclusion] | None = None
    ) -> list[QueryHits]:
        """Search the active snapshot (see Snapshot.search); every hit list reports the version that served it."""
        with self.lease() as snapshot:
            return snapshot.search(queries, k, exclusions)

    def close(self) -> None:
        """Retire the active snapshot; it is closed once its last lease ends."""
        with self._activation_lock:
            self._retire(None)

    def _current_version(self) -> str | None:
        held = self._current
        return held.snapshot.version if held else None

    def _swap_in(self, version: str, previous_version: str | None, commit: Commit | None) -> Manifest:
        snapshot = self.backend.open_version(
            version,
            expected_fingerprint=self._expected_fingerprint,
            expected_dimension=self._expected_dimension,
            device=self._device,
        )
        serving = self._current_version()
        try:
            self.backend.mark_active(version)
            if commit is not None:
                commit(snapshot.manifest, previous_version)
        except BaseException:
            snapshot.close()
            if serving is not None and serving != version:
                self._mark_serving(serving)
            raise
        self._retire(_Held(snapshot))
        self._previous_version = previous_version
        log.info("index snapshot activated", extra={"version": version, "previous_version": previous_version})
        return snapshot.manifest

    def _mark_serving(self, version: str) -> None:
        """Point the back end's marker back at the snapshot that still serves; a failure is logged, so the
        activation's own error is the one raised."""
        try:
            self.backend.mark_active(version)
        except Exception:  # noqa: BLE001 - reported here; the caller gets the activation's error
            log.exception("the back end's active marker could not be moved back", extra={"version": version})

    def _retire(self, new: _Held | None) -> None:
        """Make `new` current; close the old one now if unleased, else when its last lease ends."""
        with self._lock:
            old, self._current = self._current, new
            if old is None:
                return
            old.retired = True
            release = old.leases == 0
        if release:
            old.snapshot.close()
