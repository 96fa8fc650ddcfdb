#!/usr/bin/env python3
"""Tokenizer references from llama.cpp's llama-tokenize for a varied set of texts.

usage: python3 scripts/refs/make_tokenize_refs.py OUT.json MODEL.gguf [--llamacpp-bin /tmp/llamacpp/build/bin]
Writes {"file", "add_bos_token" (GGUF metadata), "bos_token_id", "made_with",
        "cases": [{"text", "ids"}]}: ids exactly as llama-tokenize prints them with its defaults
(--no-escape so the text is taken verbatim; special tokens parsed, BOS added only if the vocab asks for it).
llama-tokenize refuses an empty text, so there is no empty case.
"""
import argparse, json, os, shlex, subprocess

from gguf import GGUFReader

from make_gguf_refs import field

TEXTS = [
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say we've done it, isn't it? You'd've known.",
    "def add(a, b):\n    return a + b\n\nprint(add(3, 4))",
    "for (int i = 0; i < n; ++i) { sum += x[i] * 2.5e-3; }",
    "3.14159 1234567890 12,345.67 -42 0x1F 2024-01-31",
    "Numbers: 1 22 333 4444 55555 666666 7777777",
    "Grüße aus München! Ça va? Niño, façade, naïve.",
    "Привет, мир! Как дела?",
    "你好，世界。今天天气很好。",
    "こんにちは世界、カタカナとひらがな。",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️",
    "a  b   c    d\t\te\n\nf\n\n\ng   \n  h",
    "   leading and trailing spaces   ",
    "\n\n\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
    "C:\\path\\to\\file.txt and a literal \\n backslash-n",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("--llamacpp-bin", default="/tmp/llamacpp/build/bin")
    a = ap.parse_args()
    r = GGUFReader(a.model)
    exe = os.path.join(a.llamacpp_bin, "llama-tokenize")
    cases = []
    for text in TEXTS:
        cmd = [exe, "-m", a.model, "-p", text, "--ids", "--log-disable", "--no-escape"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
        ids = json.loads(out[-1]) if out else []
        cases.append({"text": text, "ids": ids})
    doc = {"file": os.path.basename(a.model),
           "add_bos_token": field(r, "tokenizer.ggml.add_bos_token"),
           "bos_token_id": field(r, "tokenizer.ggml.bos_token_id"),
           "made_with": {"script": "python3 scripts/refs/make_tokenize_refs.py " + " ".join(
               shlex.quote(x) for x in [a.out, a.model]),
               "per_text": f"{exe} -m MODEL -p TEXT --ids --log-disable --no-escape (other defaults: special tokens parsed)"},
           "cases": cases}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    for c in cases:
        print(len(c["ids"]), repr(c["text"])[:50], c["ids"][:12])


if __name__ == "__main__":
    main()
