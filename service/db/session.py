"""Engines and transactional sessions for SQLite (the default, under ./var/) and PostgreSQL, and the
database ping of the readiness check."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from model.errors import ChextrievError

logger = logging.getLogger(__name__)

# PostgreSQL connections give up after this many seconds (unless the URL sets connect_timeout): a
# server that does not answer fails a request, or the readiness ping, instead of holding its thread.
CONNECT_TIMEOUT_SECONDS = 5
# How long the readiness check waits for a ping before it calls the database unreachable.
PING_TIMEOUT_SECONDS = 2.0


class DatabaseUrlError(ChextrievError, ValueError):
    """The database URL cannot be parsed or names a backend that is not installed."""


def make_engine(url: str) -> Engine:
    """An engine for `url`: SQLite file databases get their directory, foreign keys and WAL;
    other backends a pool that checks connections before use (and PostgreSQL a connect timeout)."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend != "sqlite":
            timeout = backend == "postgresql" and "connect_timeout" not in parsed.query
            return create_engine(parsed, pool_pre_ping=True,
                                 connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS} if timeout else {})
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


def driver_message(error: SQLAlchemyError) -> str:
    """What the database driver said about `error`, without the statement and its parameters."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    return f"{type(cause).__name__}: {cause}".strip()


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back if it raises."""
    with factory() as session, session.begin():
        yield session


class DatabaseProbe:
    """Pings the database for the readiness check on a thread of its own, so that the answer never
    waits behind searches in the worker threads; callers share one ping while it is in progress."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="database-probe")
        self._ping: Future[bool] | None = None

    async def reachable(self) -> bool:
        """Whether the database answered a ping within PING_TIMEOUT_SECONDS."""
        if self._ping is None or self._ping.done():
            self._ping = self._executor.submit(self._answers)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._ping)), PING_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("database ping timed out", extra={"seconds": PING_TIMEOUT_SECONDS})
            return False

    def close(self) -> None:
        """Stop the ping thread once a ping in progress ends."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _answers(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as error:
            logger.warning("database ping failed", extra={"problem": driver_message(error)})
            return False
        return True
