#!/usr/bin/env bash
# Structured output side by side (issue 21): bushu serve vs llama-server on the same GGUF, the same chat
# prompts and JSON schemas (tests/fixtures/structured/schemas.json), greedy, `response_format`
# json_schema (strict) through /v1/chat/completions, streamed with usage. Per schema and engine:
# whether the answer parses and validates (Python `jsonschema`, formats checked), the finish reason,
# completion tokens, and decode tokens/s from the first streamed content to the end (so prefill is not
# in it). Also each engine unconstrained on the same prompts (`ignore_eos`, the same token count) for the
# overhead of the constraint. One server at a time, each started fresh; requests alternate so load from
# other processes hits both alike. Prints a markdown table with the CPU and the load average.
#
#   bench/structured.sh [-n 96] [-t 2] [-r 1] MODEL.gguf
#
# Env: LLAMA_BIN (default /tmp/llamacpp/build/bin), BUSHU (default target/release/bushu), PORT (default
# 18090; llama-server PORT+1), SCHEMAS (comma-separated fixture names; default eight), OUT (logs and raw
# JSON, default a temp dir), BUSHU_ARGS (default `--precision fast`, llama.cpp's arithmetic), LLAMA_ARGS.
set -euo pipefail
N=96 T=2 R=1
while getopts "n:t:r:" o; do
  case $o in n) N=$OPTARG ;; t) T=$OPTARG ;; r) R=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-n 96] [-t 2] [-r 1] MODEL.gguf" >&2; exit 2; }
M=$1
HERE=$(cd "$(dirname "$0")" && pwd)
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/build/bin}
BUSHU=${BUSHU:-target/release/bushu}
PORT=${PORT:-18090}
OUT=${OUT:-$(mktemp -d)}
SCHEMAS=${SCHEMAS:-person,address,order_with_items,weather,book,log_entry,recipe,http_request}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$LLAMA_BIN/llama-server" ] || { echo "no $LLAMA_BIN/llama-server" >&2; exit 1; }
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }
python3 -c "import jsonschema" 2>/dev/null || { echo "needs the Python package jsonschema (pip install jsonschema)" >&2; exit 1; }

PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT INT TERM

# Both servers up at once (one sequence each, so the other idles while one answers).
# shellcheck disable=SC2086
"$BUSHU" serve --model "$M" --host 127.0.0.1 --port "$PORT" -t "$T" --max-batch 1 --ctx 2048 \
  ${BUSHU_ARGS:---precision fast} >"$OUT/bushu.log" 2>&1 &
PIDS+=($!)
# shellcheck disable=SC2086
"$LLAMA_BIN/llama-server" -m "$M" --host 127.0.0.1 --port $((PORT + 1)) -t "$T" -tb "$T" --parallel 1 -c 2048 \
  --no-webui ${LLAMA_ARGS:-} >"$OUT/llama.log" 2>&1 &
PIDS+=($!)

python3 - "$HERE/../tests/fixtures/structured/schemas.json" "$SCHEMAS" "$PORT" "$N" "$R" "$OUT" "$M" <<'PY'
import json, os, sys, time, urllib.request, urllib.error
import jsonschema

fixtures, names, port, n, rounds, out, model = sys.argv[1:8]
port, n, rounds = int(port), int(n), int(rounds)
schemas = {e["name"]: e["schema"] for e in json.load(open(fixtures))}
names = names.split(",")
engines = {"bushu": port, "llama.cpp": port + 1}

def wait_up(p):
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit(f"server on port {p} did not come up (see {out})")

