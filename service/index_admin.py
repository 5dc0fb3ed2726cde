"""Index administration: list the store, activate a snapshot, roll back; every request is recorded.

Activation verifies the snapshot (checksums, dimension, model fingerprint), loads it and runs its
canary search; then, still under the index's activation lock, records the new active choice in the
database, and only once that is committed swaps the snapshot in (index_store.active.ActiveIndex). So
the database and the live index agree whatever fails and in whatever order requests arrive: on any
failure, the recording included, the active snapshot stays and the request gets the typed error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy.exc import SQLAlchemyError

from index_store.active import ActiveIndex, Commit, NoPreviousSnapshotError
from index_store.errors import SnapshotError
from index_store.manifest import Manifest
from service.db.session import driver_message
from service.problems import Problem, unavailable
from service.schemas import ActivationResponse, IndexListing, SnapshotSummary
from service.snapshot_records import commit_activation, record_refusal
from service.state import ServiceState

logger = logging.getLogger(__name__)


def index_listing(state: ServiceState) -> IndexListing:
    """The active snapshot, the rollback target and every snapshot of the store."""
    index = _index(state)
    manifest = index.manifest
    return IndexListing(
        active=SnapshotSummary.of_manifest(manifest) if manifest else None,
        previous_version=index.previous_version,
        available=[SnapshotSummary.of_entry(entry) for entry in index.backend.list_snapshots()])


def activate_version(state: ServiceState, version: str, actor: str) -> ActivationResponse:
    """Verify, load, canary-check, record and swap in `version`; audited as "activated" or "refused"."""
    index = _index(state)
    return _change(state, index, lambda: version, actor, "activated",
                   lambda commit: index.activate(version, commit=commit))


def roll_back(state: ServiceState, actor: str) -> ActivationResponse:
    """Swap the previously active snapshot back in; audited as "rolled_back" or "refused". The target
    is read under the index's activation lock, so concurrent rollbacks take turns."""
    index = _index(state)
    try:
        return _change(state, index, lambda: index.previous_version or "none", actor, "rolled_back",
                       lambda commit: index.rollback(commit=commit))
    except NoPreviousSnapshotError as error:
        raise Problem(409, "no-previous-snapshot", str(error)) from error


def _change(state: ServiceState, index: ActiveIndex, refused_version: Callable[[], str], actor: str,
            outcome: str, swap: Callable[[Commit], Manifest]) -> ActivationResponse:
    """Run `swap` with a commit that records the outcome before the swap takes effect; a refusal is
    audited under `refused_version()` (for a rollback, the target it could not bring back). The
    answer names the rollback target as committed, whatever other requests do meanwhile."""
    requested_at = datetime.now(timezone.utc)
    committed: list[str | None] = []

    def commit(manifest: Manifest, previous_version: str | None) -> None:
        commit_activation(state.sessions, manifest, previous_version, actor, outcome, requested_at=requested_at)
        committed.append(previous_version)

    try:
        manifest = swap(commit)
    except SQLAlchemyError as error:
        logger.error("index activation not recorded; the active snapshot stays",
                     extra={"version": refused_version(), "actor": actor, "problem": driver_message(error)})
        raise unavailable("activation-not-recorded", "the activation could not be recorded in the database, so it "
                          "did not take effect; the active snapshot is unchanged") from error
    except SnapshotError as error:
        version = refused_version()
        record_refusal(state.sessions, version, actor, str(error), requested_at=requested_at)
        logger.warning("index activation refused", extra={"version": version, "actor": actor, "problem": str(error)})
        raise
    state.mark_index_active()
    logger.info("index activation", extra={"version": manifest.version, "actor": actor, "outcome": outcome})
    return ActivationResponse(active=SnapshotSummary.of_manifest(manifest), previous_version=committed[-1])


def _index(state: ServiceState) -> ActiveIndex:
    if state.index is None:
        raise unavailable("not-ready", f"the index is not available: {state.load_problem}")
    return state.index
