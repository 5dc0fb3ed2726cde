"""docker-compose.yml and its GPU override, read without a Docker engine: valid Compose files (the
Compose Specification's JSON schema), and the deployment they describe: start order with health
checks, the model volume shared by trainer and api, the GPU trainer, secrets only as files, the
.env example, and docker/init-secrets.sh writing the secrets compose mounts."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from sqlalchemy import make_url

from model.precision import DTYPES
from service.settings import Settings
from tests.deployment.dockerfile import read_dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_OVERRIDE = REPO_ROOT / "docker" / "compose.gpu.yml"
MILVUS_OVERRIDE = REPO_ROOT / "docker" / "compose.milvus.yml"
PACS_OVERRIDE = REPO_ROOT / "docker" / "compose.pacs.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
# The Compose Specification's schema, bundled (Apache-2.0, see NOTICE beside it).
SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
IMAGE_DOCKER_DIR = "/opt/chextriev/docker/"
SECRETS_MOUNT = "/run/secrets/"
SECRET_VARIABLES = ("CHEXTRIEV_DATABASE_URL", "CHEXTRIEV_ADMIN_TOKEN", "CHEXTRIEV_PATIENT_SALT",
                    "CHEXTRIEV_MILVUS_TOKEN", "POSTGRES_PASSWORD")
# Secrets only some deployments have: the token of a Milvus with authentication.
OPTIONAL_SECRET_FILES = {"CHEXTRIEV_MILVUS_TOKEN_FILE"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def schema_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)  # the schema's $schema: draft-07
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(document)]


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (source, "ro" or "rw") of the service's short-syntax volumes."""
    table = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        table[target] = (source, mode[0] if mode else "rw")
    return table


