#!/usr/bin/env bash
# Speculative decoding side by side (issue 18): on the same target (and draft) GGUF files and prompts,
# greedy decoding speed of
#   bushu plain | bushu --draft-model | bushu --lookup |
#   bushu --draft-model --lookup (combined) | bushu --draft-model --draft-tree (token trees) |
#   llama.cpp plain (llama-completion) | llama-speculative-simple -md (draft-simple) | llama-lookup,
# interleaved per prompt and round, so load from other processes hits all alike. Prints a markdown
# table: decode tokens/s of each, acceptance, and the ratios speculative / plain for each engine, with
# the CPU; then a second table of bushu's combined and tree proposers against its plain draft model.
# bushu's outputs with and without speculation are compared token for token (they must match).
#
#   bench/speculative.sh [-n 128] [-t 2] [-r 2] [-k 8] TARGET.gguf DRAFT.gguf PROMPT.txt...
#
# The Qwen2.5-Coder pair comes from scripts/fetch-qwen-pair.sh. Env: LLAMA_BIN (default
# /tmp/llamacpp/build/bin), BUSHU (default target/release/bushu), OUT (raw outputs; default a temp dir),
# P_MIN (draft confidence floor for both engines, default 0.75), PRECISION (bushu's, default fast: llama.cpp's
# int8 activations), TREE / TREE_P (--draft-tree / --draft-tree-p of bushu-tree, default 4 / 0.9),
# DRAFT_ARGS (more bushu flags for the bushu-draft case, e.g. "--draft-vocab 65536"), CASES
# (default all eight, by name:
# bushu,bushu-draft,bushu-lookup,bushu-combined,bushu-tree,llama,llama-draft,llama-lookup).
set -euo pipefail
N=128 T=2 R=2 K=8
while getopts "n:t:r:k:" o; do
  case $o in n) N=$OPTARG ;; t) T=$OPTARG ;; r) R=$OPTARG ;; k) K=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 3 ] || { echo "usage: $0 [-n N] [-t N] [-r N] [-k K] TARGET.gguf DRAFT.gguf PROMPT.txt..." >&2; exit 2; }
TARGET=$1 DRAFT=$2
shift 2
LLAMA_BIN=${LLAMA_BIN:-/tmp/llamacpp/build/bin}
BUSHU=${BUSHU:-target/release/bushu}
OUT=${OUT:-$(mktemp -d)}
P_MIN=${P_MIN:-0.75}
PRECISION=${PRECISION:-fast}
TREE=${TREE:-4}
TREE_P=${TREE_P:-0.9}
CASES=${CASES:-bushu,bushu-draft,bushu-lookup,bushu-combined,bushu-tree,llama,llama-draft,llama-lookup}
DRAFT_ARGS=${DRAFT_ARGS:-}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$BUSHU" ] || { echo "no $BUSHU (cargo build --release)" >&2; exit 1; }

run_case() { # case prompt-file out-file
  local p
  p=$(cat "$2")
  case $1 in
  bushu) "$BUSHU" run --precision "$PRECISION" -m "$TARGET" --prompt "$p" -n "$N" --temperature 0 --threads "$T" --json >"$3" ;;
  bushu-draft) "$BUSHU" run --precision "$PRECISION" -m "$TARGET" --prompt "$p" -n "$N" --temperature 0 --threads "$T" --json \
    --draft-model "$DRAFT" --draft-max "$K" --draft-p-min "$P_MIN" $DRAFT_ARGS >"$3" ;;
  bushu-lookup) "$BUSHU" run --precision "$PRECISION" -m "$TARGET" --prompt "$p" -n "$N" --temperature 0 --threads "$T" --json \
    --lookup --draft-max "$K" >"$3" ;;
  bushu-combined) "$BUSHU" run --precision "$PRECISION" -m "$TARGET" --prompt "$p" -n "$N" --temperature 0 --threads "$T" --json \
    --draft-model "$DRAFT" --lookup --draft-max "$K" --draft-p-min "$P_MIN" >"$3" ;;
  bushu-tree) "$BUSHU" run --precision "$PRECISION" -m "$TARGET" --prompt "$p" -n "$N" --temperature 0 --threads "$T" --json \
    --draft-model "$DRAFT" --draft-tree "$TREE" --draft-tree-p "$TREE_P" --draft-max "$K" --draft-p-min "$P_MIN" >"$3" ;;
  llama) "$LLAMA_BIN/llama-completion" -m "$TARGET" -p "$p" -n "$N" --temp 0 -t "$T" -no-cnv --ignore-eos \
    </dev/null >"$3" 2>&1 ;;
  llama-draft) "$LLAMA_BIN/llama-speculative-simple" -m "$TARGET" -md "$DRAFT" --spec-type draft-simple \
    --spec-draft-n-max "$K" --spec-draft-p-min "$P_MIN" -p "$p" -n "$N" --temp 0 -t "$T" >"$3" 2>&1 ;;
  llama-lookup) "$LLAMA_BIN/llama-lookup" -m "$TARGET" -p "$p" -n "$N" --temp 0 -t "$T" \
    --spec-draft-n-max "$K" >"$3" 2>&1 ;;
  esac
}

