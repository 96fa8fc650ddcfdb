#!/usr/bin/env bash
# Regenerates tests/fixtures/quant/llama-quantize-mixtures.json: llama-quantize (no imatrix) on the two
# random-weight inputs of crates/bushu/tests/quant_mixtures.rs, for every llama.cpp file type bushu writes;
# per file type its general.file_type, per tensor of two or more dimensions its type and the first 16 hex
# digits of the SHA-256 of its bytes (read with gguf-py).
#   scripts/refs/quant_mixtures.sh            # LLAMA_QUANTIZE=/path/to/llama-quantize to use another build
# needs: cargo, python3 with gguf and numpy, a llama.cpp build.
set -euo pipefail
cd "$(dirname "$0")/../.."
Q=${LLAMA_QUANTIZE:-/tmp/llamacpp/build/bin/llama-quantize}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
BUSHU_MIXTURE_DIR=$D cargo test --release -q -p bushu --test quant_mixtures -- --ignored write_inputs >/dev/null
TYPES="Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K Q4_0 Q4_1 Q5_0 Q5_1 Q8_0"
for m in gqa tied; do
  for t in $TYPES; do
    "$Q" "$D/$m.gguf" "$D/$m-$t.gguf" "$t" 1 >"$D/$m-$t.log" 2>&1 || { cat "$D/$m-$t.log"; exit 1; }
  done
done
python3 - "$D" $TYPES >tests/fixtures/quant/llama-quantize-mixtures.json <<'PY'
import hashlib, json, sys
import numpy as np
import gguf
d, types = sys.argv[1], sys.argv[2:]
out = {"about": "llama-quantize (no imatrix) on the inputs of tests/quant_mixtures.rs; made by scripts/refs/quant_mixtures.sh",
       "models": {}}
for m in ["gqa", "tied"]:
    out["models"][m] = {}
    for t in types:
        r = gguf.GGUFReader(f"{d}/{m}-{t}.gguf")
        ft = int(r.fields["general.file_type"].parts[-1][0])
        tensors = {}
        for x in r.tensors:
            if len([n for n in x.shape]) < 2:
                continue
            h = hashlib.sha256(np.asarray(x.data).tobytes()).hexdigest()[:16]
            tensors[x.name] = f"{x.tensor_type.name} {h}"
        out["models"][m][t] = {"file_type": ft, "tensors": tensors}
json.dump(out, sys.stdout, indent=1)
print()
PY
echo "wrote tests/fixtures/quant/llama-quantize-mixtures.json" >&2