def gpu_reserved(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(device.get("driver") == "nvidia" and "gpu" in device["capabilities"] for device in devices)


def entrypoint_secret_variables() -> set[str]:
    """The settings the entrypoints read from NAME_FILE (SECRET_VARIABLES of docker/common.sh)."""
    listing = re.search(r"^SECRET_VARIABLES=\(([^)]*)\)", (REPO_ROOT / "docker" / "common.sh").read_text(), re.M)
    return set(listing.group(1).split())


@pytest.mark.parametrize("path", [COMPOSE_FILE, GPU_OVERRIDE, MILVUS_OVERRIDE, PACS_OVERRIDE],
                         ids=lambda path: path.name)
def test_compose_files_follow_the_compose_specification(path: Path):
    assert schema_errors(load(path)) == []


def test_the_schema_check_reports_a_broken_file():
    document = load(COMPOSE_FILE)
    document["services"]["api"]["depends_on"]["db"]["condition"] = "service_ready"
    document["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    errors = schema_errors(document)
    assert any(error.startswith("services/api/depends_on") for error in errors)
    assert any(error.startswith("services/trainer/deploy") for error in errors)


def test_the_api_starts_after_a_healthy_database_and_a_completed_migration():
    services = load(COMPOSE_FILE)["services"]
    api = services["api"]
    conditions = {name: dependency["condition"] for name, dependency in api["depends_on"].items()}
    assert conditions == {"db": "service_healthy", "migrate": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name, condition in conditions.items():
        if condition == "service_healthy":
            check = services[name]["healthcheck"]
            assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        else:
            assert services[name]["restart"] == "no", f"{name} is a one-shot job"
    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    assert not api.get("healthcheck", {}).get("disable")  # the image's HEALTHCHECK on /readyz applies
    assert "profiles" not in api and "profiles" not in services["db"] and "profiles" not in services["migrate"]


def test_every_entrypoint_named_is_an_executable_script_of_docker():
    services = load(COMPOSE_FILE)["services"]
    assert "entrypoint" not in services["api"]  # the image's: entrypoint-api.sh (test_dockerfile)
    for path in [service["entrypoint"][0] for service in services.values() if "entrypoint" in service]:
        script = REPO_ROOT / "docker" / path.removeprefix(IMAGE_DOCKER_DIR)
        assert path.startswith(IMAGE_DOCKER_DIR) and script.is_file() and script.stat().st_mode & stat.S_IXUSR


def test_the_trainer_publishes_into_the_volume_the_api_reads():
    document = load(COMPOSE_FILE)
    services = document["services"]
    api_data, trainer_data = mounts(services["api"])["/data"], mounts(services["trainer"])["/data"]
    assert api_data == ("models", "ro") and trainer_data == ("models", "rw")
    assert "models" in document["volumes"]
    image = read_dockerfile(REPO_ROOT / "Dockerfile").stages[-1].environment()
    for setting in ("CHEXTRIEV_INDEX_STORE", "CHEXTRIEV_CHECKPOINTS_DIR"):
        assert image[setting].startswith("/data/"), setting
    assert image["CHEXTRIEV_RUNS_DIR"] == "/runs" and mounts(services["trainer"])["/runs"][0] in document["volumes"]
    # The database's data lives in a named volume too.
    assert mounts(services["db"])["/var/lib/postgresql/data"][0] in document["volumes"]


def test_the_trainer_is_a_gpu_job_of_the_train_profile_on_the_cuda_image():
    trainer = load(COMPOSE_FILE)["services"]["trainer"]
    assert trainer["profiles"] == ["train"] and trainer["restart"] == "no"
    assert gpu_reserved(trainer)
    assert trainer["build"]["args"]["VARIANT"] == "cuda" and trainer["image"] == "chextriev:cuda"
    assert trainer["entrypoint"] == [f"{IMAGE_DOCKER_DIR}entrypoint-trainer.sh"]


def test_the_gpu_override_moves_the_api_onto_the_cuda_image_and_a_gpu():
    base, override = load(COMPOSE_FILE)["services"], load(GPU_OVERRIDE)["services"]
    assert set(override) <= set(base)
    api = override["api"]
    assert gpu_reserved(api) and api["image"] == base["trainer"]["image"]
    assert api["build"]["args"]["VARIANT"] == "cuda" and override["migrate"]["build"]["args"]["VARIANT"] == "cuda"
    assert api["environment"]["CHEXTRIEV_DEVICE"] == "cuda" and api["environment"]["CHEXTRIEV_DTYPE"] in DTYPES
    assert not gpu_reserved(base["api"]) and base["api"]["build"]["args"]["VARIANT"] == "cpu"


def test_the_milvus_profile_runs_milvus_standalone_after_a_healthy_etcd_and_minio():
    document = load(COMPOSE_FILE)
    services = document["services"]
    for name in ("etcd", "minio", "milvus"):
        service = services[name]
        assert service["profiles"] == ["milvus"] and "ports" not in service, name
        assert not service["healthcheck"].get("disable") and service["healthcheck"]["test"][0] == "CMD", name
        assert all(volume.split(":")[0] in document["volumes"] for volume in service["volumes"]), name
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert {name: dependency["condition"] for name, dependency in milvus["depends_on"].items()} == {
        "etcd": "service_healthy", "minio": "service_healthy"}
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"


def test_the_milvus_override_points_the_api_and_the_trainer_at_the_healthy_milvus():
    base, override = load(COMPOSE_FILE)["services"], load(MILVUS_OVERRIDE)["services"]
    assert set(override) == {"api", "trainer"}
    for name, service in override.items():
        environment = service["environment"]
        assert environment["CHEXTRIEV_INDEX_BACKEND"] == "milvus", name
        assert environment["CHEXTRIEV_MILVUS_URI"] == "http://milvus:19530" and "milvus" in base, name
        assert service["depends_on"]["milvus"]["condition"] == "service_healthy", name
        assert Settings(index_backend=environment["CHEXTRIEV_INDEX_BACKEND"],
                        milvus_uri=environment["CHEXTRIEV_MILVUS_URI"]).index_backend == "milvus"


def test_the_pacs_profile_runs_orthanc_with_dicomweb_on_the_loopback_and_the_override_points_the_api_at_it():
    document = load(COMPOSE_FILE)
    pacs = document["services"]["pacs"]
    assert pacs["profiles"] == ["pacs"] and pacs["ports"] == ["127.0.0.1:${PACS_PORT:-8042}:8042"]
    table = mounts(pacs)
    config_source, mode = table["/etc/orthanc/orthanc.json"]
    assert mode == "ro" and table["/var/lib/orthanc/db"][0] in document["volumes"]
    config = json.loads((REPO_ROOT / config_source).read_text())
    assert config["DicomWeb"] == {"Enable": True, "Root": "/dicom-web/"} and config["HttpPort"] == 8042
    assert config["StorageDirectory"] == "/var/lib/orthanc/db" and config["Plugins"]
    assert "pacs" not in document["services"]["api"].get("depends_on", {})  # the api starts without a PACS
    override = load(PACS_OVERRIDE)["services"]
    assert set(override) == {"api"}
    url = override["api"]["environment"]["CHEXTRIEV_DICOMWEB_URL"]
    assert url == "http://pacs:8042/dicom-web" and Settings(dicomweb_url=url).dicomweb_url == url


def test_secrets_reach_the_containers_only_as_files():
    document = load(COMPOSE_FILE)
    declared = document["secrets"]
    assert all(set(spec) == {"file"} for spec in declared.values())
    file_variables = entrypoint_secret_variables() | {"POSTGRES_PASSWORD"}
    for name, service in document["services"].items():
        environment = service.get("environment", {})
        for variable in SECRET_VARIABLES:
            assert variable not in environment, f"{name} sets the secret {variable} in the compose file"
        for variable, value in environment.items():
            if variable.endswith("_FILE"):
                secret = value.removeprefix(SECRETS_MOUNT)
                assert variable.removesuffix("_FILE") in file_variables, f"nothing reads {variable}"
                assert value.startswith(SECRETS_MOUNT) and secret in service["secrets"] and secret in declared
    api = document["services"]["api"]["environment"]
    assert {f"{variable}_FILE" for variable in entrypoint_secret_variables()} - OPTIONAL_SECRET_FILES <= set(api)


def test_env_example_documents_each_compose_variable_and_only_real_settings():
    assignments = re.findall(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    documented = {name for _, name, _ in assignments}
    compose_text = "".join(path.read_text() for path in (COMPOSE_FILE, GPU_OVERRIDE, MILVUS_OVERRIDE, PACS_OVERRIDE))
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    assert interpolated <= documented
    scripts = "".join(path.read_text() for path in (REPO_ROOT / "docker").glob("*.sh"))
    fields = Settings.model_fields
    for commented, name, value in assignments:
        assert not any(name == secret or name == f"{secret}_FILE" for secret in SECRET_VARIABLES), name
        field = name.removeprefix("CHEXTRIEV_").lower()
        if name.startswith("CHEXTRIEV_"):
            assert field in fields or name in scripts, f"{name} is neither a setting nor read by docker/"
        if commented and field in fields and value:
            assert value == str(fields[field].default), f"{name}: the default is {fields[field].default}"
    for compose_files in (value for _, name, value in assignments if name == "COMPOSE_FILE"):
        assert all((REPO_ROOT / path).is_file() for path in compose_files.split(":"))


def test_init_secrets_writes_each_compose_secret_once_and_consistently(tmp_path: Path):
    directory = tmp_path / "secrets"
    script = REPO_ROOT / "docker" / "init-secrets.sh"
    subprocess.run([script, directory], check=True, capture_output=True, timeout=30)
    document = load(COMPOSE_FILE)
    assert sorted(path.name for path in directory.iterdir()) == sorted(document["secrets"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in directory.iterdir())
    values = {path.name: path.read_text().strip() for path in directory.iterdir()}

    url = make_url(values["database_url"])
    db = document["services"]["db"]["environment"]
    assert url.get_backend_name() == "postgresql" and url.host == "db" and "db" in document["services"]
    assert (url.username, url.password) == (db["POSTGRES_USER"], values["db_password"])
    assert url.database == db["POSTGRES_DB"]
    tokens = [values["db_password"], values["admin_token"], values["patient_salt"]]
    assert len(set(tokens)) == 3 and all(re.fullmatch(r"[0-9a-f]{64}", token) for token in tokens)

    again = subprocess.run([script, directory], check=True, capture_output=True, text=True, timeout=30)
    assert {path.name: path.read_text().strip() for path in directory.iterdir()} == values
    assert again.stderr.count("kept") == len(values)
