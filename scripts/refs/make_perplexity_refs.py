#!/usr/bin/env python3
"""Perplexity references from llama.cpp's llama-perplexity.

usage: python3 scripts/refs/make_perplexity_refs.py OUT.json MODEL.gguf [MODEL.gguf ...]
         [--text /work/shared/testdata/shakespeare/val.txt] [--ctx 512] [--llamacpp-bin /tmp/llamacpp/build/bin]
Writes {"text_file", "n_ctx", "made_with", "results": [{"file", "ppl", "ppl_err", "n_chunks", "command"}]}.
llama-perplexity scores the second half of each n_ctx chunk (its default), with BOS per chunk if the vocab adds it.
"""
import argparse, json, os, re, shlex, subprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--text", default="/work/shared/testdata/shakespeare/val.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--llamacpp-bin", default="/tmp/llamacpp/build/bin")
    a = ap.parse_args()
    results = []
    for m in a.models:
        cmd = [os.path.join(a.llamacpp_bin, "llama-perplexity"), "-m", m, "-f", a.text, "-c", str(a.ctx), "-t", "2"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        log = p.stdout + p.stderr
        mm = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
        assert p.returncode == 0 and mm, log[-3000:]
        nch = re.search(r"calculating perplexity over (\d+) chunks", log)
        results.append({"file": os.path.basename(m), "ppl": float(mm.group(1)), "ppl_err": float(mm.group(2)),
                        "n_chunks": int(nch.group(1)) if nch else None,
                        "command": " ".join(shlex.quote(x) for x in cmd)})
        print(results[-1])
    doc = {"text_file": a.text, "n_ctx": a.ctx,
           "made_with": "python3 scripts/refs/make_perplexity_refs.py " + " ".join(
               shlex.quote(x) for x in [a.out] + a.models),
           "results": results}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
