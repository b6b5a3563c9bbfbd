# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target gateway -t videogpt-serve-gateway .   # slim: FastAPI gateway, no torch
#   docker build --target worker  -t videogpt-serve-worker  .   # CUDA build of torch + the shipped weights

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app

# The source, once, for both images.
FROM base AS source
COPY pyproject.toml README.md ./
COPY media ./media
COPY models ./models
COPY service ./service
COPY worker ./worker

FROM source AS gateway
RUN pip install . && mkdir -p /data/outputs && chown app:app /data/outputs
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["videogpt-serve", "gateway", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM source AS worker
# The CUDA build of the pinned torch first: `pip install .[worker]` then finds torch==2.13.0 satisfied.
# For CPU-only hosts: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# ".[worker]" is this project (its pins are in pyproject.toml), not an unpinned package from PyPI.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install ".[worker]" \
    && mkdir -p /data/outputs && chown app:app /data/outputs
COPY weights ./weights
USER 10001:10001
ENV VGS_BUNDLES='["/app/weights/moving-digits","/app/weights/moving-digits-frames"]' \
    VGS_METRICS_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["videogpt-serve", "worker"]
