"""The docker/ entrypoints, run for real outside a container: against SQLite and PostgreSQL databases,
with secrets in files, the trainer on bundled radiographs, and the api entrypoint serving on a free
port until its trainer-made snapshot is activated through the admin endpoint.

In the image the scripts live in /opt/chextriev/docker and /opt/venv/bin is first on the PATH; here
this test environment's bin directory is (its `python` and `chextriev`)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from index_store.gallery import read_gallery_npz
from index_store.store import list_snapshots, publish_gallery
from model.checkpoint import read_checkpoint_info
from service.db.migrate import current_revision, head_revision, upgrade
from tests.service.conftest import database_url  # noqa: F401 - a fixture: SQLite, then PostgreSQL
from tests.service.test_server_e2e import Server, free_port, wait_until_ready
from trainer.demo.samples import SAMPLE_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
ENVIRONMENT_BIN = Path(sys.executable).parent
ADMIN_TOKEN = "deployment-test-admin-token"
PATIENT_SALT = "deployment-test-patient-salt"
RUN = "first"
TRAINING_IMAGES = 6  # four patients: two for training, two for validation
# A tiny network for one epoch: the test is about what the pipeline publishes, not about accuracy.
TRAIN_OPTIONS = ("--width 32 --num-heads 2 --head-dim 16 --ff-dim 64 --epochs 1 --batch-size 4 "
                 "--accumulate 1 --devices 1")
FEATURES_OPTIONS = ("--backbone", "efficientnet_lite0", "--workers", "0", "--column", "patient_id=patientid",
                    "--label-column", "finding", "--split-fractions", "0.5,0.5,0")
SCRIPT_TIMEOUT_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 60


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without CHEXTRIEV_* settings, this environment's bin first on the
    PATH (as /opt/venv/bin in the image), plus `variables`."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("CHEXTRIEV_")}
    inherited["PATH"] = f"{ENVIRONMENT_BIN}{os.pathsep}{inherited.get('PATH', '')}"
    return {**inherited, **variables}


def run_script(name: str, *arguments: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER_DIR / name, *arguments], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_SECONDS)


def secret_file(directory: Path, name: str, value: str) -> str:
    """A secret written as compose mounts it (a file under /run/secrets); its path."""
    path = directory / "run-secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(value + "\n")
    return str(path)


# ---- database wait, revision check, migrations, secrets ------------------------------------------

def test_api_entrypoint_refuses_a_database_behind_the_migrations(database_url: str, tmp_path: Path):
    started = tmp_path / "started"
    env = environment(CHEXTRIEV_DATABASE_URL_FILE=secret_file(tmp_path, "database_url", database_url))
    result = run_script("entrypoint-api.sh", "touch", str(started), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"at revision base (empty), the service needs {head_revision()}" in result.stderr
    assert "chextriev db upgrade" in result.stderr
    assert not started.exists() and current_revision(database_url) is None


def test_migrate_entrypoint_upgrades_and_then_the_api_entrypoint_runs_its_command(database_url: str,
                                                                                   tmp_path: Path):
    env = environment(CHEXTRIEV_DATABASE_URL_FILE=secret_file(tmp_path, "database_url", database_url),
                      CHEXTRIEV_ADMIN_TOKEN_FILE=secret_file(tmp_path, "admin_token", ADMIN_TOKEN))
    migrated = run_script("entrypoint-migrate.sh", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert f"revision: {head_revision()}" in migrated.stdout
    assert current_revision(database_url) == head_revision()

    started = run_script("entrypoint-api.sh", "printenv", "CHEXTRIEV_ADMIN_TOKEN", "CHEXTRIEV_DATABASE_URL",
                         env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [ADMIN_TOKEN, database_url]
    unset = run_script("entrypoint-api.sh", "printenv", "CHEXTRIEV_ADMIN_TOKEN_FILE", env=env, cwd=tmp_path)
    assert unset.returncode == 1 and unset.stdout == ""  # the file's path is not passed on


def test_api_entrypoint_gives_up_on_a_database_that_never_answers(tmp_path: Path):
    password = "never-logged-password"
    url = f"postgresql+psycopg2://chextriev:{password}@127.0.0.1:{free_port()}/chextriev"
    env = environment(CHEXTRIEV_DATABASE_URL=url, CHEXTRIEV_DATABASE_WAIT_SECONDS="2")
    started = time.monotonic()
    result = run_script("entrypoint-api.sh", "touch", str(tmp_path / "started"), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "the database did not answer after" in result.stderr and "Connection refused" in result.stderr
    assert result.stderr.count("waiting for the database") >= 1
    assert password not in result.stderr + result.stdout
    assert time.monotonic() - started < 30 and not (tmp_path / "started").exists()


@pytest.mark.parametrize("setup, problem", [
    ("both", "both CHEXTRIEV_ADMIN_TOKEN and CHEXTRIEV_ADMIN_TOKEN_FILE are set"),
    ("missing", "CHEXTRIEV_ADMIN_TOKEN_FILE: cannot read the file"),
    ("empty", "CHEXTRIEV_ADMIN_TOKEN_FILE: the file {path} is empty"),
])
def test_a_secret_given_twice_unreadable_or_empty_stops_the_entrypoint(setup: str, problem: str, tmp_path: Path):
    variables = {"both": {"CHEXTRIEV_ADMIN_TOKEN": ADMIN_TOKEN,
                          "CHEXTRIEV_ADMIN_TOKEN_FILE": secret_file(tmp_path, "admin_token", ADMIN_TOKEN)},
                 "missing": {"CHEXTRIEV_ADMIN_TOKEN_FILE": str(tmp_path / "absent")},
                 "empty": {"CHEXTRIEV_ADMIN_TOKEN_FILE": secret_file(tmp_path, "admin_token", "")}}[setup]
    result = run_script("entrypoint-api.sh", "touch", str(tmp_path / "started"), env=environment(**variables),
                        cwd=tmp_path)
    assert result.returncode == 1
    assert problem.format(path=variables["CHEXTRIEV_ADMIN_TOKEN_FILE"]) in result.stderr
    assert not (tmp_path / "started").exists()


def test_health_check_fails_while_nothing_answers(tmp_path: Path):
    port = str(free_port())
    env = environment(CHEXTRIEV_HOST="0.0.0.0", CHEXTRIEV_PORT=port)
    result = subprocess.run([sys.executable, DOCKER_DIR / "healthcheck.py"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and f"not answering: http://127.0.0.1:{port}/readyz" in result.stdout


# ---- the trainer, and the api activating what it published -----------------------------------------

@dataclass(frozen=True)
class TrainerRun:
    """Where a trainer run left its work and what it published."""

    result: subprocess.CompletedProcess
    runs: Path
    checkpoints: Path
    store: Path

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / RUN


def sample_manifest(path: Path) -> Path:
    """The first bundled radiographs' manifest rows, image paths made absolute."""
    with open(SAMPLE_DIR / "manifest.csv", newline="") as source:
        rows = list(csv.DictReader(source))[:TRAINING_IMAGES]
    with open(path, "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "image": str(SAMPLE_DIR / row["image"])} for row in rows)
    return path


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    """`entrypoint-trainer.sh train-index` on six bundled radiographs, once for this module."""
    root = tmp_path_factory.mktemp("trainer")
    runs, checkpoints, store = root / "runs", root / "data" / "checkpoints", root / "data" / "index"
    env = environment(CHEXTRIEV_RUN=RUN, CHEXTRIEV_TRAIN_OPTIONS=TRAIN_OPTIONS, CHEXTRIEV_RUNS_DIR=str(runs),
                      CHEXTRIEV_CHECKPOINTS_DIR=str(checkpoints), CHEXTRIEV_INDEX_STORE=str(store),
                      CHEXTRIEV_PATIENT_SALT_FILE=secret_file(root, "patient_salt", PATIENT_SALT),
                      OMP_NUM_THREADS="2")
    result = run_script("entrypoint-trainer.sh", "train-index", *FEATURES_OPTIONS,
                        "--manifest", str(sample_manifest(root / "manifest.csv")), env=env, cwd=root)
    return TrainerRun(result, runs, checkpoints, store)


def test_trainer_publishes_a_checkpoint_and_a_snapshot_built_with_it(trainer_run: TrainerRun):
    assert trainer_run.result.returncode == 0, trainer_run.result.stderr
    assert sorted(path.name for path in trainer_run.checkpoints.iterdir()) == [RUN]  # no partial copy left
    trained = trainer_run.runs / RUN / "training" / "checkpoint"
    published = {path.name: path.read_bytes() for path in trainer_run.checkpoint.iterdir()}
    assert published == {path.name: path.read_bytes() for path in trained.iterdir()}

    (snapshot,) = list_snapshots(trainer_run.store)
    manifest = snapshot.manifest
    assert (snapshot.version, manifest.count) == (RUN, TRAINING_IMAGES)
    assert manifest.model_fingerprint == read_checkpoint_info(trainer_run.checkpoint).fingerprint
    gallery, _ = read_gallery_npz(trainer_run.runs / RUN / "gallery.npz")
    assert gallery.group_keys is not None  # the patient salt reached `chextriev embed` from its file


@pytest.mark.parametrize("arguments, run_name, problem", [
    ((), RUN, "usage: entrypoint-trainer train-index|index"),
    (("index", "--manifest", "unused.csv"), "../escape", "CHEXTRIEV_RUN=../escape: use letters"),
], ids=["no role", "run name with a path"])
def test_trainer_refuses_a_missing_role_or_a_bad_run_name(arguments: tuple[str, ...], run_name: str, problem: str,
                                                          tmp_path: Path):
    result = run_script("entrypoint-trainer.sh", *arguments, env=environment(CHEXTRIEV_RUN=run_name), cwd=tmp_path)
    assert result.returncode != 0 and problem in result.stderr
    assert list(tmp_path.iterdir()) == []


@dataclass(frozen=True)
class ServedApi:
    """The api entrypoint's server and the environment it was started with."""

    server: Server
    environment: dict[str, str]


@pytest.fixture
def served(trainer_run: TrainerRun, tmp_path: Path) -> Iterator[ServedApi]:
    """entrypoint-api.sh running `chextriev serve` on the trainer's checkpoint, starting on an older
    snapshot of the same model ("previous") so that the trainer's is left to activate."""
    assert trainer_run.result.returncode == 0, trainer_run.result.stderr
    store = shutil.copytree(trainer_run.store, tmp_path / "index")
    gallery, fingerprint = read_gallery_npz(trainer_run.runs / RUN / "gallery.npz")
    publish_gallery(store, gallery, model_fingerprint=fingerprint, version="previous")
    database_url = f"sqlite:///{tmp_path / 'chextriev.db'}"
    upgrade(database_url)
    port = free_port()
    env = environment(CHEXTRIEV_DATABASE_URL_FILE=secret_file(tmp_path, "database_url", database_url),
                      CHEXTRIEV_ADMIN_TOKEN_FILE=secret_file(tmp_path, "admin_token", ADMIN_TOKEN),
                      CHEXTRIEV_PATIENT_SALT_FILE=secret_file(tmp_path, "patient_salt", PATIENT_SALT),
                      CHEXTRIEV_CHECKPOINT=str(trainer_run.checkpoint), CHEXTRIEV_INDEX_STORE=str(store),
                      CHEXTRIEV_IMAGE_ROOT=str(SAMPLE_DIR), CHEXTRIEV_ACTIVE_VERSION="previous",
                      CHEXTRIEV_HOST="127.0.0.1", CHEXTRIEV_PORT=str(port))
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([DOCKER_DIR / "entrypoint-api.sh"], env=env, cwd=tmp_path, stdout=log,
                                   stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        yield ServedApi(server, env)
    finally:
        server.stop()


def health_check(api: ServedApi) -> subprocess.CompletedProcess:
    """docker/healthcheck.py, as Docker runs it in the api container."""
    return subprocess.run([sys.executable, DOCKER_DIR / "healthcheck.py"], env=api.environment,
                          capture_output=True, text=True, timeout=60)


def test_api_serves_and_activates_the_trainer_snapshot_through_the_admin_endpoint(served: ServedApi):
    server = served.server
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        assert wait_until_ready(server, client)["index_version"] == "previous"
        healthy = health_check(served)
        assert healthy.returncode == 0 and '"index_version":"previous"' in healthy.stdout

        activate = {"json": {"version": RUN}}
        refused = client.post("/admin/index/activate", headers={"Authorization": "Bearer wrong"}, **activate)
        assert refused.status_code == 401
        activated = client.post("/admin/index/activate", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                **activate)
        assert activated.status_code == 200, activated.text
        assert client.get("/readyz").json()["index_version"] == RUN

    # The entrypoint replaced itself with the server, so the stop signal reaches uvicorn directly.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in [line["message"] for line in server.log_lines()]
    assert health_check(served).returncode == 1
