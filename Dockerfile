# featureserve: REST on 8080 and gRPC on 50051, served by one `featureserve serve` process.
#
#   docker build -t featureserve:cpu .                              CPU torch; runs on any x86-64 host
#   docker build --build-arg VARIANT=cuda -t featureserve:cuda .    CUDA 13.0 torch; NVIDIA driver >= 580 on the host
#   scripts/wheelhouse.sh && docker build --network none --build-arg OFFLINE=1 -t featureserve:cpu .
#                                                                   no network: every wheel from wheelhouse/
#
# Configured by FEATURESERVE_* environment variables only (docs/configuration.md); the image reads no config file.
# Needs BuildKit (Docker's default builder since 23.0) for the RUN mounts. No `# syntax=` line: the builder's
# own Dockerfile frontend reads this file, so a build pulls nothing but the base image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: torch from the PyTorch CPU index, no CUDA libraries. cuda: PyPI's Linux wheel of the same version,
# which is the CUDA 13.0 build and brings the CUDA runtime libraries as pip packages, so the base image
# needs no CUDA; only the driver comes from the host (NVIDIA Container Toolkit).
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# OFFLINE=1: install from wheelhouse/ only (scripts/wheelhouse.sh fills it), with no package index.
ARG OFFLINE=
# Every version comes from constraints/lock.txt (torch's included), as on CPU machines (scripts/install.sh);
# wheelhouse/ is always a place to look, and the only one with OFFLINE=1.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CONSTRAINT=/src/constraints/lock.txt \
    PIP_FIND_LINKS=/wheelhouse
RUN python -m venv /opt/featureserve
ENV PATH=/opt/featureserve/bin:$PATH
WORKDIR /src
COPY constraints/lock.txt ./constraints/
# torch first, in a layer of its own: by far the largest download, and the one that changes least often.
# Its version comes from the lock (PIP_CONSTRAINT), which hadolint cannot see.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    case "$VARIANT" in \
      cpu) if [ -n "$OFFLINE" ]; then pip install --no-index torch; \
           else pip install --index-url "$TORCH_CPU_INDEX" torch; fi ;; \
      cuda) pip install ${OFFLINE:+--no-index} torch ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY featureserve ./featureserve
# A regular install, not an editable one: the build generates the gRPC stubs from proto/, and the
# checkpoints under featureserve/models/checkpoints/ come along as package data. The lock keeps pip from
# swapping the torch installed above for another build. Then what the server never runs leaves the
# environment: pip, and torch's C++ headers, CMake files, test programs and protoc (about 0.3 GB; torch's
# shared-memory manager stays). `featureserve models` fails the build when the package no longer imports.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip install ${OFFLINE:+--no-index} . \
    && pip uninstall --yes pip \
    && torch=$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
    && rm -r "$torch/include" "$torch/share" "$torch/test" \
    && find "$torch/bin" -type f ! -name torch_shm_manager -delete \
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
    FEATURESERVE_DRAIN_TIMEOUT_S=8 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/featureserve
EXPOSE 8080 50051
# /readyz is 200 only once the models are loaded and warmed up, and 503 from the moment a drain begins.
# Python's urllib, because the slim base image has no curl; the start period covers model loading. With TLS
# on it asks over HTTPS without checking the certificate, which names the service's host, not 127.0.0.1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('FEATURESERVE_TLS_CERT_FILE')); urllib.request.urlopen('%s://127.0.0.1:%s/readyz' % ('https' if tls else 'http', os.environ.get('FEATURESERVE_REST_PORT', '8080')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]
# SIGTERM turns readiness off, finishes accepted requests and exits 0 within FEATURESERVE_DRAIN_TIMEOUT_S.
# The image sets it to 8 s, inside the 10 s that a plain `docker stop` waits before SIGKILL; compose and
# Kubernetes set 30 s with a 45 s grace period (`docker run --stop-timeout 45` does the same by hand).
STOPSIGNAL SIGTERM
# Exec form: featureserve is PID 1 and receives SIGTERM itself, with no shell in between.
ENTRYPOINT ["featureserve"]
CMD ["serve"]
