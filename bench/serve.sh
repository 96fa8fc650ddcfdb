#!/usr/bin/env bash
# Serving under load, bushu serve vs llama-server on the same GGUF (issue 7): for each N, N concurrent
# streaming clients (bench/serve_client.py: distinct random-token prompts of -p tokens, -n generated
# tokens each, greedy, ignore_eos), first against `bushu serve`, then against `llama-server -cb
# --parallel N`, each started fresh on 127.0.0.1 and stopped after its run. Then, for reference,
# `llama-batched-bench` at B = the first N. Prints a markdown table: total output tokens/s, summed
# per-stream decode tokens/s, TTFT p50/p99, inter-token latency p50/p99, and the ratios bushu/llama-server.
#
#   bench/serve.sh [-N "16 64"] [-p 128] [-n 128] [-t 2] [-T 900] [-B 16] MODEL.gguf
#
#   -N  client counts          -p prompt tokens     -n generated tokens     -t threads
#   -T  bound on each client run, seconds (unfinished streams are reported, not waited for)
#   -B  llama-batched-bench parallel sequences (0 skips it)
#
# Env: LLAMA_BIN (default /tmp/llamacpp/build/bin), BUSHU (default target/release/bushu),
#      BUSHU_ARGS (extra server arguments, default `--precision fast`: llama.cpp's method) / LLAMA_ARGS, PORT (default 18080; llama-server PORT+1),
#      OUT (directory for logs and JSON, default a temp dir).
set -euo pipefail
NS="16 64" P=128 G=128 T=2 TMO=900 B=16
while getopts "N:p:n:t:T:B:" o; do
  case $o in N) NS=$OPTARG ;; p) P=$OPTARG ;; n) G=$OPTARG ;; t) T=$OPTARG ;; T) TMO=$OPTARG ;; B) B=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-N \"16 64\"] [-p 128] [-n 128] [-t 2] [-T 900] [-B 16] MODEL.gguf" >&2; exit 2; }
M=$1
HERE=$(cd "$(dirname "$0")" && pwd)
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/build/bin}
BUSHU=${BUSHU:-target/release/bushu}
PORT=${PORT:-18080}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$LLAMA_BIN/llama-server" ] || { echo "no $LLAMA_BIN/llama-server" >&2; exit 1; }
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }
CTX=$((P + G + 64)) # per sequence
# Prompts are random ids from the ordinary part of the vocabulary (above the first 1000 or V/4 ids).
V=$("$BUSHU" info --model "$M" | awk '$1 == "vocab_size:" {print $2}')
[ -n "$V" ] || { echo "cannot read the vocabulary size of $M" >&2; exit 1; }
VLO=$((V / 4 < 1000 ? V / 4 : 1000))
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT INT TERM

client() { # label port N
  timeout $((TMO + 300)) python3 "$HERE/serve_client.py" --url "http://127.0.0.1:$2" --clients "$3" \
    --prompt "$P" --gen "$G" --vocab-lo "$VLO" --vocab-hi "$((V - 1))" --timeout "$TMO" --label "$1" --json "$OUT/$1.json" || echo "client $1 failed" >&2
}

for N in $NS; do
  echo "N=$N: bushu serve" >&2
  # shellcheck disable=SC2086
  "$BUSHU" serve --model "$M" --host 127.0.0.1 --port "$PORT" -t "$T" --max-batch "$N" --ctx "$CTX" \
    --max-queue $((N * 4)) ${BUSHU_ARGS:---precision fast} >"$OUT/bushu.$N.log" 2>&1 &
  SERVER_PID=$!
  client "bushu.$N" "$PORT" "$N"
  stop_server
  echo "N=$N: llama-server" >&2
  # shellcheck disable=SC2086
  "$LLAMA_BIN/llama-server" -m "$M" --host 127.0.0.1 --port $((PORT + 1)) -t "$T" -tb "$T" -cb \
    --parallel "$N" -c $((N * CTX)) --no-webui ${LLAMA_ARGS:-} >"$OUT/llama.$N.log" 2>&1 &
  SERVER_PID=$!
  client "llama.$N" $((PORT + 1)) "$N"
  stop_server
done

if [ "$B" -gt 0 ]; then
  echo "llama-batched-bench B=$B" >&2
  "$LLAMA_BIN/llama-batched-bench" -m "$M" -c $((B * CTX)) -b 2048 -ub 512 -npp "$P" -ntg "$G" -npl "$B" \
    -t "$T" -tb "$T" --output-format jsonl >"$OUT/batched-bench.jsonl" 2>"$OUT/batched-bench.log" ||
    echo "llama-batched-bench failed (see $OUT/batched-bench.log)" >&2
fi

python3 - "$OUT" "$M" "$NS" <<'PY'
import json, os, sys
out, model, ns = sys.argv[1], sys.argv[2], sys.argv[3].split()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16"] if f in flags)
print(f"{os.path.basename(model)}; CPU: {cpu} ({simd}); load average at the end: {os.getloadavg()[0]:.1f}\n")
print("| N | server | done | wall s | total t/s | decode t/s (sum of streams) | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
res = {}
for n in ns:
    for who in ("bushu", "llama"):
        f = f"{out}/{who}.{n}.json"
        if not os.path.exists(f):
            print(f"| {n} | {who} | no result | | | | | |")
            continue
        r = res[(who, n)] = json.load(open(f))
        print(f"| {n} | {'bushu serve' if who == 'bushu' else 'llama-server'} | {r['completed']}/{r['clients']} "
              f"| {r['wall_s']:.1f} | {r['total_tps']:.1f} | {r['decode_tps']:.1f} "
              f"| {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.0f} / {r['itl_p99_ms']:.0f} |")
print()
for n in ns:
    if ("bushu", n) in res and ("llama", n) in res:
        b, l = res[("bushu", n)], res[("llama", n)]
        rat = lambda k: b[k] / l[k] if l[k] else float("nan")
        print(f"N={n} bushu/llama-server: total t/s {rat('total_tps'):.2f}, decode t/s {rat('decode_tps'):.2f}, "
              f"TTFT p50 {rat('ttft_p50_ms'):.2f}, ITL p50 {rat('itl_p50_ms'):.2f} (latency: lower is better)")
bb = f"{out}/batched-bench.jsonl"
if os.path.exists(bb):
    for line in open(bb):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if "speed_tg" in e:
            print(f"llama-batched-bench PP={e['pp']} TG={e['tg']} B={e['pl']}: S_PP {e['speed_pp']:.1f} t/s, "
                  f"S_TG {e['speed_tg']:.1f} t/s, S {e['speed']:.1f} t/s")
            for n in ns:
                if ("bushu", n) in res and int(n) == e["pl"]:
                    print(f"  bushu serve decode t/s at N={n} / batched-bench S_TG: "
                          f"{res[('bushu', n)]['decode_tps'] / e['speed_tg']:.2f}")
print(f"\nLogs and JSON: {out}")
PY
