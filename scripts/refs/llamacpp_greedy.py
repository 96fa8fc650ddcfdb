#!/usr/bin/env python3
"""llama.cpp's greedy tokens on GGUF files written by `bushu quantize`, and on llama-quantize's files of the
same container type (tests/fixtures/quant/llamacpp-greedy.json, test tests/quant_llamacpp.rs).

usage: python3 scripts/refs/llamacpp_greedy.py OUT.json [--bushu target/release/bushu]
         [--llamacpp-bin /tmp/llamacpp/build/bin] [--shared /work/shared] [--n 48] [--work /tmp/bushu-lcpp]
needs: gguf, numpy (and torch/transformers only because make_gguf_refs.py is imported for its helpers);
a llama.cpp build (llama-tokenize, llama-server, llama-simple, llama-quantize); a release build of bushu.

For every entry of CASES:
  1. `bushu quantize` writes the file (BUSHU_SIMD=scalar, so GPTQ's calibration forward pass, the only
     SIMD-dependent step, gives the same bytes on every machine); its sha256 is recorded.
  2. llama-server (`samplers: ["top_k"], top_k: 1`, `n_probs: 5`, `ignore_eos`) generates N greedy tokens
     per prompt on that file: ids and top-5 logprobs are recorded (the top-2 gap marks near-ties).
     llama-simple (greedy sampler) runs on the same file and prompt; its text must equal llama-server's.
  3. llama-quantize writes the same container type from the same F16 file; its tensors are compared with
     those of `bushu quantize` run with `equivalent` (bushu's port of the same llama.cpp routine) and
     llama.cpp's greedy tokens on llama-quantize's file are recorded. When all tensors are identical the
     bushu-written equivalent stands in for llama-quantize's file in the test (its sha256 is recorded).
"""
import argparse, hashlib, json, os, re, shlex, subprocess, sys

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gguf_refs  # noqa: E402
from make_gguf_refs import llamacpp_greedy, tokenize  # noqa: E402

make_gguf_refs.PORT = 8093  # llama-server's port (8089 is make_gguf_refs.py's)

SOURCE = "models/shakespeare/shakespeare-expert-f16.gguf"
PROMPTS = [
    "ROMEO: What light is this",
    "First Citizen:\nWe are accounted poor citizens,",
    "KING HENRY:\nNow is the winter of",
]
GPTQ = ["--calib", "{shared}/testdata/shakespeare/train.txt", "--calib-seqs", "4", "--calib-ctx", "128"]
# bushu type and flags; llama-quantize's arguments for the same container; bushu's port of that routine.
CASES = [
    ("q8_0", ["--type", "q8_0"], ["Q8_0"], None),
    ("q4_0", ["--type", "q4_0"], ["Q4_0"], None),
    ("q4_k", ["--type", "q4_k", "--pure"], ["--pure", "Q4_K_S"], None),
    ("q6_k", ["--type", "q6_k"], ["Q6_K"], None),
    ("int4-asym-g32", ["--type", "int4-asym-g32"], ["--pure", "Q4_1"], ["--type", "q4_1", "--pure"]),
    ("gptq-int4-g128", ["--type", "gptq-int4-g128"] + GPTQ, ["--pure", "Q4_0"], ["--type", "q4_0", "--pure"]),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tensors(path):
    r = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in r.tensors}


def bushu_quantize(bushu, shared, src, out, args):
    args = [a.replace("{shared}", shared) for a in args]
    cmd = [bushu, "quantize", src, out, *args, "-t", "2", "-q"]
    subprocess.run(cmd, check=True, env={**os.environ, "BUSHU_SIMD": "scalar"})
    return cmd


def llama_simple(bin_dir, path, prompt, n):
    cmd = [os.path.join(bin_dir, "llama-simple"), "-m", path, "-n", str(n), prompt]
    # This build loses its last stdout lines when stdout is a pipe: run it under a pseudo-terminal.
    out = subprocess.run(["script", "-qc", " ".join(map(shlex.quote, cmd)) + " 2>/dev/null", "/dev/null"],
                         check=True, capture_output=True, text=True).stdout
    return out.replace("\r\n", "\n"), cmd


