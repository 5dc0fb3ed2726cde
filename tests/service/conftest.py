"""Fixtures of the service tests: an empty database on each backend (SQLite, PostgreSQL when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.databases import BACKENDS, scratch_database
from tests.service.demo_setup import demo_dir  # noqa: F401 - the built demo, a session fixture


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, unmigrated database: a SQLite file, then a fresh PostgreSQL schema."""
    with scratch_database(request.param, tmp_path) as url:
        yield url
