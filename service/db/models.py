"""SQLAlchemy 2 models of the service database: cases, index snapshots, their activations and the active
one, search audit.

Portable between SQLite and PostgreSQL: JSON columns are `sa.JSON`, timestamps are timezone-aware UTC.
No column holds a patient identifier or image bytes; patients appear only as salted hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, Dialect, Float, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
ACTIVATION_OUTCOMES: tuple[str, ...] = ("activated", "rolled_back", "refused")
ID_LENGTH = 128
UID_LENGTH = 64  # DICOM UIDs have at most 64 characters
HASH_LENGTH = 64  # hex SHA-256


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with constraint names that are the same on every backend."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Case(Base):
    """A gallery case: what a search result shows about a retrieved radiograph."""

    __tablename__ = "cases"

    case_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    patient_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    series_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    sop_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    findings: Mapped[list[Any]]
    region_boxes: Mapped[list[Any]]
    image_path: Mapped[str] = mapped_column(String(1024))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    case_metadata: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class IndexSnapshot(Base):
    """An index snapshot known to the service (registered when published or first activated)."""

    __tablename__ = "index_snapshots"

    version: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(ID_LENGTH))
    dimension: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    factory: Mapped[str] = mapped_column(Text)  # FAISS factory strings have no length bound
    created_at: Mapped[datetime]
    registered_at: Mapped[datetime] = mapped_column(default=utc_now)


class IndexActivation(Base):
    """One request to activate or roll back a snapshot, with who asked, when, and what happened."""

    __tablename__ = "index_activations"
    __table_args__ = (
        CheckConstraint(f"outcome IN ({', '.join(repr(outcome) for outcome in ACTIVATION_OUTCOMES)})",
                        name="outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(ID_LENGTH))
    actor: Mapped[str] = mapped_column(String(ID_LENGTH))
    requested_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class ActiveSnapshot(Base):
    """Which snapshot serves searches and which one a rollback returns to: a single row, written in the
    same transaction as the activation that changes it and restored when the service starts."""

    __tablename__ = "active_snapshot"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[str] = mapped_column(String(ID_LENGTH))
    previous_version: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    updated_at: Mapped[datetime]


class SearchAudit(Base):
    """One search: its versions, size, latency and result ids; never the image or a patient id."""

    __tablename__ = "search_audit"

    query_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    k: Mapped[int] = mapped_column(Integer)
    index_version: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    model_fingerprint: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    latency_ms: Mapped[float] = mapped_column(Float)
    result_case_ids: Mapped[list[Any]]
    status_code: Mapped[int] = mapped_column(Integer)
