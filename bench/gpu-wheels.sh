#!/usr/bin/env bash
# Fetch, where pip reaches an index, the wheels that bench/gpu.sh needs on the GPU machine and its
# image lacks (/work/.library/device/KINDS.md lists what it has: torch, torchvision, onnxruntime, timm,
# lightning, scipy, ... but no faiss, pydicom or web stack), for its Python 3.12 on x86-64, at the
# versions this repository's virtual environment pins.
# Usage: bench/gpu-wheels.sh [DIR]   (default .whl; keep DIR out of git, e.g. in .git/info/exclude,
# and carry it to the machine: the wheels count towards its 64 MiB working-tree limit)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
venv_python=${VENV_PYTHON:-.venv/bin/python}
packages=(faiss-cpu pydicom pylibjpeg pylibjpeg-libjpeg python-gdcm pydantic pydantic-core pydantic-settings
          annotated-types typing-inspection python-dotenv fastapi fastapi-offline starlette uvicorn
          python-multipart sqlalchemy alembic mako opentelemetry-api cachetools)
mkdir -p "$dir"
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
failed=()
for package in "${packages[@]}"; do
    version=$("$venv_python" -c 'import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))' "$package")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" "$package==$version" || failed+=("$package==$version")
done
du -sh "$dir"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu-wheels.sh: no Python 3.12 x86-64 wheel found for: ${failed[*]}" >&2
    exit 1
fi
