#!/usr/bin/env bash
# The Shakespeare distillation experiment of docs/DISTILLATION.md: the expert (dim 288, 6 layers) teaches a
# student of the amateur's shape (dim 128, 2 layers, 4 heads, 2 KV heads, ffn 384) three ways on the same
# windows and steps — hard labels only, logit KD, logit + feature KD — then `bushu perplexity -c 512` on
# the held-out val.txt for the three students and the teacher.
# usage: scripts/distill-shakespeare.sh [OUTDIR=/tmp/distill-shakespeare] [TOKENS=65536] [CHUNKS]
# (CHUNKS: evaluate the first CHUNKS chunks of 512 tokens of val.txt only; default all 197)
# Needs `cargo build --release -p bushu -p bushu-train` (binaries in $CARGO_TARGET_DIR or target/).
set -euo pipefail
out=${1:-/tmp/distill-shakespeare} tokens=${2:-65536} chunks=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
shared=$root/../shared
teacher=$shared/models/shakespeare/shakespeare-expert-f16.gguf
mkdir -p "$out"
common=(--teacher "$teacher" --data "$shared/testdata/shakespeare/train.txt" --tokens "$tokens"
        --student-layers 2 --student-dim 128 --student-heads 4 --student-kv-heads 2 --student-ffn 384
        --ctx 512 --batch 4 --lr 3e-3 --kd-temperature 1 --top-k 32 --seed 0 --cache "$out/teacher-cache")
run() { # name, extra args
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall, %U s user" nice -n 19 "$bin/bushu" distill "${common[@]}" "$@" --out "$out/$name.gguf"
}
# The hard-label run needs no teacher: it runs beside the others. Feature KD before logit KD: its
# teacher pass keeps the hidden states the logit-only run does not need, and that run reads the same cache.
run hard --alpha 0 &
run logit-feature-kd --alpha 0.5 --feature-layers 0:2,1:5
run logit-kd --alpha 0.5
wait
for m in "$teacher" "$out/hard.gguf" "$out/logit-kd.gguf" "$out/logit-feature-kd.gguf"; do
  echo "== $m"
  nice -n 19 "$bin/bushu" perplexity -m "$m" -f "$shared/testdata/shakespeare/val.txt" -c 512 ${chunks:+--chunks $chunks} 2>&1 | tail -2
done
