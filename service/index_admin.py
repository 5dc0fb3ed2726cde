"""Index administration: list the store, activate a snapshot, roll back; every request is recorded.

Activation verifies the snapshot (checksums, dimension, model fingerprint), loads it, runs its
canary search and swaps it in atomically (index_store.active.ActiveIndex); on any failure the active
snapshot stays, the refusal is recorded with its reason, and the typed error answers the request.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from index_store.active import ActiveIndex
from index_store.errors import SnapshotError
from index_store.manifest import Manifest
from index_store.store import list_snapshots
from service.problems import Problem
from service.schemas import ActivationResponse, IndexListing, SnapshotSummary
from service.snapshot_records import record_outcome
from service.state import ServiceState

logger = logging.getLogger(__name__)


def index_listing(state: ServiceState) -> IndexListing:
    """The active snapshot, the rollback target and every snapshot of the store."""
    index = _index(state)
    manifest = index.manifest
    return IndexListing(
        active=SnapshotSummary.of_manifest(manifest) if manifest else None,
        previous_version=index.previous_version,
        available=[SnapshotSummary.of_entry(entry) for entry in list_snapshots(Path(state.settings.index_store))])


def activate_version(state: ServiceState, version: str, actor: str) -> ActivationResponse:
    """Verify, load, canary-check and swap in `version`; recorded as "activated" or "refused"."""
    index = _index(state)
    return _record(state, index, version, actor, "activated", lambda: index.activate(version))


def roll_back(state: ServiceState, actor: str) -> ActivationResponse:
    """Swap the previously active snapshot back in; recorded as "rolled_back" or "refused"."""
    index = _index(state)
    target = index.previous_version
    if target is None:
        current = index.manifest.version if index.manifest else "none"
        record_outcome(state.sessions, current, actor, "refused", "there is no previous snapshot to roll back to")
        raise Problem(409, "no-previous-snapshot", "there is no previous snapshot to roll back to")
    return _record(state, index, target, actor, "rolled_back", index.rollback)


def _record(state: ServiceState, index: ActiveIndex, version: str, actor: str, outcome: str,
            swap) -> ActivationResponse:
    requested_at = datetime.now(timezone.utc)
    try:
        manifest: Manifest = swap()
    except SnapshotError as error:
        record_outcome(state.sessions, version, actor, "refused", str(error), requested_at=requested_at)
        logger.warning("index activation refused", extra={"version": version, "actor": actor, "problem": str(error)})
        raise
    record_outcome(state.sessions, version, actor, outcome, None, manifest, requested_at=requested_at)
    state.mark_index_active()
    logger.info("index activation", extra={"version": version, "actor": actor, "outcome": outcome})
    return ActivationResponse(active=SnapshotSummary.of_manifest(manifest), previous_version=index.previous_version)


def _index(state: ServiceState) -> ActiveIndex:
    if state.index is None:
        raise Problem(503, "not-ready", f"the index is not available: {state.load_problem}",
                      headers={"Retry-After": "5"})
    return state.index
