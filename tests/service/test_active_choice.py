"""Which snapshot is active survives restarts, failed recordings and a kill -9 mid-activation: the
database and the live index agree, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from index_store.store import list_snapshots, open_version
from service.app import create_app
from service.db.repository import list_activations
from service.db.session import session_scope
from service.settings import Settings
from service.snapshot_records import recorded_choice
from service.state import ServiceState
from tests.service.databases import BACKENDS
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    OCCLUDED_VERSION,
    PLAIN_VERSION,
    ServiceSetup,
    service_database,
    service_setup,
)
from tests.service.test_api import ADMIN, ADMIN_TOKEN, assert_problem, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_SECONDS = 120


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, service_setup: ServiceSetup, tmp_path: Path):
    """A fresh gallery database: SQLite, then PostgreSQL."""
    with service_database(service_setup, request.param, tmp_path) as url:
        yield url


def admin_settings(setup: ServiceSetup, database_url: str, **overrides) -> Settings:
    return setup.settings(database_url=database_url, admin_token=ADMIN_TOKEN, **overrides)


def active_and_previous(client: TestClient) -> tuple[str, str | None]:
    listing = client.get("/admin/index", headers=ADMIN).json()
    return listing["active"]["version"], listing["previous_version"]


def test_rollback_then_restart_then_rollback(service_setup, database_url):
    with TestClient(create_app(admin_settings(service_setup, database_url))) as first:
        wait_until_ready(first)
        assert first.post("/admin/index/activate", json={"version": OCCLUDED_VERSION}, headers=ADMIN).is_success
        assert first.post("/admin/index/rollback", headers=ADMIN).is_success
        assert active_and_previous(first) == (PLAIN_VERSION, OCCLUDED_VERSION)
    # The configured version names the other snapshot: the recorded choice wins over it.
    restarted = admin_settings(service_setup, database_url, active_version=OCCLUDED_VERSION)
    with TestClient(create_app(restarted)) as second:
        assert wait_until_ready(second)["index_version"] == PLAIN_VERSION
        assert active_and_previous(second) == (PLAIN_VERSION, OCCLUDED_VERSION)
        rolled_back = second.post("/admin/index/rollback", headers=ADMIN)
        assert rolled_back.json()["active"]["version"] == OCCLUDED_VERSION, rolled_back.text
        assert second.get("/readyz").json()["index_version"] == OCCLUDED_VERSION


def test_a_recorded_snapshot_that_cannot_serve_falls_back_to_the_previous_one(service_setup, database_url,
                                                                              tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for version in (PLAIN_VERSION, OCCLUDED_VERSION):
        os.symlink(service_setup.store / version, store / version)
    settings = admin_settings(service_setup, database_url, index_store=str(store))
    with TestClient(create_app(settings)) as first:
        wait_until_ready(first)
        assert first.post("/admin/index/activate", json={"version": OCCLUDED_VERSION}, headers=ADMIN).is_success
    (store / OCCLUDED_VERSION).unlink()  # the recorded snapshot is gone from the store
    with TestClient(create_app(settings)) as second:
        assert wait_until_ready(second)["index_version"] == PLAIN_VERSION
        with session_scope(second.app.state.service.sessions) as session:
            latest = list_activations(session, limit=2)
    assert [(a.version, a.actor, a.outcome) for a in latest] == [
        (PLAIN_VERSION, "startup", "activated"), (OCCLUDED_VERSION, "startup", "refused")]


def test_an_activation_whose_recording_fails_does_not_go_live(service_setup, database_url):
    with TestClient(create_app(admin_settings(service_setup, database_url))) as client:
        wait_until_ready(client)
        state = client.app.state.service
        with state.engine.begin() as connection:
            connection.execute(text("DROP TABLE active_snapshot"))  # the recording of any activation fails
        failed = client.post("/admin/index/activate", json={"version": OCCLUDED_VERSION}, headers=ADMIN)
        assert assert_problem(failed, 503)["type"].endswith("activation-not-recorded")
        assert client.get("/readyz").json()["index_version"] == PLAIN_VERSION
        assert state.index.previous_version is None
        with session_scope(state.sessions) as session:
            assert [(a.version, a.outcome) for a in list_activations(session)] == [(PLAIN_VERSION, "activated")]


@pytest.mark.parametrize("mode, survivor", [("before-commit", PLAIN_VERSION), ("after-commit", OCCLUDED_VERSION)])
def test_kill_9_during_an_activation_restarts_on_what_the_database_records(service_setup, database_url, mode,
                                                                           survivor):
    settings = service_setup.settings(database_url=database_url)
    environment = {**os.environ, **{f"CHEXTRIEV_{name.upper()}": str(value) for name, value in
                                    settings.model_dump(exclude_none=True).items()},
                   "CHEXTRIEV_PATIENT_SALT": settings.patient_salt.get_secret_value()}
    child = subprocess.Popen([sys.executable, "-m", "tests.service.activation_child", OCCLUDED_VERSION, mode],
                             cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == mode
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait(CHILD_TIMEOUT_SECONDS) == -signal.SIGKILL

    state = ServiceState(settings)
    try:
        state.load()
        assert state.ready, state.load_problem
        assert state.index.manifest.version == survivor == recorded_choice(state.sessions).version
    finally:
        state.close()
    for entry in list_snapshots(service_setup.store):  # the store holds only whole snapshots
        if entry.manifest is not None:
            open_version(service_setup.store, entry.version).close()
