"""Engines and transactional sessions for SQLite (the default, under ./var/) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from model.errors import ChextrievError


class DatabaseUrlError(ChextrievError, ValueError):
    """The database URL cannot be parsed or names a backend that is not installed."""


def make_engine(url: str) -> Engine:
    """An engine for `url`: SQLite file databases get their directory, foreign keys and WAL;
    other backends a pool that checks connections before use."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as error:
        raise DatabaseUrlError(f"unusable database URL: {error}") from error
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    event.listen(engine, "connect", _sqlite_pragmas(wal=not in_memory))
    return engine


def _sqlite_pragmas(*, wal: bool) -> Callable[[Any, Any], None]:
    """A connect hook turning on foreign keys (and WAL for files) on each new SQLite connection."""
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()
    return on_connect


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine` whose loaded values stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back if it raises."""
    with factory() as session, session.begin():
        yield session
