"""Recording index activations in the service database: the audit row, the snapshot it names and,
for a successful one, the recorded active choice that the service restores when it starts."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from index_store.manifest import Manifest
from service.db.repository import ActiveChoice, get_active_choice, record_activation, record_snapshot, set_active_choice
from service.db.session import session_scope

logger = logging.getLogger(__name__)


def commit_activation(sessions: sessionmaker[Session], manifest: Manifest, previous_version: str | None,
                      actor: str, outcome: str, *, requested_at: datetime | None = None) -> None:
    """In one transaction: register the snapshot of `manifest`, make it the recorded active choice
    (with `previous_version` as the rollback target) and audit the request as `outcome`."""
    with session_scope(sessions) as session:
        record_snapshot(session, version=manifest.version, model_fingerprint=manifest.model_fingerprint,
                        dimension=manifest.dimension, count=manifest.count, factory=manifest.factory,
                        created_at=datetime.fromisoformat(manifest.created))
        set_active_choice(session, ActiveChoice(manifest.version, previous_version))
        record_activation(session, manifest.version, actor, outcome, None, requested_at=requested_at)


def record_refusal(sessions: sessionmaker[Session], version: str, actor: str, detail: str, *,
                   requested_at: datetime | None = None) -> None:
    """Audit a refused activation of `version`. The refusal changed nothing, so a database that cannot
    take the row is logged, not raised: the refusal's own reason answers the request."""
    try:
        with session_scope(sessions) as session:
            record_activation(session, version, actor, "refused", detail, requested_at=requested_at)
    except SQLAlchemyError as error:
        logger.error("refused activation not audited: the database failed",
                     extra={"version": version, "actor": actor, "problem": type(error).__name__})


def recorded_choice(sessions: sessionmaker[Session]) -> ActiveChoice | None:
    """The active choice the database records, or None before the first activation."""
    with session_scope(sessions) as session:
        return get_active_choice(session)
