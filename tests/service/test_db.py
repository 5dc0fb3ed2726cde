"""The service database on SQLite and PostgreSQL: cases from the bundled radiographs, snapshots,
activations and the search audit, written and read back through the repository."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, text

from model.catalogue import REGION_NAMES
from model.patient_keys import PatientKeyError, patient_group, patient_group_keys
from model.region_derivation import derive_regions
from service.db.migrate import upgrade
from service.db.models import IndexSnapshot
from service.db.repository import (
    ActiveChoice,
    CaseRecord,
    InvalidRecordError,
    SearchAuditRecord,
    UpsertCounts,
    get_active_choice,
    get_case,
    get_cases,
    list_activations,
    list_recent_searches,
    patient_hash,
    record_activation,
    record_search,
    record_snapshot,
    set_active_choice,
    upsert_cases,
)
from service.db.session import make_engine, make_session_factory, session_scope
from trainer.demo.samples import SAMPLE_DIR, SampleCase

SALT = "a-long-random-test-salt"


def case_record(sample: SampleCase) -> CaseRecord:
    """What the demo stores for a bundled radiograph: derived regions, hashed patient, relative path."""
    with Image.open(sample.image_path) as image:
        width, height = image.size
    regions = derive_regions(sample.right_lung, sample.left_lung, width, height)
    return CaseRecord(
        case_id=sample.case_id, patient_hash=patient_hash(sample.patient_id, SALT), study_uid=None,
        series_uid=None, sop_uid=None, findings=[sample.finding],
        region_boxes=[list(regions[name]) for name in REGION_NAMES],
        image_path=sample.image_path.relative_to(SAMPLE_DIR).as_posix(), width=width, height=height,
        metadata={key: sample.metadata[key] for key in ("view", "license", "source")})


@pytest.fixture
def sessions(database_url):
    """A session factory on a freshly migrated database."""
    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def cases(sample_cases) -> list[CaseRecord]:
    return [case_record(sample) for sample in sample_cases[:6]]


def test_upserting_cases_twice_updates_them(sessions, cases):
    with session_scope(sessions) as session:
        assert upsert_cases(session, cases[:4]) == UpsertCounts(inserted=4, updated=0)
    corrected = dataclasses.replace(cases[1], findings=["pneumonia", "effusion"], sop_uid="1.2.826.0.1.3680043.2.1")
    with session_scope(sessions) as session:
        assert upsert_cases(session, [corrected, *cases[4:]]) == UpsertCounts(inserted=2, updated=1)
    with session_scope(sessions) as session:
        stored = get_cases(session, [case.case_id for case in cases] + ["unknown"])
        assert stored == {case.case_id: case for case in [cases[0], corrected, *cases[2:]]}
        assert get_case(session, cases[0].case_id) == cases[0]
        assert get_case(session, "unknown") is None
        # PostgreSQL cannot hold a NUL character: such an id is simply unknown, on every backend.
        assert get_case(session, "\x00") is None and get_case(session, cases[0].case_id + "\x00") is None
        assert get_cases(session, [cases[0].case_id, "\x00"]) == {cases[0].case_id: cases[0]}


def test_the_stored_patient_hash_is_the_index_group_key_and_hides_the_patient(sessions, cases, sample_cases):
    sample = sample_cases[0]
    with session_scope(sessions) as session:
        upsert_cases(session, cases[:1])
        stored = get_case(session, sample.case_id).patient_hash
        raw_columns = session.execute(text("SELECT * FROM cases")).one()
    assert stored == patient_group_keys([patient_group(sample.patient_id, sample.case_id)], SALT)[0]
    assert stored != patient_hash(sample.patient_id, SALT + "-other")
    assert sample.patient_id not in [str(value) for value in raw_columns]
    with pytest.raises(PatientKeyError, match="at least 16 characters") as error:
        patient_hash(sample.patient_id, "eleven-char")
    assert "11" not in str(error.value)  # the message may reach a client: it never tells the salt's length


@pytest.mark.parametrize("change, problem", [
    ({"patient_hash": "patient-5"}, "never a raw patient id"),
    ({"region_boxes": [[0, 0, 10, 10]] * 17}, "must be 18 boxes"),
    ({"region_boxes": [[0, 0, 10, float("nan")]] * 18}, "4 finite numbers"),
    ({"image_path": "/srv/images/0007.jpg"}, "must be relative"),
    ({"image_path": "../0007.jpg"}, "must be relative"),
    ({"metadata": {"PatientName": "Doe^Jane"}}, "would identify the patient"),
    ({"metadata": {"scanned": datetime(2024, 1, 1)}}, "not plain JSON"),
    ({"width": 0}, "is not positive"),
])
def test_unstorable_cases_are_refused_with_the_reason(cases, change, problem):
    with pytest.raises(InvalidRecordError, match=problem):
        dataclasses.replace(cases[0], **change)


def test_a_failed_transaction_stores_nothing(sessions, cases):
    with pytest.raises(InvalidRecordError, match="given more than once"), session_scope(sessions) as session:
        upsert_cases(session, cases[:2] + cases[:1])
    with pytest.raises(RuntimeError), session_scope(sessions) as session:
        upsert_cases(session, cases[:2])
        raise RuntimeError("the caller failed after writing")
    with session_scope(sessions) as session:
        assert get_cases(session, [case.case_id for case in cases]) == {}


def test_activations_are_listed_newest_first_with_who_when_and_outcome(sessions):
    start = datetime.now(UTC)
    requests = [("v1", "cli:root", "activated", None), ("v2", "admin-token", "refused", "checksum mismatch"),
                ("v2", "admin-token", "activated", None), ("v1", "admin-token", "rolled_back", None)]
    for version, actor, outcome, detail in requests:
        with session_scope(sessions) as session:
            record_activation(session, version, actor, outcome, detail, requested_at=start)
    with pytest.raises(InvalidRecordError, match="'deleted' is not one of"), session_scope(sessions) as session:
        record_activation(session, "v1", "admin-token", "deleted")
    with session_scope(sessions) as session:
        listed = list_activations(session)
    assert [(a.version, a.actor, a.outcome, a.detail) for a in listed] == requests[::-1]
    for activation in listed:
        assert activation.requested_at == start
        assert start <= activation.finished_at <= datetime.now(UTC)
        assert activation.finished_at.tzinfo == UTC


def test_search_audit_rows_are_written_and_read_back_newest_first(sessions):
    now = datetime.now(UTC)
    searches = [SearchAuditRecord(query_id=f"q{i}", created_at=now + timedelta(seconds=i), k=5,
                                  index_version="20260101T000000Z", model_fingerprint="sha256:abc",
                                  latency_ms=40.5 + i, result_case_ids=["cxrlb-0007", "cxrlb-0012"],
                                  status_code=200) for i in range(3)]
    failed = SearchAuditRecord(query_id="q3", created_at=now + timedelta(seconds=3), k=0, index_version=None,
                               model_fingerprint=None, latency_ms=1.0, result_case_ids=[], status_code=422)
    for audit in [*searches, failed]:
        with session_scope(sessions) as session:
            record_search(session, audit)
    with session_scope(sessions) as session:
        assert list_recent_searches(session) == [failed, *searches[::-1]]
        assert list_recent_searches(session, limit=2) == [failed, searches[2]]
    with pytest.raises(InvalidRecordError, match="timezone-aware"):
        dataclasses.replace(failed, created_at=datetime(2026, 1, 1))


def test_registering_a_snapshot_again_refreshes_its_description(sessions):
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    description = {"version": "v1", "model_fingerprint": "sha256:abc", "dimension": 512, "count": 48,
                   "created_at": created}
    with session_scope(sessions) as session:
        record_snapshot(session, factory="Flat", **description)
    with session_scope(sessions) as session:
        record_snapshot(session, factory="HNSW32", **description)
    with session_scope(sessions) as session:
        rows = session.scalars(select(IndexSnapshot)).all()
        assert [(row.version, row.factory, row.count, row.created_at) for row in rows] == [
            ("v1", "HNSW32", 48, created)]


def test_a_factory_string_of_any_length_is_registered(sessions):
    factory = ",".join(["PCAR64"] * 80) + ",Flat"  # FAISS chains as long as a configuration makes them
    with session_scope(sessions) as session:
        record_snapshot(session, version="long", model_fingerprint="sha256:abc", dimension=64, count=1,
                        factory=factory, created_at=datetime(2026, 1, 2, tzinfo=UTC))
    with session_scope(sessions) as session:
        assert session.get(IndexSnapshot, "long").factory == factory


def test_the_active_choice_is_kept_in_one_row(sessions):
    with session_scope(sessions) as session:
        assert get_active_choice(session) is None
        set_active_choice(session, ActiveChoice("v1", None))
        set_active_choice(session, ActiveChoice("v2", "v1"))
    with session_scope(sessions) as session:
        assert get_active_choice(session) == ActiveChoice("v2", "v1")
        assert session.execute(text("SELECT count(*) FROM active_snapshot")).scalar_one() == 1


def test_sqlite_files_get_their_directory_foreign_keys_and_wal(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'dir' / 'service.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine.dispose()
    assert (tmp_path / "new" / "dir" / "service.db").is_file()
