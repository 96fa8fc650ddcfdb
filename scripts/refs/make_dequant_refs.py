#!/usr/bin/env python3
"""Dequantization reference values for every tensor of some GGUF files.

usage: python3 scripts/refs/make_dequant_refs.py OUT_DIR FILE.gguf [FILE.gguf ...]
needs: pip install gguf numpy

Writes OUT_DIR/<file stem>.json:
{"file": "<basename>", "gguf_version": "<gguf python package version>",
 "made_with": "...",
 "tensors": [{"name", "type" (ggml type name, e.g. "Q4_0"), "shape" (GGUF ne order, ne[0] = row length),
              "n_elements", "first64" (first 64 values of gguf.quants.dequantize flattened in memory order,
              each the exact float32 value as a JSON number), "last16" (the last 16 values, same),
              "sum" and "sum_sq" (float64 sums of all values / of their squares)}]}
"""
import json, os, sys
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def f32list(a):
    return [float(np.float32(x)) for x in a]  # float32 -> exact python float


def main():
    out_dir, files = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    for path in files:
        r = GGUFReader(path)
        tensors = []
        for t in r.tensors:
            v = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            n = int(np.prod([int(x) for x in t.shape]))
            assert v.size == n, (t.name, v.size, n)
            v64 = v.astype(np.float64)
            tensors.append({
                "name": t.name,
                "type": t.tensor_type.name,
                "shape": [int(x) for x in t.shape],
                "n_elements": n,
                "first64": f32list(v[:64]),
                "last16": f32list(v[-16:]),
                "sum": float(v64.sum()),
                "sum_sq": float((v64 * v64).sum()),
            })
        stem = os.path.splitext(os.path.basename(path))[0]
        doc = {"file": os.path.basename(path), "gguf_version": version("gguf"),
               "made_with": "python3 scripts/refs/make_dequant_refs.py tests/fixtures/dequant " + path,
               "tensors": tensors}
        with open(os.path.join(out_dir, stem + ".json"), "w") as f:
            json.dump(doc, f, indent=None, separators=(",", ":"))
        types = sorted({x["type"] for x in tensors})
        print(f"{stem}: {len(tensors)} tensors, types {types}")


if __name__ == "__main__":
    main()