def chat(p, body):
    """Streams a chat completion: (content, finish, completion tokens, decode t/s, http error)."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(f"http://127.0.0.1:{p}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    content, finish, usage, t_first, t_end = "", None, None, None, None
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                c = json.loads(line[5:])
                if c.get("usage"):
                    usage = c["usage"]
                for ch in c.get("choices", []):
                    piece = ch.get("delta", {}).get("content")
                    if piece:
                        t_first = t_first or time.perf_counter()
                        content += piece
                        t_end = time.perf_counter()
                    finish = ch.get("finish_reason") or finish
    except urllib.error.HTTPError as e:
        return None, None, 0, 0.0, f"{e.code}: {e.read().decode()[:200]}"
    t_end = time.perf_counter() if finish else t_end
    toks = usage["completion_tokens"] if usage else 0
    tps = (toks - 1) / (t_end - t_first) if t_first and t_end and t_end > t_first and toks > 1 else 0.0
    return content, finish, toks, tps, None

for p in engines.values():
    wait_up(p)
rows = {}
for rnd in range(rounds):
    for name in names:
        msgs = [{"role": "user", "content": f"Give an example {name.replace('_', ' ')} as JSON."}]
        for eng, p in engines.items():
            fmt = {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schemas[name]}}
            content, finish, toks, tps, err = chat(p, {"messages": msgs, "max_tokens": n, "temperature": 0,
                                                        "response_format": fmt})
            valid = False
            if err is None and finish == "stop":
                try:
                    jsonschema.validate(json.loads(content), schemas[name],
                                        format_checker=jsonschema.FormatChecker())
                    valid = True
                except Exception:
                    valid = False
            # The same prompt unconstrained, as many tokens.
            _, _, utoks, utps, uerr = chat(p, {"messages": msgs, "max_tokens": max(toks, 2), "temperature": 0,
                                               "ignore_eos": True})
            r = rows.setdefault((name, eng), [])
            r.append(dict(valid=valid, finish=finish, toks=toks, tps=tps, utps=utps, err=err, content=content))
            print(f"round {rnd + 1} {name} {eng}: {finish} valid={valid} {toks} tokens {tps:.1f} t/s "
                  f"(unconstrained {utps:.1f}){' ' + err if err else ''}", file=sys.stderr)
json.dump({f"{k[0]}|{k[1]}": v for k, v in rows.items()}, open(os.path.join(out, "results.json"), "w"), indent=1)

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{os.path.basename(model)}; CPU: {cpu}; {os.cpu_count()} CPUs; load average at the end: "
      f"{os.getloadavg()[0]:.1f}; greedy, max_tokens {n}, {rounds} round(s)\n")
print("| schema | bushu valid | bushu tokens | bushu t/s (constrained / unconstrained) | llama.cpp valid | llama.cpp tokens | llama.cpp t/s (constrained / unconstrained) |")
print("| --- | :---: | ---: | ---: | :---: | ---: | ---: |")
tot = {e: [0, 0, 0.0, 0.0, 0.0] for e in engines}  # valid, runs, sum tps, sum utps, count with tps
def mean(xs):
    xs = [x for x in xs if x > 0]
    return sum(xs) / len(xs) if xs else 0.0
for name in names:
    cells = []
    for eng in engines:
        r = rows[(name, eng)]
        v = sum(x["valid"] for x in r)
        err = next((x["err"] for x in r if x["err"]), None)
        tps, utps = mean([x["tps"] for x in r]), mean([x["utps"] for x in r])
        tot[eng][0] += v
        tot[eng][1] += len(r)
        if tps > 0 and utps > 0:
            tot[eng][2] += tps
            tot[eng][3] += utps
            tot[eng][4] += 1
        fin = ",".join(sorted({str(x["finish"]) for x in r}))
        cells += [f"{v}/{len(r)} ({fin})" if not err else f"error {err[:40]!r}",
                  f"{mean([x['toks'] for x in r]):.0f}", f"{tps:.1f} / {utps:.1f}"]
    print(f"| {name} | " + " | ".join(cells) + " |")
cells = []
for eng in engines:
    v, runs, s, u, k = tot[eng]
    cells += [f"**{v}/{runs}**", "", f"**{s / max(k, 1):.1f} / {u / max(k, 1):.1f}** ({s / u if u else 0:.2f}x)"]
print("| all | " + " | ".join(cells) + " |")
PY
