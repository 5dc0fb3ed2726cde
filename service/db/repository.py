"""Reads and writes of the service database. Plain dataclasses cross this boundary, never ORM objects.

Every function takes a session from `session.session_scope` and leaves committing to it.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from model.catalogue import NUM_REGIONS
from model.errors import ChextrievError
from model.patient_keys import patient_hash
from service.db.models import (
    ACTIVATION_OUTCOMES,
    ActiveSnapshot,
    Case,
    IndexActivation,
    IndexSnapshot,
    SearchAudit,
    utc_now,
)

__all__ = [
    "ActivationRecord", "ActiveChoice", "CaseRecord", "InvalidRecordError", "SearchAuditRecord", "UpsertCounts",
    "get_active_choice", "get_case", "get_cases", "list_activations", "list_recent_searches", "patient_hash",
    "record_activation", "record_search", "record_snapshot", "set_active_choice", "upsert_cases",
]

# Rows fetched per IN (...) query: far below every backend's bound-parameter limit.
CHUNK_SIZE = 500
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
# Metadata keys (compared without case, spaces, "_" or "-") that would identify a patient.
IDENTIFYING_KEYS = frozenset({
    "patientid", "patientname", "patientbirthdate", "birthdate", "dateofbirth", "patientaddress",
    "otherpatientids", "accessionnumber", "mrn", "medicalrecordnumber",
})


class InvalidRecordError(ChextrievError, ValueError):
    """A record cannot be stored as given; the message names the record and the problem."""


@dataclass(frozen=True)
class CaseRecord:
    """A gallery case as stored: the patient only as `patient_hash` (None when unknown), boxes in
    catalogue order (18 x [x1, y1, x2, y2] pixels), `image_path` relative to the image root."""

    case_id: str
    patient_hash: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    findings: list[str]
    region_boxes: list[list[float]]
    image_path: str
    width: int
    height: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = list(_case_problems(self))
        if problems:
            raise InvalidRecordError(f"case {self.case_id!r}: {'; '.join(problems)}")


@dataclass(frozen=True)
class SearchAuditRecord:
    """One search as audited: versions, size, latency and result ids (no image, no patient id)."""

    query_id: str
    created_at: datetime
    k: int
    index_version: str | None
    model_fingerprint: str | None
    latency_ms: float
    result_case_ids: list[str]
    status_code: int

    def __post_init__(self) -> None:
        _require_utc_aware(f"search {self.query_id!r}: created_at", self.created_at)


@dataclass(frozen=True)
class ActivationRecord:
    """One activation or rollback request and its outcome."""

    id: int
    version: str
    actor: str
    requested_at: datetime
    finished_at: datetime
    outcome: str
    detail: str | None


@dataclass(frozen=True)
class ActiveChoice:
    """The snapshot version that serves searches and the one a rollback returns to."""

    version: str
    previous_version: str | None


@dataclass(frozen=True)
class UpsertCounts:
    """How many cases an upsert inserted and how many it updated."""

    inserted: int
    updated: int


def upsert_cases(session: Session, cases: Sequence[CaseRecord]) -> UpsertCounts:
    """Insert new cases and overwrite existing ones (matched by case_id); created_at is kept on update."""
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
        raise InvalidRecordError(f"case ids given more than once: {duplicates[:5]}")
    existing = {row.case_id: row for row in _cases_by_id(session, ids)}
    for case in cases:
        row = existing.get(case.case_id)
        if row is None:
            session.add(Case(case_id=case.case_id, **_case_columns(case)))
        else:
            for name, value in _case_columns(case).items():
                setattr(row, name, value)
    session.flush()
    return UpsertCounts(inserted=len(cases) - len(existing), updated=len(existing))


def get_cases(session: Session, case_ids: Iterable[str]) -> dict[str, CaseRecord]:
    """The stored cases among `case_ids`, by id; unknown ids (and unstorable ones) are absent."""
    storable = [case_id for case_id in dict.fromkeys(case_ids) if _storable_id(case_id)]
    return {row.case_id: _case_record(row) for row in _cases_by_id(session, storable)}


def get_case(session: Session, case_id: str) -> CaseRecord | None:
    """One stored case, or None (also for an id that no database could have stored)."""
    row = session.get(Case, case_id) if _storable_id(case_id) else None
    return None if row is None else _case_record(row)


def list_cases(session: Session, limit: int, offset: int = 0) -> tuple[list[CaseRecord], int]:
    """At most `limit` stored cases in case id order from `offset`, and how many are stored in all."""
    rows = session.scalars(select(Case).order_by(Case.case_id).limit(limit).offset(offset))
    total = session.scalar(select(func.count()).select_from(Case))
    return [_case_record(row) for row in rows], int(total or 0)


def _storable_id(case_id: str) -> bool:
    """False for an id PostgreSQL cannot hold (a NUL character, which its driver refuses to send):
    no stored case has such an id, on any backend, so asking for one is answered without a query."""
    return "\x00" not in case_id


def record_snapshot(session: Session, *, version: str, model_fingerprint: str, dimension: int, count: int,
                    factory: str, created_at: datetime) -> None:
    """Register an index snapshot (again: its description is refreshed, registered_at kept)."""
    row = session.get(IndexSnapshot, version)
    if row is None:
        row = IndexSnapshot(version=version)
        session.add(row)
    row.model_fingerprint, row.dimension, row.count = model_fingerprint, dimension, count
    row.factory, row.created_at = factory, created_at
    session.flush()


def record_activation(session: Session, version: str, actor: str, outcome: str, detail: str | None = None, *,
                      requested_at: datetime | None = None) -> ActivationRecord:
    """Record who asked to activate (or roll back to) `version`, when, and the outcome
    ("activated", "rolled_back" or "refused"); finished now, requested at `requested_at` (default now)."""
    if outcome not in ACTIVATION_OUTCOMES:
        raise InvalidRecordError(f"activation outcome {outcome!r} is not one of {list(ACTIVATION_OUTCOMES)}")
    if requested_at is not None:
        _require_utc_aware("requested_at", requested_at)
    finished_at = utc_now()
    row = IndexActivation(version=version, actor=actor, requested_at=requested_at or finished_at,
                          finished_at=finished_at, outcome=outcome, detail=detail)
    session.add(row)
    session.flush()
    return _activation_record(row)


def get_active_choice(session: Session) -> ActiveChoice | None:
    """The recorded active snapshot and rollback target, or None before the first activation."""
    row = session.get(ActiveSnapshot, 1)
    return None if row is None else ActiveChoice(row.version, row.previous_version)


def set_active_choice(session: Session, choice: ActiveChoice) -> None:
    """Record which snapshot is active and which one a rollback returns to."""
    row = session.get(ActiveSnapshot, 1)
    if row is None:
        row = ActiveSnapshot(id=1)
        session.add(row)
    row.version, row.previous_version, row.updated_at = choice.version, choice.previous_version, utc_now()
    session.flush()


def list_activations(session: Session, limit: int = 100) -> list[ActivationRecord]:
    """The latest `limit` activation requests, newest first."""
    rows = session.scalars(select(IndexActivation)
                           .order_by(IndexActivation.requested_at.desc(), IndexActivation.id.desc()).limit(limit))
    return [_activation_record(row) for row in rows]


def record_search(session: Session, audit: SearchAuditRecord) -> None:
    """Append one search to the audit log."""
    session.add(SearchAudit(**vars(audit)))
    session.flush()


def list_recent_searches(session: Session, limit: int = 50) -> list[SearchAuditRecord]:
    """The latest `limit` audited searches, newest first."""
    rows = session.scalars(select(SearchAudit)
                           .order_by(SearchAudit.created_at.desc(), SearchAudit.query_id).limit(limit))
    return [SearchAuditRecord(query_id=row.query_id, created_at=row.created_at, k=row.k,
                              index_version=row.index_version, model_fingerprint=row.model_fingerprint,
                              latency_ms=row.latency_ms, result_case_ids=list(row.result_case_ids),
                              status_code=row.status_code) for row in rows]


def _cases_by_id(session: Session, case_ids: list[str]) -> list[Case]:
    rows: list[Case] = []
    for start in range(0, len(case_ids), CHUNK_SIZE):
        chunk = case_ids[start:start + CHUNK_SIZE]
        rows.extend(session.scalars(select(Case).where(Case.case_id.in_(chunk))))
    return rows


def _case_columns(case: CaseRecord) -> dict[str, Any]:
    return {"patient_hash": case.patient_hash, "study_uid": case.study_uid, "series_uid": case.series_uid,
            "sop_uid": case.sop_uid, "findings": list(case.findings),
            "region_boxes": [[float(value) for value in box] for box in case.region_boxes],
            "image_path": case.image_path, "width": int(case.width), "height": int(case.height),
            "case_metadata": dict(case.metadata)}


def _case_record(row: Case) -> CaseRecord:
    return CaseRecord(case_id=row.case_id, patient_hash=row.patient_hash, study_uid=row.study_uid,
                      series_uid=row.series_uid, sop_uid=row.sop_uid, findings=list(row.findings),
                      region_boxes=[list(box) for box in row.region_boxes], image_path=row.image_path,
                      width=row.width, height=row.height, metadata=dict(row.case_metadata))


def _activation_record(row: IndexActivation) -> ActivationRecord:
    return ActivationRecord(id=row.id, version=row.version, actor=row.actor, requested_at=row.requested_at,
                            finished_at=row.finished_at, outcome=row.outcome, detail=row.detail)


def _case_problems(case: CaseRecord) -> Iterable[str]:
    """What makes `case` unfit to store (patient identifiers included), first problem first."""
    if not case.case_id:
        yield "the case id is empty"
    if case.patient_hash is not None and not _HEX_SHA256.fullmatch(case.patient_hash):
        yield "patient_hash must be a hex HMAC-SHA256 (patient_keys.patient_hash), never a raw patient id"
    if not all(isinstance(finding, str) for finding in case.findings):
        yield "findings must be a list of strings"
    if (len(case.region_boxes) != NUM_REGIONS or any(len(box) != 4 for box in case.region_boxes)
            or not all(_finite_number(value) for box in case.region_boxes for value in box)):
        yield f"region_boxes must be {NUM_REGIONS} boxes of 4 finite numbers in catalogue order"
    path = PurePosixPath(case.image_path)
    if not case.image_path or path.is_absolute() or ".." in path.parts:
        yield f"image_path {case.image_path!r} must be relative to the image root, without '..'"
    if case.width <= 0 or case.height <= 0:
        yield f"the image size {case.width}x{case.height} is not positive"
    identifying = sorted(key for key in case.metadata if re.sub(r"[\s_-]", "", key.lower()) in IDENTIFYING_KEYS)
    if identifying:
        yield f"metadata keys {identifying} would identify the patient"
    try:
        json.dumps(case.metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        yield f"metadata is not plain JSON ({error})"


def _finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _require_utc_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise InvalidRecordError(f"{name} must be a timezone-aware timestamp")
