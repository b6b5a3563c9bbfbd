#!/usr/bin/env bash
# Retrain the shipped moving-digits models from scratch on CPU (`make train-digits`; docs/training.md says
# how long it takes). Two stages of two trainings side by side, one torch thread each: on a 2-core CPU these
# small models run about as fast on one thread as on two, so pairing them doubles the work done per hour.
#   1. the VQ-VAE                      | the evaluation classifier (for `make eval-digits`), then the frame
#                                        recognizer (which digit a single frame shows)
#   2. the class prior (+ unconditional) | the frames prior (slower per step: it takes fewer steps), then
#                                          a fine-tune of the VQ-VAE's decoder with the codes held fixed
#   3. both prior bundles take the fine-tuned decoder (their codes are unchanged, so the priors still fit)
#   4. both priors train on from their weights, side by side, on other videos encoded once
#   5. the class prior trains on once more, on further videos
#   6. the class prior again | the frames prior again, each on further videos
#   7. the class prior a last time; then it samples at temperature 0.9 by default, the frames prior takes
#      it and the recognizer as its class guide, and both record their reduced-precision fidelity
# State goes to build/train-digits (each training resumes from its checkpoint: rerun to continue), logs to
# build/train-digits/*.log, bundles to weights/.
set -euo pipefail
BIN=${BIN:-.venv/bin}
WORK=build/train-digits
# --precision auto: bf16 autocast where the CPU (AVX-512) or GPU computes it natively, else float32.
DATA=(--data moving-digits --train-size 20000 --batch-size 16 --save-dtype float16 --seed 0 --precision auto)
PRIOR=(--hidden-dim 144 --heads 4 --layers 4 --dropout 0.1 --attn-dropout 0 --schedule cosine --warmup 100
       --val-every 500)
mkdir -p "$WORK"
export OMP_NUM_THREADS=1

# Runs each "name|command" line as a background job logging to $WORK/name.log; fails if any job fails.
side_by_side() {
  local pids=() names=() failed=0
  for job in "$@"; do
    local name=${job%%|*}
    echo "$(date +%T) start $name (log: $WORK/$name.log)"
    bash -c "${job#*|}" > "$WORK/$name.log" 2>&1 &
    pids+=($!) names+=("$name")
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      echo "$(date +%T) done  ${names[$i]}"
    else
      echo "$(date +%T) FAILED ${names[$i]}; the end of $WORK/${names[$i]}.log:" >&2
      tr '\r' '\n' < "$WORK/${names[$i]}.log" | tail -5 >&2
      failed=1
    fi
  done
  return $failed
}

side_by_side \
  "vqvae|$BIN/videogpt-serve train-vqvae ${DATA[*]} --resolution 32 --frames 16 --n-hiddens 64 \
     --embedding-dim 64 --n-codes 256 --n-res-layers 2 --no-axial-attention --downsample 2 4 4 --lr 1e-3 \
     --schedule cosine --steps 5000 --val-every 500 --name moving-digits-vqvae --out $WORK/vqvae" \
  "classifier|$BIN/videogpt-serve train-classifier --steps 2000 --resolution 32 --frames 16 \
     --out weights/moving-digits-classifier.safetensors \
   && $BIN/videogpt-serve train-recognizer --data moving-digits --train-size 20000 --seed 0 --resolution 32 \
     --frames 16 --batch-size 64 --steps 2000 --lr 2e-3 --schedule cosine --warmup 50 --val-every 500 \
     --out $WORK/recognizer.safetensors"

side_by_side \
  "class-prior|$BIN/videogpt-serve train-gpt ${DATA[*]} --vqvae $WORK/vqvae --class-cond \
     --condition-dropout 0.3 --default-guidance 4 --unconditional classes --steps 4000 --lr 6e-4 ${PRIOR[*]} \
     --checkpoint $WORK/class-prior.train.pt --name moving-digits --out weights/moving-digits" \
  "frames-prior|$BIN/videogpt-serve train-gpt ${DATA[*]} --vqvae $WORK/vqvae --n-cond-frames 1 \
     --aligned-frames given --global-frames --condition-dropout 0.2 --default-guidance 2.5 --steps 3000 \
     --lr 1e-3 ${PRIOR[*]} \
     --checkpoint $WORK/frames-prior.train.pt --name moving-digits-frames --out weights/moving-digits-frames \
   && $BIN/videogpt-serve train-vqvae ${DATA[*]} --finetune-decoder $WORK/vqvae --lr 3e-4 --schedule cosine \
     --warmup 50 --steps 1000 --val-every 250 --name moving-digits-vqvae --out $WORK/vqvae-decoder"

$BIN/videogpt-serve set-decoder weights/moving-digits weights/moving-digits-frames --vqvae $WORK/vqvae-decoder \
  --save-dtype float16

