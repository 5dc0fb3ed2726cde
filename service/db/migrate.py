"""Apply the Alembic migrations of the installed `migrations` package to a database, from any working directory."""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.db.session import make_engine

logger = logging.getLogger(__name__)

# The package's own directory; importing `migrations` runs only its docstring, never env.py.
MIGRATIONS_DIR = Path(str(files("migrations")))


def alembic_config(url: str) -> Config:
    """The Alembic configuration of migrations/alembic.ini, aimed at the database `url`."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.attributes["database_url"] = url
    return config


def head_revision() -> str | None:
    """The newest revision in migrations/versions."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty (unmigrated) database."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at `url` up to `revision`; returns the revision it is now at."""
    command.upgrade(alembic_config(url), revision)
    return _log_revision("upgraded", url)


def downgrade(url: str, revision: str) -> str | None:
    """Migrate the database at `url` down to `revision` ("base" empties it); returns its revision now."""
    command.downgrade(alembic_config(url), revision)
    return _log_revision("downgraded", url)


def _log_revision(action: str, url: str) -> str | None:
    revision = current_revision(url)
    logger.info("database migrated", extra={"action": action, "revision": revision,
                                            "backend": url.split(":", 1)[0]})
    return revision
