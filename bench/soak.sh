#!/usr/bin/env bash
# Soak test of `bushu serve`: R streaming requests over C concurrent connections, a fraction of them
# disconnecting mid-stream, under a small KV budget (so preemption happens), bounded by -T seconds.
# Samples the server's RSS every second; at the end checks through /metrics that every KV block was
# freed and nothing is running or waiting, and prints completed/dropped/refused/failed, the RSS over
# time (min, every tenth of the run, max) and the KV budget the server reserved.
#
#   bench/soak.sh [-R 2000] [-C 32] [-n 16] [-k 24M] [-d 0.2] [-T 900] [-t 2] MODEL.gguf
#
# Env: BUSHU (default target/release/bushu), PORT (default 18090), OUT (logs; default a temp dir).
set -euo pipefail
R=2000 C=32 G=16 KV=24M D=0.2 TMO=900 T=2
while getopts "R:C:n:k:d:T:t:" o; do
  case $o in R) R=$OPTARG ;; C) C=$OPTARG ;; n) G=$OPTARG ;; k) KV=$OPTARG ;; d) D=$OPTARG ;; T) TMO=$OPTARG ;; t) T=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-R 2000] [-C 32] [-n 16] [-k 24M] [-d 0.2] [-T 900] [-t 2] MODEL.gguf" >&2; exit 2; }
M=$1
HERE=$(cd "$(dirname "$0")" && pwd)
BUSHU=${BUSHU:-target/release/bushu}
PORT=${PORT:-18090}
OUT=${OUT:-$(mktemp -d)}
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }
mkdir -p "$OUT"
"$BUSHU" serve --model "$M" --port "$PORT" --threads "$T" --kv-memory "$KV" --max-queue 100000 \
  --max-connections $((C + 16)) 2>"$OUT/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$OUT/serve.log" 2>/dev/null && break
  kill -0 $PID 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 0.2
done
grep "listening on" "$OUT/serve.log" >&2
( while kill -0 $PID 2>/dev/null; do
    awk '/VmRSS/ {print $2}' /proc/$PID/status 2>/dev/null || true
    sleep 1
  done ) >"$OUT/rss.kb" &
SAMPLER=$!
python3 "$HERE/soak.py" --url "http://127.0.0.1:$PORT" --requests "$R" --concurrency "$C" --gen "$G" \
  --disconnect "$D" --timeout "$TMO" | tee "$OUT/result.json"
sleep 2
METRICS=$(curl -s "http://127.0.0.1:$PORT/metrics" || true)
kill $PID
wait $PID 2>/dev/null || true
kill $SAMPLER 2>/dev/null || true
echo "after the run:" $(echo "$METRICS" | grep -E '^bushu_(kv_blocks_used|num_requests_running|num_requests_waiting|preemptions_total|requests_total)' | tr '\n' ' ')
python3 - "$OUT/rss.kb" <<'PY'
import sys
xs = [int(l) for l in open(sys.argv[1]) if l.strip().isdigit()]
if xs:
    tenth = [xs[min(len(xs) - 1, i * len(xs) // 10)] // 1024 for i in range(11)]
    print(f"RSS MiB over {len(xs)} s: min {min(xs)//1024}, by tenths {tenth}, max {max(xs)//1024}")
PY
echo "logs: $OUT" >&2
