"""Scratch databases for tests: a SQLite file, or a fresh PostgreSQL schema at
$CHEXTRIEV_TEST_POSTGRES_URL, reached through a URL whose search_path names that schema only."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

POSTGRES_URL_ENV = "CHEXTRIEV_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def scratch_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database on `backend`, removed afterwards; skips when PostgreSQL is not configured."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'test.db'}"
        return
    server_url = os.environ.get(POSTGRES_URL_ENV)
    if not server_url:
        pytest.skip(f"PostgreSQL tests need ${POSTGRES_URL_ENV} (e.g. "
                    "postgresql+psycopg2://postgres@127.0.0.1:5432/test); .ci/run sets it")
    schema = f"chextriev_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
