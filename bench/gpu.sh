#!/usr/bin/env bash
# The GPU check, one short prepared run (under 5 minutes) on a machine with a CUDA GPU:
#   the CUDA tests (tests/test_cuda.py), then the sampler benchmark in bfloat16 for bair-like and
#   bair-like-sparse at batch 1, 8 and 32, with the CUDA graph on and off, estimated from 8 positions
#   spread over a whole video (bench/sampler.py --positions): ms/step, tokens/s, MB read per step and the
#   fraction of the GPU's copy bandwidth (measured in the same run) that reading them would take.
# Each part runs whatever the one before it did (a GPU's time is short: one failure must not hide the
# rest); the script fails at the end if any part failed.
# Then, as its own call while the machine is warm: bench/gpu-service.sh (the service under load).
# Usage: [AGAINST=PATH] bench/gpu.sh [OUTPUT_DIR]   (PYTHON=... to choose the interpreter; it needs CUDA torch)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-build/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=0
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt" || failed=1
# AGAINST=PATH: a checkout of the sampler before the decoding engine (commit 93b7a0d; its models/ and bench/
# are enough), timed beside ours on whole videos, float32 (its own way) and bfloat16 (ours), graph on;
# small-class too: its float32 steps at 8 rows were the one case slower than the older sampler's (0.65x,
# one cuBLAS kernel; float32 linears now go through addmm, not yet timed there).
if [ -n "${AGAINST:-}" ]; then
  timeout 240 "$PY" bench/sampler.py --device cuda --configs bair-like bair-like-sparse --precisions float32 bfloat16 \
    --batches 1 8 --against "$AGAINST" | tee "$OUT/sampler-against.jsonl" || failed=1
  timeout 90 "$PY" bench/sampler.py --device cuda --configs small-class --precisions float32 bfloat16 \
    --batches 1 8 --against "$AGAINST" | tee "$OUT/sampler-against-small-class.jsonl" || failed=1
fi
for graph in on off; do
  timeout 240 "$PY" bench/sampler.py --device cuda --configs bair-like bair-like-sparse --precisions bfloat16 \
    --batches 1 8 32 --positions 8 --cuda-graph "$graph" | tee "$OUT/sampler-graph-$graph.jsonl" || failed=1
done
exit $failed
