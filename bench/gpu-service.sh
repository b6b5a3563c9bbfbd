#!/usr/bin/env bash
# The service's load benchmark (bench/service.py load: static and continuous batching side by side, the
# shipped model, Poisson arrivals at 30/60/90% of static's capacity, 200 jobs a level) on the GPU machine
# of the `device` tool, whose image lacks the gateway's and the queue's packages, ffmpeg and redis-server:
# they travel in .gpu-deps/ (made here by scripts/gpu-deps.sh, 25 MB) and are unpacked under /tmp there.
# Run it as its own call right after bench/gpu.sh, while the machine is still warm (30 s):
#   run(command="bash bench/gpu-service.sh $OUT", carry=[".gpu-deps"], timeout_s=600)
# Extra arguments go to bench/service.py load (default: --jobs 200 --loads 0.3 0.6 0.9). It needs no GPU:
# without one the worker decodes on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-build/gpu}
shift || true
DEPS=${DEPS:-.gpu-deps}
SITE=/tmp/vgs-site BIN=/tmp/vgs-bin
mkdir -p "$OUT" "$SITE" "$BIN"
test -d "$DEPS/wheels" || { echo "no $DEPS: run scripts/gpu-deps.sh here and carry it"; exit 1; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$DEPS"/wheels/*.whl || exit 1
cp -r "$DEPS/python/"* "$SITE/"
for tool in ffmpeg redis-server; do
  "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$DEPS/$tool.xz" "$BIN/$tool" && chmod +x "$BIN/$tool" || exit 1
done
export PYTHONPATH="$SITE:$PWD" PATH="$BIN:$PATH" IMAGEIO_FFMPEG_EXE="$BIN/ffmpeg" PYTHONUNBUFFERED=1
"$PY" -c "import fastapi, rq, redis, imageio_ffmpeg, torch; print('ffmpeg', imageio_ffmpeg.get_ffmpeg_exe(), \
'cuda', torch.cuda.is_available())" || exit 1
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--jobs 200 --loads 0.3 0.6 0.9)
timeout 560 "$PY" bench/service.py load "${args[@]}" > "$OUT/load.json" 2> >(tee "$OUT/load-levels.jsonl" >&2)
status=$?
cat "$OUT/load.json"
exit $status
