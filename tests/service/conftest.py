"""Fixtures of the service tests: an empty database on each backend (SQLite, PostgreSQL when configured),
and where the DICOMweb tests run their Orthanc archives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.databases import BACKENDS, scratch_database
from tests.service.demo_setup import demo_dir  # noqa: F401 - the built demo, a session fixture
from tests.service.orthanc import orthanc_missing


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, unmigrated database: a SQLite file, then a fresh PostgreSQL schema."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def orthanc_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the session's Orthanc archives; skips the test when Orthanc cannot run here."""
    missing = orthanc_missing()
    if missing is not None:
        pytest.skip(missing)
    return tmp_path_factory.mktemp("orthanc")
