"""Recording index activations (and the snapshots they name) in the service database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from index_store.manifest import Manifest
from service.db.repository import record_activation, record_snapshot
from service.db.session import session_scope


def record_outcome(sessions: sessionmaker[Session], version: str, actor: str, outcome: str,
                   detail: str | None, manifest: Manifest | None = None, *,
                   requested_at: datetime | None = None) -> None:
    """Record one activation, rollback or refusal of `version`; registers the snapshot when its
    `manifest` is known (a successful activation)."""
    with session_scope(sessions) as session:
        if manifest is not None:
            record_snapshot(session, version=manifest.version, model_fingerprint=manifest.model_fingerprint,
                            dimension=manifest.dimension, count=manifest.count, factory=manifest.factory,
                            created_at=_parse_created(manifest.created))
        record_activation(session, version, actor, outcome, detail, requested_at=requested_at)


def _parse_created(created: str) -> datetime:
    """The manifest's ISO 8601 UTC timestamp (`...Z`) as an aware datetime."""
    return datetime.fromisoformat(created)
