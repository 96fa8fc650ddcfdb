#!/usr/bin/env bash
# Batched decoding side by side: llama.cpp's llama-batched-bench and `bushu bench --batch` on the same
# GGUF, interleaved rounds. B sequences each prefill P prompt tokens (S_PP: prompt tokens/s over all
# sequences) then decode G tokens each, one token per sequence per step (S_TG: generated tokens/s over
# all sequences). Prints the median S_PP and S_TG of each and the median of the per-round ratios.
#
#   bench/batched.sh [-b 16] [-p 128] [-n 128] [-t 2] [-r 3] MODEL.gguf
#
# Env: LLAMA_BIN (default /tmp/llamacpp/build/bin), BUSHU (default target/release/bushu), OUT (raw
# output directory, default a temp dir).
set -euo pipefail
B=16 P=128 N=128 T=2 R=3
while getopts "b:p:n:t:r:" o; do
  case $o in b) B=$OPTARG ;; p) P=$OPTARG ;; n) N=$OPTARG ;; t) T=$OPTARG ;; r) R=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-b N] [-p N] [-n N] [-t N] [-r N] MODEL.gguf" >&2; exit 2; }
m=$1
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/build/bin}
BUSHU=${BUSHU:-target/release/bushu}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$LLAMA_BIN/llama-batched-bench" ] || { echo "no $LLAMA_BIN/llama-batched-bench" >&2; exit 1; }
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }
for ((round = 1; round <= R; round++)); do
  echo "round $round/$R (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  "$LLAMA_BIN/llama-batched-bench" -m "$m" -npp "$P" -ntg "$N" -npl "$B" -c $((B * (P + N))) -t "$T" \
    --output-format jsonl 2>/dev/null | grep '^{' >"$OUT/llama.$round.json"
  "$BUSHU" bench -m "$m" -b "$B" -p "$P" -n "$N" -t "$T" -r 1 --precision fast --json >"$OUT/bushu.$round.json"
done

python3 - "$OUT" "$R" "$m" "$B" "$P" "$N" <<'PY'
import json, statistics, sys
out, rounds, model, b, p, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"] if f in flags)
print(f"CPU: {cpu} ({simd}); {model}: B={b} sequences, {p} prompt + {n} generated tokens each\n")
print("| test | llama-batched-bench t/s | bushu t/s | bushu / llama.cpp (median) | ratios per round |")
print("| --- | ---: | ---: | ---: | --- |")
rows = {"S_PP": ([], []), "S_TG": ([], [])}
for r in range(1, rounds + 1):
    ll = json.loads(open(f"{out}/llama.{r}.json").read().splitlines()[-1])
    bu = {x["test"].split()[0][:2]: x["avg_ts"] for x in json.load(open(f"{out}/bushu.{r}.json"))}
    rows["S_PP"][0].append(ll["speed_pp"]); rows["S_PP"][1].append(bu["pp"])
    rows["S_TG"][0].append(ll["speed_tg"]); rows["S_TG"][1].append(bu["tg"])
for k, (l, u) in rows.items():
    ratios = [y / x for x, y in zip(l, u)]
    print(f"| {k} | {statistics.median(l):.1f} | {statistics.median(u):.1f} | **{statistics.median(ratios):.2f}** |"
          f" {', '.join(f'{x:.2f}' for x in ratios)} |")
PY
