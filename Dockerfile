# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target gateway -t videogpt-serve-gateway .   # slim: FastAPI gateway, no torch
#   docker build --target worker  -t videogpt-serve-worker  .   # CUDA build of torch + the shipped weights
# With podman add --format docker (its default OCI format drops HEALTHCHECK). `make image-test` builds both
# with podman and runs them end to end.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data/outputs && chown app:app /data/outputs
# Probes the port the container's own gateway or worker listens on (its --port, its VGS_METRICS_PORT).
COPY --chmod=0755 deploy/image/healthcheck.py /usr/local/bin/vgs-healthcheck
WORKDIR /app

# The project as a wheel, built once for both images. The context holds only the packages, pyproject.toml and
# README.md (and weights/, deploy/image/): see .dockerignore.
FROM base AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# Each image's packages are installed into /packages in a stage of their own, then copied into /usr/local: the
# images keep no wheel, sources or build files.
FROM base AS gateway-packages
COPY --from=wheel /wheels /wheels
# The wheel is this project (its pins are in pyproject.toml), not an unpinned package from PyPI.
# hadolint ignore=DL3013
RUN pip install --prefix=/packages /wheels/*.whl

FROM base AS gateway
COPY --from=gateway-packages /packages /usr/local
# Compose starts the gateway as root: this copies the API-key secret (any owner and mode) for the app user,
# then runs the command as that user.
COPY --chmod=0755 deploy/image/entrypoint.py /usr/local/bin/vgs-entrypoint
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["vgs-healthcheck", "gateway"]
ENTRYPOINT ["vgs-entrypoint"]
CMD ["videogpt-serve", "gateway", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

# The CUDA build of the pinned torch, in a layer of its own (a code change does not reinstall it).
# For CPU-only hosts: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM base AS torch
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# A C compiler: a CPU worker compiles its decoding kernels at load (models/kernels.py; without one it
# decodes with torch's operations, 1.2-2.8x slower). Debian's current packages, as the base image is.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

# `...[worker]` finds torch==2.13.0 installed: the rest goes to /packages.
FROM torch AS worker-packages
COPY --from=wheel /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --prefix=/packages "$(echo /wheels/*.whl)[worker]"

FROM torch AS worker
COPY --from=worker-packages /packages /usr/local
COPY weights ./weights
USER 10001:10001
ENV VGS_BUNDLES='["/app/weights/moving-digits","/app/weights/moving-digits-frames"]' \
    VGS_METRICS_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["vgs-healthcheck", "worker"]
STOPSIGNAL SIGTERM
CMD ["videogpt-serve", "worker"]
