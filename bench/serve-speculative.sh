#!/usr/bin/env bash
# Serving with speculative decoding (issue 18): N concurrent streaming clients on text prompts
# (bench/serve_client.py --prompt-files, round robin) against `bushu serve` plain, then with each
# speculative flag set given, each server started fresh; prints total output tokens/s of each and the
# ratio to plain. Greedy, ignore_eos.
#
#   bench/serve-speculative.sh [-N 16] [-n 128] [-t 2] MODEL.gguf "FLAGS1" ["FLAGS2" ...] -- PROMPT.txt...
#     e.g. bench/serve-speculative.sh M "--lookup" "--draft-model D" -- bench/prompts/*.txt
#
# Env: BUSHU (default target/release/bushu), PORT (default 18090), OUT (logs and JSON; default a temp dir),
# SERVER_ARGS (flags every server gets, e.g. "--precision fast").
set -euo pipefail
N=16 G=128 T=2
while getopts "N:n:t:" o; do
  case $o in N) N=$OPTARG ;; n) G=$OPTARG ;; t) T=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
M=$1
shift
MODES=("")
while [ $# -gt 0 ] && [ "$1" != "--" ]; do MODES+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ $# -ge 1 ] || { echo "usage: $0 [-N 16] [-n 128] [-t 2] MODEL.gguf FLAGS... -- PROMPT.txt..." >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
BUSHU=${BUSHU:-target/release/bushu}
PORT=${PORT:-18090}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null' EXIT
i=0
for mode in "${MODES[@]}"; do
  # shellcheck disable=SC2086
  "$BUSHU" serve -m "$M" --port "$PORT" --threads "$T" --max-batch "$N" ${SERVER_ARGS:-} $mode >"$OUT/server.$i.log" 2>&1 &
  pid=$!
  python3 "$HERE/serve_client.py" --url "http://127.0.0.1:$PORT" --clients "$N" --gen "$G" \
    --label="${mode:-plain}" --prompt-files "$@" --json "$OUT/run.$i.json" >"$OUT/client.$i.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=
  i=$((i + 1))
done
python3 - "$OUT" "${MODES[@]}" <<'PY'
import json, sys
out, modes = sys.argv[1], sys.argv[2:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}\n\n| server flags | total output t/s | vs plain | TTFT p50 ms | ITL p50 ms |\n|---|---|---|---|---|")
rows = [json.load(open(f"{out}/run.{i}.json")) for i in range(len(modes))]
base = rows[0]["total_tps"]
for m, r in zip(modes, rows):
    print(f"| {m or 'plain'} | {r['total_tps']:.1f} | {r['total_tps'] / base:.2f} | {r['ttft_p50_ms']:.0f} | {r['itl_p50_ms']:.1f} |")
PY
