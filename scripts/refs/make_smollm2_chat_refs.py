#!/usr/bin/env python3
"""SmolLM2 chat renderings and token ids from transformers' `apply_chat_template`, for bushu's tests.

usage: python3 scripts/refs/make_smollm2_chat_refs.py MODEL_DIR [--out tests/fixtures/smollm2/chat.json]
       [--template-out tests/fixtures/templates/smollm2-135m.jinja]

MODEL_DIR holds SmolLM2-135M-Instruct.Q4_1.gguf (`bushu pull`, i.e. ~/.cache/bushu/models). transformers
builds its tokenizer from the GGUF (`AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=...)`) and renders
each conversation with the template stored in the file (`tokenizer.chat_template`), `tokenize=True`
(HF adds no special tokens around the rendered text). Writes {"made_with", "conversations": [{"name",
"messages", "add_generation_prompt", "text", "ids"}]} and the template source itself.
"""
import argparse, json

import transformers
from transformers import AutoTokenizer

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

MULTI = [
    {"role": "system", "content": "You are a terse assistant. Use code when it helps."},
    {"role": "user", "content": "Write a Python function that adds two numbers."},
    {"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```\nThat's it: add(3, 4) == 7."},
    {"role": "user", "content": "Now say \"hello\" in Russian, Chinese and Japanese, with an emoji 👋."},
    {"role": "assistant", "content": "Привет! 你好！こんにちは！ 👋"},
    {"role": "user", "content": "  Numbers: 1234567, 3.14159, -42; spaces   and\n\nnewlines  "},
]

CONVERSATIONS = [
    ("multi_turn_system", MULTI, True),
    ("multi_turn_system_no_gen", MULTI[:5], False),
    ("default_system", MULTI[1:4], True),
    ("france", [{"role": "user", "content": "What is the capital of France?"}], True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--out", default="tests/fixtures/smollm2/chat.json")
    ap.add_argument("--template-out", default="tests/fixtures/templates/smollm2-135m.jinja")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model_dir, gguf_file=FILE)
    convs = []
    for name, messages, gen in CONVERSATIONS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        convs.append({"name": name, "messages": messages, "add_generation_prompt": gen, "text": text,
                      "ids": list(map(int, ids))})
    made = {
        "script": "python3 scripts/refs/make_smollm2_chat_refs.py MODEL_DIR",
        "tokenizer": f"transformers {transformers.__version__} AutoTokenizer from the GGUF ({FILE})",
        "render": "tokenizer.apply_chat_template(messages, tokenize=True/False, add_generation_prompt=...)",
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"made_with": made, "file": FILE, "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                   "conversations": convs}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(a.template_out, "w", encoding="utf-8") as f:
        f.write(tok.chat_template)
    print(f"{a.out}: {len(convs)} conversations; {a.template_out}: {len(tok.chat_template)} chars")


if __name__ == "__main__":
    main()
