#!/usr/bin/env bash
# Self-speculation by exit layer (issue 18): for each L, `bushu run --self-speculate L` (greedy, the
# model's first L layers draft) against plain greedy decoding on the same prompts, interleaved per round.
# Prints per L: acceptance, mean accepted length, decode tokens/s and the ratio to plain (median over
# prompts and rounds), and whether the output equals plain greedy.
#
#   bench/self-speculate.sh [-n 128] [-r 2] [-L "4 8 12 16 20 24 28"] [-P 0.75] MODEL.gguf PROMPT.txt...
#
# Env: BUSHU (default target/release/bushu), OUT (raw JSON; default a temp dir), PRECISION (default fast).
set -euo pipefail
N=128 R=2 LS="4 8 12 16 20 24 28" PMIN=0.75
while getopts "n:r:L:P:" o; do
  case $o in n) N=$OPTARG ;; r) R=$OPTARG ;; L) LS=$OPTARG ;; P) PMIN=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { echo "usage: $0 [-n N] [-r R] [-L \"L...\"] [-P p_min] MODEL.gguf PROMPT.txt..." >&2; exit 2; }
M=$1
shift
BUSHU=${BUSHU:-target/release/bushu}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for ((round = 1; round <= R; round++)); do
  for f in "$@"; do
    b=$(basename "$f" .txt)
    for L in 0 $LS; do
      flags=()
      [ "$L" = 0 ] || flags=(--self-speculate "$L" --draft-p-min "$PMIN")
      echo "round $round/$R: $b L=$L" >&2
      "$BUSHU" run --precision "${PRECISION:-fast}" -m "$M" --prompt "$(cat "$f")" -n "$N" --temperature 0 --json "${flags[@]}" >"$OUT/$b.$L.$round.json"
    done
  done
done
python3 - "$OUT" "$R" "$LS" "$@" <<'PY'
import json, statistics, sys, os
out, R, Ls, prompts = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split()], sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}\n\n| exit layer L | drafted | accepted | acceptance | τ (mean accepted length) | t/s | vs plain | same output |\n|---|---|---|---|---|---|---|---|")
names = [os.path.basename(p)[:-4] for p in prompts]
load = lambda b, L, r: json.load(open(f"{out}/{b}.{L}.{r}.json"))
plain = {(b, r): load(b, 0, r) for b in names for r in range(1, R + 1)}
print(f"| plain | - | - | - | - | {statistics.median(p['timings']['decode_tokens_per_s'] for p in plain.values()):.1f} | 1.00 | - |")
for L in Ls:
    runs = {(b, r): load(b, L, r) for b in names for r in range(1, R + 1)}
    d = sum(x["speculative"]["draft_n"] for x in runs.values())
    a = sum(x["speculative"]["draft_n_accepted"] for x in runs.values())
    steps = sum(x["speculative"]["draft_steps"] for x in runs.values())
    tps = statistics.median(x["timings"]["decode_tokens_per_s"] for x in runs.values())
    ratio = statistics.median(runs[k]["timings"]["decode_tokens_per_s"] / plain[k]["timings"]["decode_tokens_per_s"] for k in runs)
    same = all(runs[k]["tokens"] == plain[k]["tokens"] for k in runs)
    acc = f"{100 * a / d:.0f} %" if d else "-"
    tau = f"{(a + steps) / steps:.2f}" if steps else "-"
    print(f"| {L} | {d} | {a} | {acc} | {tau} | {tps:.1f} | {ratio:.2f} | {'yes' if same else 'NO'} |")
PY