for ((round = 1; round <= R; round++)); do
  for f in "$@"; do
    b=$(basename "$f" .txt)
    for c in ${CASES//,/ }; do
      echo "round $round/$R: $b $c (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
      run_case "$c" "$f" "$OUT/$b.$c.$round.out" || echo "  $c failed (see $OUT/$b.$c.$round.out)" >&2
    done
  done
done

python3 - "$OUT" "$R" "$CASES" "$@" <<'PY'
import json, os, re, statistics, sys
out, rounds, cases, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"] if f in flags)
print(f"CPU: {cpu} ({simd}); load average at the end: {os.getloadavg()[0]:.1f}\n")

def read(name, case, r):
    p = f"{out}/{name}.{case}.{r}.out"
    if not os.path.exists(p):
        return None
    t = open(p, errors="replace").read()
    if case.startswith("bushu"):
        try:
            d = json.loads(t)
        except ValueError:
            return None
        s = d.get("speculative") or {}
        return {"tps": d["timings"]["decode_tokens_per_s"], "drafted": s.get("draft_n"), "accepted": s.get("draft_n_accepted"),
                "tau": s.get("mean_accepted_length"), "tokens": d.get("tokens"), "second": s.get("tree_second_choices")}
    if case == "llama":
        m = re.search(r"eval time =\s*[\d.]+ ms /\s*\d+ runs.*?([\d.]+) tokens per second", t)
        return {"tps": float(m.group(1))} if m else None
    m = re.search(r"decoded\s+\d+ tokens in\s+[\d.]+ seconds, speed:\s+([\d.]+) t/s", t)
    d = re.search(r"n_drafted\s*=\s*(\d+)", t)
    a = re.search(r"n_accept\s*=\s*(\d+)", t)
    return {"tps": float(m.group(1)), "drafted": int(d.group(1)) if d else None, "accepted": int(a.group(1)) if a else None} if m else None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(x, p=1):
    return "-" if x is None else f"{x:.{p}f}"

print("| prompt | " + " | ".join(f"{c} t/s" for c in cases) + " | bushu draft / plain | llama draft / plain | bushu lookup / plain | llama lookup / plain | bushu draft / llama draft | acceptance bushu / llama (draft) | τ bushu draft | same output |")
print("|---" * (len(cases) + 9) + "|")
for pf in prompts:
    name = os.path.basename(pf)[:-4]
    runs = {c: [read(name, c, r) for r in range(1, rounds + 1)] for c in cases}
    tps = {c: med([x["tps"] if x else None for x in runs[c]]) for c in cases}
    def ratio(a, b):
        rs = [x["tps"] / y["tps"] for x, y in zip(runs.get(a, []), runs.get(b, [])) if x and y]
        return med(rs)
    def acc(c):
        xs = [x for x in runs.get(c, []) if x and x.get("drafted")]
        return f"{100 * sum(x['accepted'] for x in xs) / sum(x['drafted'] for x in xs):.0f} %" if xs else "-"
    tau = med([x.get("tau") for x in runs.get("bushu-draft", []) if x])
    plain = [x["tokens"] for x in runs.get("bushu", []) if x]
    same = all(x["tokens"] == plain[0] for c in cases if c.startswith("bushu-") for x in runs.get(c, []) if x) if plain else None
    print(f"| {name} | " + " | ".join(f(tps[c]) for c in cases)
          + f" | {f(ratio('bushu-draft', 'bushu'), 2)} | {f(ratio('llama-draft', 'llama'), 2)} | {f(ratio('bushu-lookup', 'bushu'), 2)}"
          + f" | {f(ratio('llama-lookup', 'llama'), 2)} | {f(ratio('bushu-draft', 'llama-draft'), 2)} | {acc('bushu-draft')} / {acc('llama-draft')}"
          + f" | {f(tau, 2)} | {'yes' if same else ('NO' if same is not None else '-')} |")

if "bushu-combined" in cases or "bushu-tree" in cases:
    print("\nbushu's combined (--draft-model --lookup) and tree (--draft-tree) proposers against its plain draft model:\n")
    print("| prompt | draft / plain | combined / plain | tree / plain | combined / draft | tree / draft | τ draft / combined / tree | tree steps taking a 2nd choice |")
    print("|---" * 8 + "|")
    for pf in prompts:
        name = os.path.basename(pf)[:-4]
        runs = {c: [read(name, c, r) for r in range(1, rounds + 1)] for c in cases}
        def ratio(a, b):
            return med([x["tps"] / y["tps"] for x, y in zip(runs.get(a, []), runs.get(b, [])) if x and y])
        taus = "/".join(f(med([x.get("tau") for x in runs.get(c, []) if x]), 2) for c in ("bushu-draft", "bushu-combined", "bushu-tree"))
        second = med([x.get("second") for x in runs.get("bushu-tree", []) if x])
        print(f"| {name} | {f(ratio('bushu-draft', 'bushu'), 2)} | {f(ratio('bushu-combined', 'bushu'), 2)} | {f(ratio('bushu-tree', 'bushu'), 2)}"
              + f" | {f(ratio('bushu-combined', 'bushu-draft'), 2)} | {f(ratio('bushu-tree', 'bushu-draft'), 2)} | {taus} | {f(second, 0)} |")
PY
