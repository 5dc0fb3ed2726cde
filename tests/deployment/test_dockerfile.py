"""The Dockerfile, read without a Docker engine: its variants, stages, user, health check, build
context and what it installs."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

from tests.deployment.dockerfile import read_dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = read_dockerfile(REPO_ROOT / "Dockerfile")
RUNTIME = DOCKERFILE.stages[-1]
IMAGE_DOCKER_DIR = "/opt/chextriev/docker/"
# Paths of a working copy that must never reach the image: environments, local data, secrets, tests.
PRIVATE_PATHS = (".venv/bin/python", "var/demo/chextriev.db", "var/index/v1/manifest.json", "secrets/admin_token",
                 ".env", "tests/conftest.py", ".git/config", "model/__pycache__/imaging.cpython-311.pyc")
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SALT|SECRET|DATABASE_URL", re.IGNORECASE)


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def in_build_context(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the build context: the last pattern matching the path
    or one of its parent directories decides, as in Docker."""
    parts = path.rstrip("/").split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, body) for candidate in candidates):
            included = negated
    return included


def copied_sources() -> list[str]:
    """The build-context paths that COPY instructions take (not those copied from another stage)."""
    sources = []
    for stage in DOCKERFILE.stages:
        for arguments in stage.arguments("COPY"):
            words = arguments.split()
            if not any(word.startswith("--from=") for word in words):
                sources += [word for word in words[:-1] if not word.startswith("--")]
    return sources


def test_one_build_argument_selects_the_cpu_or_the_cuda_base():
    assert DOCKERFILE.global_args["VARIANT"] == "cpu"
    assert DOCKERFILE.stage("python-cpu").base.startswith("python:3.11-slim")
    cuda = DOCKERFILE.stage("python-cuda")
    assert cuda.base == "${CUDA_IMAGE}" and DOCKERFILE.global_args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert any("python3.11" in run for run in cuda.arguments("RUN"))
    assert DOCKERFILE.stage("base").base == "python-${VARIANT}"
    builder = DOCKERFILE.stage("builder")
    assert builder.base == "base" and RUNTIME.base == "base"
    installs = " ".join(builder.arguments("RUN"))
    assert "cpu) torch_index=https://download.pytorch.org/whl/cpu" in installs
    assert 'extras="[gpu]"' in installs  # faiss-gpu, pyproject's gpu extra, in the CUDA image


def test_torch_is_installed_at_the_versions_pyproject_pins():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = sorted(dep for dep in pyproject["project"]["dependencies"] if re.match(r"torch(vision)?==", dep))
    installs = " ".join(DOCKERFILE.stage("builder").arguments("RUN"))
    command = re.search(r"\$\((grep .+? pyproject\.toml[^)]*)\)", installs).group(1)
    printed = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert sorted(printed.stdout.split()) == pins and len(pins) == 2


def test_the_package_is_installed_without_editing_and_brings_its_migrations():
    installs = DOCKERFILE.stage("builder").arguments("RUN")
    install = next(run for run in installs if 'pip install ".$extras"' in run)
    assert " -e " not in install and "cp " not in install  # the migrations are package data: no copy step
    assert "migrations/ migrations/" in DOCKERFILE.stage("builder").arguments("COPY")
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "migrations*" in packages["find"]["include"]


def test_runtime_stage_runs_unprivileged_with_a_readyz_health_check():
    user = RUNTIME.arguments("USER")[-1].split(":")
    assert user[0] not in ("0", "root") and user[1] not in ("0", "root")
    (health,) = RUNTIME.arguments("HEALTHCHECK")
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command[0] == "python" and command[1].startswith(IMAGE_DOCKER_DIR)
    script = REPO_ROOT / "docker" / command[1].removeprefix(IMAGE_DOCKER_DIR)
    assert '/readyz"' in script.read_text()  # the health check behaves: test_entrypoints runs it against a server
    assert "--start-period=" in health  # the model and index load after the server starts

    (entrypoint,) = RUNTIME.arguments("ENTRYPOINT")
    (path,) = json.loads(entrypoint)
    assert os.access(REPO_ROOT / "docker" / path.removeprefix(IMAGE_DOCKER_DIR), os.X_OK)
    assert f"docker/ {IMAGE_DOCKER_DIR}" in RUNTIME.arguments("COPY")
    environment = RUNTIME.environment()
    assert RUNTIME.arguments("EXPOSE") == [environment["CHEXTRIEV_PORT"]]
    assert environment["CHEXTRIEV_HOST"] == "0.0.0.0"


def test_runtime_stage_takes_the_environment_built_in_the_builder_and_installs_nothing():
    assert "--from=builder /opt/venv /opt/venv" in RUNTIME.arguments("COPY")
    assert not any(re.search(r"\b(pip|apt-get|gcc)\b", run) for run in RUNTIME.arguments("RUN"))
    assert DOCKERFILE.stage("base").environment()["PATH"].startswith("/opt/venv/bin:")


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private():
    patterns = dockerignore_patterns()
    sources = copied_sources()
    assert {"pyproject.toml", "model/", "service/", "trainer/", "migrations/", "docker/"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert in_build_context(source, patterns), f"COPY {source}: left out by .dockerignore"
    assert in_build_context("trainer/demo/cxr_lungbox/images/0007.jpg", patterns)  # package data
    for path in PRIVATE_PATHS:
        assert not in_build_context(path, patterns), f"{path} would be sent to the Docker build"


def test_no_secret_checkpoint_or_data_is_baked_into_the_image():
    for stage in DOCKERFILE.stages:
        for keyword in ("ENV", "ARG"):
            for arguments in stage.arguments(keyword):
                names = [word.split("=", 1)[0] for word in arguments.split()]
                assert not any(SECRET_NAME.search(name) for name in names), f"{keyword} {arguments}"
    for source in copied_sources():
        assert not re.search(r"^(var|secrets|\.env)|\.(pth|pt|safetensors|npz|db)$", source), source
    assert 'BAKE_BACKBONE_WEIGHTS=""' in DOCKERFILE.stage("builder").arguments("ARG")  # weights only on request
