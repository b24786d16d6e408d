# syntax=docker/dockerfile:1
# featureserve: REST on 8080 and gRPC on 50051, served by one `featureserve serve` process.
#
#   docker build -t featureserve:cpu .                              CPU torch; runs on any x86-64 host
#   docker build --build-arg VARIANT=cuda -t featureserve:cuda .    CUDA 13.0 torch; NVIDIA driver >= 580 on the host
#
# Configured by FEATURESERVE_* environment variables only (docs/configuration.md); the image reads no config file.
# Needs BuildKit (Docker's default builder since 23.0) for the pip cache mounts.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: torch from the PyTorch CPU index, no CUDA libraries. cuda: PyPI's Linux wheel of the same version,
# which is the CUDA 13.0 build and brings the CUDA runtime libraries as pip packages, so the base image
# needs no CUDA; only the driver comes from the host (NVIDIA Container Toolkit).
ARG VARIANT=cpu
# Same version as constraints/cpu.txt; tests/deploy/test_dockerfile.py fails when the two disagree.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/featureserve
ENV PATH=/opt/featureserve/bin:$PATH
# torch first, in a layer of its own: by far the largest download, and the one that changes least often.
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$VARIANT" in \
      cpu) pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY featureserve ./featureserve
# A regular install, not an editable one: the build generates the gRPC stubs from proto/, and the
# checkpoints under featureserve/models/checkpoints/ come along as package data. The constraint keeps pip
# from swapping the torch installed above for another build. `featureserve models` fails the build when
# the installed package does not import.
RUN --mount=type=cache,target=/root/.cache/pip \
    echo "torch==${TORCH_VERSION}" > /tmp/torch-pin.txt \
    && pip install --constraint /tmp/torch-pin.txt . \
    && featureserve models

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="featureserve" \
      org.opencontainers.image.description="Local features and verified matches over REST and gRPC" \
      org.opencontainers.image.licenses="MIT" \
      io.featureserve.variant="${VARIANT}"
# A fixed numeric uid and gid, so Kubernetes' runAsNonRoot can check the user without reading /etc/passwd.
RUN groupadd --system --gid 10001 featureserve \
    && useradd --system --no-log-init --uid 10001 --gid featureserve \
       --create-home --home-dir /home/featureserve --shell /usr/sbin/nologin featureserve
COPY --from=build /opt/featureserve /opt/featureserve
# FEATURESERVE_HOST=0.0.0.0 so the ports are reachable from outside the container; the ports are spelled
# out to match EXPOSE. NVIDIA_DRIVER_CAPABILITIES asks the NVIDIA runtime for the CUDA driver libraries
# (the CPU variant ignores it).
ENV PATH=/opt/featureserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEATURESERVE_HOST=0.0.0.0 \
    FEATURESERVE_REST_PORT=8080 \
    FEATURESERVE_GRPC_PORT=50051 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/featureserve
EXPOSE 8080 50051
# /readyz is 200 only once the models are loaded and warmed up, and 503 from the moment a drain begins.
# Python's urllib, because the slim base image has no curl; the start period covers model loading.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FEATURESERVE_REST_PORT', '8080'), timeout=4)"]
# SIGTERM turns readiness off, finishes accepted requests and exits 0 (FEATURESERVE_DRAIN_TIMEOUT_S, 30 s
# by default): give `docker stop` / compose a longer grace period than that.
STOPSIGNAL SIGTERM
# Exec form: featureserve is PID 1 and receives SIGTERM itself, with no shell in between.
ENTRYPOINT ["featureserve"]
CMD ["serve"]