# 4. both priors go on from their weights (--init: a fresh optimizer and schedule) on 20000 other videos
#    (seed 1), each encoded once (--encoded): the first run's priors were still learning
FINETUNE=("${DATA[@]}" --seed 1 --encoded)  # the later --seed wins: other videos than stage 2's
side_by_side \
  "class-finetune|$BIN/videogpt-serve train-gpt ${FINETUNE[*]} --vqvae weights/moving-digits \
     --init weights/moving-digits --class-cond --condition-dropout 0.3 --default-guidance 4 \
     --unconditional classes --steps 3000 --lr 3e-4 ${PRIOR[*]} --checkpoint $WORK/class-finetune.train.pt \
     --name moving-digits --out $WORK/moving-digits" \
  "frames-finetune|$BIN/videogpt-serve train-gpt ${FINETUNE[*]} --vqvae weights/moving-digits-frames \
     --init weights/moving-digits-frames --n-cond-frames 1 --aligned-frames given --global-frames \
     --condition-dropout 0.2 --default-guidance 2.5 --steps 1500 --lr 4e-4 ${PRIOR[*]} \
     --checkpoint $WORK/frames-finetune.train.pt --name moving-digits-frames --out $WORK/moving-digits-frames"
for bundle in moving-digits moving-digits-frames; do
  rm -rf "weights/$bundle" && cp -r "$WORK/$bundle" "weights/$bundle"
done

# 5. the class prior goes on once more, alone, on 20000 further videos (seed 2): its held-out loss was
#    still falling (1.29 -> 1.24 nats/code), and its digits steadied with it
REFINE=("${DATA[@]}" --seed 2 --encoded)
side_by_side \
  "class-refine|$BIN/videogpt-serve train-gpt ${REFINE[*]} --vqvae weights/moving-digits \
     --init weights/moving-digits --class-cond --condition-dropout 0.3 --default-guidance 4 \
     --unconditional classes --steps 2000 --lr 3e-4 ${PRIOR[*]} --checkpoint $WORK/class-refine.train.pt \
     --name moving-digits --out $WORK/moving-digits-refined"
rm -rf weights/moving-digits && cp -r "$WORK/moving-digits-refined" weights/moving-digits

# 6. both priors go on from their weights on 20000 further videos (seed 3): held-out loss still falling
#    (class 1.24 -> 1.14, frames 1.12 -> 1.04 nats/code here), and the digits steadied with it
MORE=("${DATA[@]}" --seed 3 --encoded)
side_by_side \
  "class-refine2|$BIN/videogpt-serve train-gpt ${MORE[*]} --vqvae weights/moving-digits \
     --init weights/moving-digits --class-cond --condition-dropout 0.3 --default-guidance 4 \
     --unconditional classes --steps 3000 --lr 3e-4 ${PRIOR[*]} --checkpoint $WORK/class-refine2.train.pt \
     --name moving-digits --out $WORK/moving-digits-refined2" \
  "frames-refine|$BIN/videogpt-serve train-gpt ${MORE[*]} --vqvae weights/moving-digits-frames \
     --init weights/moving-digits-frames --n-cond-frames 1 --aligned-frames given --global-frames \
     --condition-dropout 0.2 --default-guidance 2.5 --steps 3000 --lr 3e-4 ${PRIOR[*]} \
     --checkpoint $WORK/frames-refine.train.pt --name moving-digits-frames --out $WORK/moving-digits-frames-refined"

# 7. the class prior a last time, on 20000 further videos (seed 4)
LAST=("${DATA[@]}" --seed 4 --encoded)
side_by_side \
  "class-refine3|$BIN/videogpt-serve train-gpt ${LAST[*]} --vqvae $WORK/moving-digits-refined2 \
     --init $WORK/moving-digits-refined2 --class-cond --condition-dropout 0.3 --default-guidance 4 \
     --unconditional classes --steps 3000 --lr 3e-4 ${PRIOR[*]} --checkpoint $WORK/class-refine3.train.pt \
     --name moving-digits --out $WORK/moving-digits-refined3"
rm -rf weights/moving-digits && cp -r "$WORK/moving-digits-refined3" weights/moving-digits
rm -rf weights/moving-digits-frames && cp -r "$WORK/moving-digits-frames-refined" weights/moving-digits-frames
# Class samples at temperature 0.9 (chosen on held-out seeds: steadier digits, docs/evaluation.md).
$BIN/videogpt-serve set-defaults weights/moving-digits --temperature 0.9
$BIN/videogpt-serve set-class-guide weights/moving-digits-frames --prior weights/moving-digits \
  --recognizer $WORK/recognizer.safetensors --scale 4 --save-dtype float16
# What VGS_PRECISION=auto consults instead of measuring at load: each prior's bfloat16 and int8 fidelity.
for bundle in moving-digits moving-digits-frames; do
  $BIN/videogpt-serve fidelity "weights/$bundle"
done
