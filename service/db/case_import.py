"""Cases written into a service database from a command line (`cases import`, `gallery import`)."""

from __future__ import annotations

from collections.abc import Sequence

from service.db.migrate import upgrade
from service.db.repository import CaseRecord, UpsertCounts, upsert_cases
from service.db.session import make_engine, make_session_factory, session_scope


def import_cases(database_url: str, cases: Sequence[CaseRecord]) -> UpsertCounts:
    """Migrate the database at `database_url` to the newest revision, then insert or update `cases` in
    one transaction."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return upsert_cases(session, cases)
    finally:
        engine.dispose()
