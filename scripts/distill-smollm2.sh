#!/usr/bin/env bash
# SmolLM2-135M-Instruct -> a small distilled draft for speculative decoding (issue 19; docs/DISTILLATION.md,
# "A distilled SmolLM2 draft"), and the undistilled baseline of the same size (the teacher's embeddings,
# LM head, final norm and the same evenly spaced layers, untrained). Both are quantized alike.
#
#   scripts/distill-smollm2.sh [OUTDIR] [TRAINING_TOKENS]
#
# Env: TEACHER (default ~/.cache/bushu/models/SmolLM2-135M-Instruct.Q4_1.gguf), LAYERS (student layers,
# default 4), QTYPE (default Q4_1, quantized --pure: the LM head too), BIN (default target/release),
# LR (default 2e-3), CTX / BATCH (training windows and windows per step, default 128 / 8), ALPHA (default 0.9), GEN_TOKENS (tokens the teacher writes per prompt, default 256),
# NICE (default "nice -n 19"). Needs `cargo build --release -p bushu -p bushu-train`.
# Writes OUTDIR/draft-distilled.gguf and OUTDIR/draft-truncated.gguf (and the F16 files they come from,
# the teacher cache and the generated sequences, which reruns reuse). scripts/eval-smollm2-draft.sh measures them.
set -euo pipefail
OUT=${1:-/tmp/distill-smollm2}
TOKENS=${2:-32768}
TEACHER=${TEACHER:-$HOME/.cache/bushu/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LAYERS=${LAYERS:-4}
QTYPE=${QTYPE:-Q4_1}
BIN=${BIN:-target/release}
LR=${LR:-2e-3}
ALPHA=${ALPHA:-0.9}
GEN_TOKENS=${GEN_TOKENS:-256}
CTX=${CTX:-128}
BATCH=${BATCH:-8}
NICE=${NICE:-nice -n 19}
SHARED=${SHARED:-../shared}
[ -f "$TEACHER" ] || { echo "no teacher $TEACHER" >&2; exit 1; }
[ -x "$BIN/bushu" ] && [ -x "$BIN/bushu-train" ] || { echo "build first: cargo build --release -p bushu -p bushu-train" >&2; exit 1; }
mkdir -p "$OUT/data"

# 1. Text found on the machine: Shakespeare (the plays of train.txt; Hamlet and The Tempest, val.txt,
#    stay held out), this repository's documentation and Rust source. Fixed slices: reruns see the same text.
slice() { # BYTES OUT FILE...: the first BYTES bytes of the files, one after the other
  local n=$1 out=$2
  shift 2
  cat "$@" >"$out.all"
  head -c "$n" "$out.all" >"$out"
  rm "$out.all"
}
slice 150000 "$OUT/data/shakespeare.txt" "$SHARED/testdata/shakespeare/train.txt"
slice 120000 "$OUT/data/docs.md" $(ls docs/*.md | LC_ALL=C sort)
slice 120000 "$OUT/data/code.rs" $(find crates/bushu/src -name '*.rs' | LC_ALL=C sort)

# 2. Prompts the teacher answers or continues (self-distillation): 6 of every 7 lines of
#    bench/prompts/chat-prompts.txt (every 7th is held out for the evaluation), the instructions and the
#    plain openings of bench/prompts/distill/.
awk 'NR % 7 != 0' bench/prompts/chat-prompts.txt >"$OUT/chat-train.txt"
cat bench/prompts/distill/instructions.txt >>"$OUT/chat-train.txt"

# 3. The distilled draft: the teacher's embeddings, LM head (frozen) and LAYERS evenly spaced layers,
#    trained by logit KD (top-32 + tail, tau 1) mixed with a little hard-label loss.
$NICE "$BIN/bushu" distill --teacher "$TEACHER" --init teacher --student-layers "$LAYERS" --freeze-embeddings \
  --data "$OUT/data/shakespeare.txt" "$OUT/data/docs.md" "$OUT/data/code.rs" \
  --generate-chat "$OUT/chat-train.txt" --generate-prompts bench/prompts/distill/openings.txt \
  --generate-tokens "$GEN_TOKENS" --generate-batch 16 \
  --tokens "$TOKENS" --ctx "$CTX" --batch "$BATCH" --lr "$LR" --alpha "$ALPHA" --kd-temperature 1 --top-k 32 \
  --checkpoint-every 10 --seed 0 --out-type f16 --out "$OUT/draft-distilled-f16.gguf"

# 4. The undistilled baseline: the same layers, no training.
$NICE "$BIN/bushu" distill --teacher "$TEACHER" --init teacher --student-layers "$LAYERS" --tokens 0 \
  --data "$OUT/data/shakespeare.txt" --out-type f16 --out "$OUT/draft-truncated-f16.gguf"

# 5. Both quantized alike.
for d in distilled truncated; do
  $NICE "$BIN/bushu" quantize "$OUT/draft-$d-f16.gguf" "$OUT/draft-$d.gguf" --type "$QTYPE" --pure --quiet
done
ls -la "$OUT"/draft-*.gguf
