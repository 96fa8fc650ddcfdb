#!/usr/bin/env bash
# Side-by-side speed of llama.cpp (llama-bench), ik_llama.cpp (its llama-bench with `-rtr 1`, run-time
# repacking: its fast path) and bushu (bushu bench) on the same GGUF files, interleaved: each round runs
# each program once per model, so load from other processes hits all alike. Prints a markdown table:
# median t/s of each and the medians of the per-round ratios bushu / llama.cpp and bushu / ik_llama.cpp,
# with the CPU model and its SIMD flags.
#
#   bench/vs-llamacpp.sh [-p 512] [-n 128] [-t 2] [-r 3] MODEL.gguf...
#
# Env: LLAMA_BIN (default /tmp/llamacpp/build/bin, built by ../shared/tools/build-llamacpp.sh),
#      IK_BIN (default /tmp/ik/build/bin, built by ../shared/tools/build-ik.sh; its column is left out
#      when IK_BIN has no llama-bench),
#      BUSHU (default target/release/bushu), BUSHU_ARGS (extra bushu bench arguments; default
#      `--precision fast`, llama.cpp's method, since the default precision is `wide`: docs/PRECISION.md),
#      OUT (directory for the raw JSON, default a temp dir),
#      QUIET_WAIT (seconds to wait, at most, before each pair for 6 s of idle CPU; default 30, 0 = off).
set -euo pipefail
P=512 N=128 T=2 R=3
while getopts "p:n:t:r:" o; do
  case $o in p) P=$OPTARG ;; n) N=$OPTARG ;; t) T=$OPTARG ;; r) R=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-p N] [-n N] [-t N] [-r N] MODEL.gguf..." >&2; exit 2; }
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/build/bin}
BUSHU=${BUSHU:-target/release/bushu}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$LLAMA_BIN/llama-bench" ] || { echo "no $LLAMA_BIN/llama-bench" >&2; exit 1; }
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }
IK_BIN=${IK_BIN:-/tmp/ik/build/bin}
IK=0
[ -x "$IK_BIN/llama-bench" ] && IK=1

busy() { # percent of CPU time not idle over 2 s
  local a b c d e f g t1 i1
  read -r _ a b c d e f g _ </proc/stat; t1=$((a + b + c + d + e + f + g)); i1=$d; sleep 2
  read -r _ a b c d e f g _ </proc/stat; echo $((100 * ((a + b + c + d + e + f + g - t1) - (d - i1)) / (a + b + c + d + e + f + g - t1)))
}
quiet() { # other processes' load hits both programs but not equally (llama.cpp's threads spin)
  local n=0 t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "${QUIET_WAIT:-30}" ] && [ $n -lt 3 ]; do
    if [ "$(busy)" -lt 15 ]; then n=$((n + 1)); else n=0; fi
  done
}
for ((round = 1; round <= R; round++)); do
  for m in "$@"; do
    b=$(basename "$m" .gguf)
    quiet
    echo "round $round/$R: $b (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
    cut -d' ' -f1 /proc/loadavg >>"$OUT/load.txt"
    "$LLAMA_BIN/llama-bench" -m "$m" -p "$P" -n "$N" -t "$T" -r 1 -o json >"$OUT/$b.llama.$round.json" 2>/dev/null
    if [ $IK = 1 ]; then
      # ik_llama.cpp's own libraries, not mainline's (both are called libggml*.so).
      LD_LIBRARY_PATH="$IK_BIN" "$IK_BIN/llama-bench" -m "$m" -p "$P" -n "$N" -t "$T" -r 1 -rtr 1 -o json \
        >"$OUT/$b.ik.$round.json" 2>/dev/null
    fi
    # shellcheck disable=SC2086
    "$BUSHU" bench -m "$m" -p "$P" -n "$N" -t "$T" -r 1 --json ${BUSHU_ARGS:---precision fast} >"$OUT/$b.bushu.$round.json"
  done
done

python3 - "$OUT" "$R" "$IK" "$@" <<'PY'
import json, os, statistics, sys
out, rounds, ik, models = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"] if f in flags)
loads = [float(x) for x in open(f"{out}/load.txt").read().split()] if os.path.exists(f"{out}/load.txt") else []
print(f"CPU: {cpu} ({simd}); 1-min load average before each pair: {min(loads, default=0):.1f}-{max(loads, default=0):.1f}"
      f" (2 = our own 2 threads), at the end: {os.getloadavg()[0]:.1f}\n")
who_all = ("llama", "ik", "bushu") if ik else ("llama", "bushu")
if ik:
    print("| model | test | llama.cpp t/s | ik_llama.cpp t/s | bushu t/s | bushu / llama.cpp | bushu / ik_llama.cpp | ratios per round (llama.cpp; ik) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
else:
    print("| model | test | llama.cpp t/s | bushu t/s | bushu / llama.cpp (median of rounds) | ratios per round |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
for m in models:
    b = os.path.basename(m)[: -len(".gguf")] if m.endswith(".gguf") else os.path.basename(m)
    rows = {}
    for r in range(1, rounds + 1):
        for who in who_all:
            for e in json.load(open(f"{out}/{b}.{who}.{r}.json")):
                test = f"pp{e['n_prompt']}" if e["n_prompt"] else f"tg{e['n_gen']}"
                rows.setdefault(test, {}).setdefault(who, []).append(e["avg_ts"])
    for test, d in rows.items():
        med = lambda who: statistics.median(d[who])
        rl = [x / y for x, y in zip(d["bushu"], d["llama"])]
        if ik:
            ri = [x / y for x, y in zip(d["bushu"], d["ik"])]
            print(f"| {b} | {test} | {med('llama'):.2f} | {med('ik'):.2f} | {med('bushu'):.2f} "
                  f"| **{statistics.median(rl):.2f}** | **{statistics.median(ri):.2f}** "
                  f"| {' '.join(f'{x:.2f}' for x in rl)}; {' '.join(f'{x:.2f}' for x in ri)} |")
        else:
            print(f"| {b} | {test} | {med('llama'):.2f} | {med('bushu'):.2f} "
                  f"| **{statistics.median(rl):.2f}** | {' '.join(f'{x:.2f}' for x in rl)} |")
print(f"\nRaw JSON: {out}")
PY
