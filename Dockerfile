# syntax=docker/dockerfile:1
# The CheXtriev retrieval service image: the api, the one-shot migrations and the offline trainer.
#
#   docker build -t chextriev:cpu .                                 # CPU (the default)
#   docker build -t chextriev:cuda --build-arg VARIANT=cuda .       # CUDA, with faiss-gpu
#
# The build needs network access: PyPI, PyTorch's CPU wheel index (download.pytorch.org) for the CPU
# image, the deadsnakes PPA for Python 3.11 on the CUDA base. The install is README's: the package
# with pip, at the versions pyproject.toml pins (torch from the variant's index first), into a virtual
# environment that the runtime stage copies. No checkpoint, snapshot, data or secret is copied in:
# they come from volumes and secrets at run time (docker-compose.yml). The one optional exception,
# BAKE_BACKBONE_WEIGHTS, stores ImageNet backbone weights for hosts that cannot download them.

ARG VARIANT=cpu
# torch's default PyPI wheels are built for CUDA 13, faiss-gpu's for CUDA 12; both bring their CUDA
# libraries as pip packages, so the base only needs to be a CUDA image the host's driver supports.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04

# ---- Python 3.11 on the base of each variant -------------------------------------------------------
FROM python:3.11-slim-bookworm AS python-cpu

FROM ${CUDA_IMAGE} AS python-cuda
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove gpg-agent software-properties-common \
    && rm -rf /var/lib/apt/lists/*

FROM python-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# ---- builder: the virtual environment --------------------------------------------------------------
FROM base AS builder
ARG VARIANT
# Space-separated backbone names whose torchvision ImageNet weights to store in the image, e.g.
# "resnet50" (default: none; EfficientNet-Lite0's come with its pip package).
ARG BAKE_BACKBONE_WEIGHTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/chextriev/torch
RUN python3.11 -m venv /opt/venv && mkdir -p "$TORCH_HOME"
WORKDIR /src
COPY pyproject.toml README.md ./
# torch and torchvision at pyproject.toml's pins: CPU-only wheels from PyTorch's index, or PyPI's
# default (CUDA) wheels; `pip install .` below then keeps them.
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$VARIANT" in \
      cpu) torch_index=https://download.pytorch.org/whl/cpu ;; \
      cuda) torch_index=https://pypi.org/simple ;; \
      *) echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "$torch_index" $(grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"')
COPY model/ model/
COPY index_store/ index_store/
COPY service/ service/
COPY trainer/ trainer/
COPY migrations/ migrations/
# Non-editable install; the migrations are a package of the distribution, found where it is installed.
RUN --mount=type=cache,target=/root/.cache/pip \
    extras=""; if [ "$VARIANT" = cuda ]; then extras="[gpu]"; fi \
    && pip install ".$extras"
RUN for backbone in $BAKE_BACKBONE_WEIGHTS; do \
      python -c 'import sys; from model.backbones import build_backbone; build_backbone(sys.argv[1])' "$backbone"; \
    done

# ---- runtime: slim, unprivileged -------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="chextriev" \
      org.opencontainers.image.description="CheXtriev chest radiograph retrieval service ($VARIANT)" \
      org.opencontainers.image.licenses="Apache-2.0"
# /data: checkpoints and index snapshots (the volume shared by trainer and api); /runs: the trainer's
# work; /images and /datasets: read-only mounts. A new named volume takes these owners from the image.
RUN groupadd --system --gid 10001 chextriev \
    && useradd --system --uid 10001 --gid chextriev --create-home --home-dir /home/chextriev \
       --shell /usr/sbin/nologin chextriev \
    && mkdir -p /data/index /data/checkpoints /runs /images /datasets \
    && chown chextriev:chextriev /data /data/index /data/checkpoints /runs
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/chextriev/torch /opt/chextriev/torch
COPY docker/ /opt/chextriev/docker/
ENV TORCH_HOME=/opt/chextriev/torch \
    PGCONNECT_TIMEOUT=10 \
    CHEXTRIEV_HOST=0.0.0.0 \
    CHEXTRIEV_PORT=8000 \
    CHEXTRIEV_INDEX_STORE=/data/index \
    CHEXTRIEV_CHECKPOINTS_DIR=/data/checkpoints \
    CHEXTRIEV_RUNS_DIR=/runs \
    CHEXTRIEV_IMAGE_ROOT=/images
USER 10001:10001
WORKDIR /home/chextriev
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/opt/chextriev/docker/healthcheck.py"]
ENTRYPOINT ["/opt/chextriev/docker/entrypoint-api.sh"]
