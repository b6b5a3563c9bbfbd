#!/usr/bin/env bash
# The GPU check, one short prepared run (under 5 minutes) on a machine with a CUDA GPU:
#   the CUDA tests (tests/test_cuda.py), then the sampler benchmark in bfloat16 for bair-like and
#   bair-like-sparse at batch 1, 8 and 32, with the CUDA graph on and off, estimated from 8 positions
#   spread over a whole video (bench/sampler.py --positions): ms/step, tokens/s, MB read per step and the
#   fraction of the GPU's copy bandwidth (measured in the same run) that reading them would take.
# Usage: bench/gpu.sh [OUTPUT_DIR]   (PYTHON=... to choose the interpreter; it needs torch with CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-build/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.txt"
for graph in on off; do
  "$PY" bench/sampler.py --device cuda --configs bair-like bair-like-sparse --precisions bfloat16 \
    --batches 1 8 32 --positions 8 --cuda-graph "$graph" | tee "$OUT/sampler-graph-$graph.jsonl"
done
