"""Alembic migrations on SQLite and PostgreSQL: from empty to head, down and up again, equal to the models,
and through `chextriev db`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from service.cli import main
from service.db.migrate import current_revision, downgrade, head_revision, upgrade
from service.db.models import Base
from service.db.session import make_engine
from service.settings import get_settings

TABLES = {"cases", "index_snapshots", "index_activations", "active_snapshot", "search_audit"}


def schema_differences(url: str) -> list:
    """What autogenerate would change to make the database at `url` match the models."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def count_cases(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM cases")).scalar_one()
    finally:
        engine.dispose()


def test_upgrade_from_empty_gives_exactly_the_models_schema(database_url):
    assert current_revision(database_url) is None
    assert upgrade(database_url) == head_revision() == "0002"
    assert table_names(database_url) == TABLES | {"alembic_version"}
    assert schema_differences(database_url) == []


def test_the_comparison_sees_a_schema_that_differs_from_the_models(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_search_audit_created_at"))
    engine.dispose()
    assert [difference[0] for difference in schema_differences(database_url)] == ["add_index"]


def test_downgrade_to_base_then_upgrade_again(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO search_audit (query_id, created_at, k, latency_ms, result_case_ids, status_code) "
            "VALUES ('q1', CURRENT_TIMESTAMP, 5, 12.5, '[]', 200)"))
    engine.dispose()
    assert downgrade(database_url, "base") is None
    assert table_names(database_url) == {"alembic_version"}
    assert upgrade(database_url) == "0002"
    assert schema_differences(database_url) == []
    assert count_cases(database_url) == 0


def test_db_commands_through_the_cli(database_url, capsys):
    assert main(["db", "current", "--url", database_url]) == 0
    assert "revision: base (empty); newest: 0002" in capsys.readouterr().out
    assert main(["db", "upgrade", "--url", database_url]) == 0
    assert "revision: 0002; newest: 0002" in capsys.readouterr().out
    assert schema_differences(database_url) == []
    assert main(["db", "downgrade", "--revision", "base", "--url", database_url]) == 0
    assert "revision: base (empty)" in capsys.readouterr().out
    assert table_names(database_url) == {"alembic_version"}


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory outside the repository, with the default settings (no CHEXTRIEV_DATABASE_URL)."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.delenv("CHEXTRIEV_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield directory
    get_settings.cache_clear()


def test_db_upgrade_defaults_to_sqlite_under_var_from_any_directory(elsewhere, capsys):
    assert main(["db", "upgrade"]) == 0
    assert "revision: 0002" in capsys.readouterr().out
    database = elsewhere / "var" / "chextriev.db"
    assert database.is_file()
    assert schema_differences(f"sqlite:///{database}") == []


def test_db_upgrade_reads_the_url_from_the_environment(elsewhere, monkeypatch, capsys):
    database = elsewhere / "configured" / "service.db"
    monkeypatch.setenv("CHEXTRIEV_DATABASE_URL", f"sqlite:///{database}")
    get_settings.cache_clear()
    assert main(["db", "upgrade"]) == 0
    assert current_revision(f"sqlite:///{database}") == "0002"
    assert not (elsewhere / "var").exists()


@pytest.mark.parametrize("arguments, message", [
    (["db", "upgrade", "--revision", "9999"], "Can't locate revision identified by '9999'"),
    (["db", "downgrade", "--revision", "0002"], "not a valid downgrade target"),
])
def test_db_commands_report_an_impossible_revision(database_url, arguments, message, capsys):
    assert main([*arguments, "--url", database_url]) == 1
    assert message in capsys.readouterr().err
    assert current_revision(database_url) is None


@pytest.mark.parametrize("url, message", [
    ("not a url", "unusable database URL"),
    ("postgresql+psycopg2://postgres@127.0.0.1:1/absent", "Connection refused"),
])
def test_db_upgrade_reports_an_unusable_database(url, message, capsys):
    assert main(["db", "upgrade", "--url", url]) == 1
    assert message in capsys.readouterr().err
