#!/usr/bin/env python3
"""Per-tensor FNV-1a-64 hashes of GGUF files written by llama.cpp (llama-quantize, convert_hf_to_gguf.py), for bushu's bit-identity tests
(tests/fixtures/quant/llama-quantize-hashes.json).

  L=/tmp/llamacpp/build/bin/llama-quantize; F=../shared/models/shakespeare/shakespeare-expert-f16.gguf
  $L --pure $F /tmp/q/expert-Q4_K-pure.gguf Q4_K_S     # Q4_K where rows allow, Q5_0 fallback (rows of 288)
  $L        $F /tmp/q/expert-Q6_K.gguf Q6_K            # Q6_K where rows allow, Q8_0 fallback
  $L        $F /tmp/q/expert-Q4_0.gguf Q4_0            # output.weight -> Q6_K -> Q8_0 fallback
  python3 scripts/refs/quant_hashes.py q4_k:--pure:/tmp/q/expert-Q4_K-pure.gguf q6_k::/tmp/q/expert-Q6_K.gguf \
      q4_0::/tmp/q/expert-Q4_0.gguf > tests/fixtures/quant/llama-quantize-hashes.json

Files written by convert_hf_to_gguf.py straight from the Hugging Face directory (tests/fixtures/quant/convert-hf-hashes.json):

  cd /tmp/llamacpp/src && python3 convert_hf_to_gguf.py ../shared/models/shakespeare/shakespeare-expert-hf \
      --outtype q8_0 --outfile /tmp/q/cv-expert-q8_0.gguf      # (from the repo root: /work/shared/...)
  SOURCE=shakespeare-expert-hf python3 scripts/refs/quant_hashes.py q8_0::/tmp/q/cv-expert-q8_0.gguf \
      > tests/fixtures/quant/convert-hf-hashes.json
"""
import json, os, sys
import numpy as np
import gguf

def fnv1a64(b: bytes) -> str:
    h = 0xcbf29ce484222325
    a = np.frombuffer(b, np.uint8)
    for x in a.tolist():
        h ^= x
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    return f"{h:016x}"

out = {"about": __doc__.strip().splitlines()[0], "source": os.environ.get("SOURCE", "shakespeare-expert-f16.gguf"), "files": []}
for arg in sys.argv[1:]:
    ty, flag, path = arg.split(":", 2)
    r = gguf.GGUFReader(path)
    out["files"].append({
        "type": ty, "pure": flag == "--pure", "file": path.split("/")[-1],
        "tensors": {t.name: {"dtype": t.tensor_type.name, "fnv1a64": fnv1a64(np.asarray(t.data).tobytes())} for t in r.tensors},
    })
json.dump(out, sys.stdout, indent=1)
