"""PostgreSQL stopped and started again under load: while it is down, searches and /readyz answer 503
problem+json with Retry-After (never a 500); once it is back, searches succeed again without
restarting the service. The database is a private PostgreSQL cluster in a temporary directory, so
that stopping it disturbs nothing else."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.service_setup import (  # noqa: F401 - service_setup is a fixture
    QUERY_CASE,
    fill_database,
    png_bytes,
    regions_json,
    service_setup,
)
from tests.service.test_api import assert_problem, search, wait_until_ready
from tests.service.test_server_e2e import free_port

POSTGRES_USER = "postgres"
COMMAND_TIMEOUT_SECONDS = 120
PHASE_TIMEOUT_SECONDS = 120
SEARCHING_THREADS = 3


@dataclass
class Cluster:
    """A PostgreSQL cluster of its own under `root`, on 127.0.0.1:`port` with trust authentication."""

    bin_dir: Path
    root: Path
    port: int
    as_postgres: bool  # run the programs as the postgres user (initdb refuses to run as root)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / program), *args]
        if self.as_postgres:
            command = (["runuser", "-u", POSTGRES_USER, "--", *command] if shutil.which("runuser")
                       else ["su", POSTGRES_USER, "-c", shlex.join(command)])
        return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("pg_ctl", "-D", str(self.root / "data"), *args)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        started = self.pg_ctl("start", "-w", "-l", str(self.root / "server.log"), "-o", options)
        assert started.returncode == 0, started.stdout + started.stderr

    def stop(self) -> None:
        """Stop at once, as a crash would: no checkpoint, every connection cut."""
        stopped = self.pg_ctl("stop", "-w", "-m", "immediate")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A new cluster, started; stopped and removed afterwards. Skips without the PostgreSQL programs,
    or as root without a postgres user to run them as."""
    bin_dir = max((path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                  key=lambda path: int(path.parent.name), default=None)
    if bin_dir is None:
        pytest.skip("the PostgreSQL server programs (initdb, pg_ctl) are not in /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="chextriev-postgres-"))
    server = Cluster(bin_dir, root, free_port(), as_postgres=os.geteuid() == 0)
    try:
        if server.as_postgres:
            try:
                owner = pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                pytest.skip("running as root, and there is no postgres user to run initdb as")
            os.chown(root, owner.pw_uid, owner.pw_gid)
        created = server.run("initdb", "-D", str(root / "data"), "-A", "trust", "-U", POSTGRES_USER)
        if created.returncode != 0:
            pytest.skip(f"initdb failed: {(created.stderr or created.stdout).strip()}")
        server.start()
        yield server
    finally:
        server.pg_ctl("stop", "-m", "immediate")  # whether or not it is running
        shutil.rmtree(root, ignore_errors=True)


class SearchLoad:
    """Threads searching without pause; every response is kept with the phase it was sent in."""

    def __init__(self, client: TestClient, image: bytes, regions: str):
        self.phase = "up"
        self.responses: list[tuple[str, httpx.Response]] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._search, args=(client, image, regions))
                         for _ in range(SEARCHING_THREADS)]

    def __enter__(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(COMMAND_TIMEOUT_SECONDS)

    def wait_for(self, phase: str, status: int) -> None:
        """Until a search sent in `phase` answered `status`; fails at once on any status but 200 and 503."""
        deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
        while (phase, status) not in (statuses := self.statuses()):
            assert {answered for _, answered in statuses} <= {200, 503}, statuses
            assert time.monotonic() < deadline, f"no {status} in phase {phase}: {statuses}"
            time.sleep(0.1)

    def statuses(self) -> set[tuple[str, int]]:
        return {(phase, response.status_code) for phase, response in list(self.responses)}

    def _search(self, client: TestClient, image: bytes, regions: str) -> None:
        while not self._stopping.is_set():
            phase = self.phase
            self.responses.append((phase, search(client, image, regions)))


def test_searches_answer_503_while_postgresql_is_down_and_succeed_again_once_it_is_back(cluster, service_setup):
    fill_database(cluster.url, service_setup.cases, service_setup.inputs)
    settings = service_setup.settings(database_url=cluster.url, max_concurrent_searches=SEARCHING_THREADS + 1)
    pixels, boxes = service_setup.inputs[QUERY_CASE]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        with SearchLoad(client, png_bytes(pixels), regions_json(boxes)) as load:
            load.wait_for("up", 200)
            cluster.stop()
            load.phase = "down"
            load.wait_for("down", 503)
            readiness = client.get("/readyz")
            assert assert_problem(readiness, 503)["type"].endswith("database-unavailable")
            assert int(readiness.headers["retry-after"]) > 0
            assert client.get("/healthz").status_code == 200
            cluster.start()
            load.phase = "back"
            load.wait_for("back", 200)
        assert wait_until_ready(client)["status"] == "ready"
    assert {status for _, status in load.statuses()} <= {200, 503}, load.statuses()
    for _, response in load.responses:
        if response.status_code == 503:
            assert assert_problem(response, 503)["type"].endswith("database-unavailable")
            assert int(response.headers["retry-after"]) > 0
