#!/usr/bin/env bash
# Medusa heads for SmolLM2-135M-Instruct (docs/DISTILLATION.md and docs/SPECULATIVE.md, Medusa sections):
# train 4 heads by self-distillation on the model's own chat answers plus text on the machine, then
# measure them with eval-medusa (greedy trees interleaved with plain greedy, typical acceptance,
# semi-autoregressive rows).
# usage: scripts/medusa-smollm2.sh [OUTDIR=/tmp/medusa-smollm2] [train|eval|all=all]
# Needs `cargo build --release -p bushu -p bushu-train` (binaries in $CARGO_TARGET_DIR or target/) and
# the model in ~/.cache/bushu/models (`bushu pull smollm2-135m`).
set -euo pipefail
out=${1:-/tmp/medusa-smollm2} what=${2:-all}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
model=${MODEL:-$HOME/.cache/bushu/models/SmolLM2-135M-Instruct.Q4_1.gguf}
here=$root/scripts/medusa-smollm2
mkdir -p "$out"
# Text on the machine: bushu's own documentation (docs/SPECULATIVE.md held out for the accuracy) and
# the license texts every Debian system carries.
data=("$root/README.md")
for f in "$root"/docs/*.md; do
  case $(basename "$f") in SPECULATIVE.md | BENCHMARKS.md) ;; *) data+=("$f") ;; esac
done
data+=(/usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 /usr/share/common-licenses/MPL-2.0)
if [ "$what" != eval ]; then
  /usr/bin/time -f "train-medusa: %e s wall, %U s user" nice -n 19 "$bin/bushu-train" train-medusa \
    --model "$model" --heads 4 --head-vocab 8192 --data "${data[@]}" --tokens 16000 --ctx 256 \
    --self-distill-prompts "$here/train-prompts.txt" --chat --self-distill-tokens 96 \
    --epochs 2 --batch 64 --lr 1e-3 --seed 0 \
    --val "$root/docs/SPECULATIVE.md" --val-tokens 4096 --out "$out/smollm2-heads.gguf" 2>&1 | tee "$out/train.log"
fi
if [ "$what" != train ]; then
  # THREADS=N: the kernels' threads (RAYON_NUM_THREADS; default all cores). On a host shared with other
  # jobs, THREADS=1 avoids the stalls of a worker thread kept off the CPU (docs: measured that way).
  if [ -n "${THREADS:-}" ]; then export RAYON_NUM_THREADS=$THREADS; fi
  # Greedy trees (interleaved with plain greedy) on the 8 held-out chat prompts; then typical acceptance
  # and semi-autoregressive decoding on the first 3 of them.
  nice -n 19 "$bin/bushu-train" eval-medusa --model "$model" --heads "$out/smollm2-heads.gguf" \
    --prompts "$here/eval-prompts.txt" --chat -n 64 --trees 2,4,8 --vocabs 0,4096 --greedy-only \
    2>&1 | tee "$out/eval-greedy.log"
  head -3 "$here/eval-prompts.txt" > "$out/eval-prompts-3.txt"
  nice -n 19 "$bin/bushu-train" eval-medusa --model "$model" --heads "$out/smollm2-heads.gguf" \
    --prompts "$out/eval-prompts-3.txt" --chat -n 64 --trees 4 \
    --temperature 0.7 --seed 0 2>&1 | tee "$out/eval-sampling.log"
fi