def greedy_runs(bin_dir, path, prompts, n):
    runs = []
    for p in prompts:
        toks, tops, server_cmd, body, build, resp = llamacpp_greedy(bin_dir, path, p["ids"], n, n_probs=5)
        # Near-ties: the top-1 minus top-2 logprob at every step.
        gaps = [round(t[0][1] - t[1][1], 5) for t in tops]
        runs.append({"tokens": toks, "gaps": gaps, "text": resp["content"]})
    return runs, server_cmd, body, build


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--bushu", default="target/release/bushu")
    ap.add_argument("--llamacpp-bin", default="/tmp/llamacpp/build/bin")
    ap.add_argument("--shared", default="/work/shared")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--work", default="/tmp/bushu-lcpp")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    src = os.path.join(a.shared, SOURCE)
    prompts = []
    for text in PROMPTS:
        ids, tok_cmd = tokenize(a.llamacpp_bin, src, text)
        prompts.append({"text": text, "ids": ids})
    out = {"about": __doc__.strip().splitlines()[0], "source": SOURCE, "n_predict": a.n, "prompts": prompts,
           "made_with": {"script": "python3 scripts/refs/llamacpp_greedy.py " + " ".join(sys.argv[1:]),
                         "tokenize": " ".join(tok_cmd), "bushu_env": "BUSHU_SIMD=scalar"},
           "cases": []}
    for name, bargs, lq_args, equiv in CASES:
        print(f"== {name}", file=sys.stderr)
        ours = os.path.join(a.work, f"bushu-{name}.gguf")
        qcmd = bushu_quantize(a.bushu, a.shared, src, ours, bargs)
        runs, server_cmd, body, build = greedy_runs(a.llamacpp_bin, ours, prompts, a.n)
        for p, r in zip(prompts, runs):
            text, simple_cmd = llama_simple(a.llamacpp_bin, ours, p["text"], a.n)
            # llama-simple prints the prompt's pieces (BOS as "<s>"), then the generated text; it stops at EOS.
            r["llama_simple_agrees"] = r["text"] in text or text.rstrip("\n").endswith(r["text"].rstrip("\n"))
            assert r["llama_simple_agrees"], (name, p["text"], text, r["text"])
        theirs = os.path.join(a.work, f"llama-quantize-{name}.gguf")
        lq_cmd = [os.path.join(a.llamacpp_bin, "llama-quantize"), *lq_args[:-1], src, theirs, lq_args[-1]]
        subprocess.run(lq_cmd, check=True, capture_output=True)
        eq_path, eq_cmd = ours, None
        if equiv is not None:
            eq_path = os.path.join(a.work, f"bushu-equiv-{name}.gguf")
            eq_cmd = bushu_quantize(a.bushu, a.shared, src, eq_path, equiv)
        t_ours, t_theirs = tensors(eq_path), tensors(theirs)
        differ = sorted(k for k in t_theirs if t_ours.get(k) != t_theirs[k])
        lq_runs, _, _, _ = greedy_runs(a.llamacpp_bin, theirs, prompts, a.n)
        out["cases"].append({
            "name": name, "bushu_args": bargs, "sha256": sha256(ours), "bytes": os.path.getsize(ours),
            "quantize_command": " ".join(qcmd), "llamacpp": runs,
            "llama_quantize": {
                "command": " ".join(lq_cmd), "bytes": os.path.getsize(theirs),
                "equivalent_bushu_args": equiv or bargs, "equivalent_sha256": sha256(eq_path),
                "tensors_differing_from_equivalent": differ, "llamacpp": lq_runs,
            },
        })
        out["made_with"].update({"server": " ".join(server_cmd), "completion_request": body, "llamacpp_build": build,
                                 "simple": " ".join(simple_cmd)})
    text = json.dumps(out, indent=1)
    # One line per list of numbers.
    text = re.sub(r"\[[-0-9.,e\s]+\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)
    with open(a.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
