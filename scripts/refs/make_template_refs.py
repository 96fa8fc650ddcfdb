#!/usr/bin/env python3
"""Chat-template renderings with Hugging Face `apply_chat_template` semantics, for bushu's renderer tests.

usage: python3 scripts/refs/make_template_refs.py OUT.json TEMPLATE_DIR [--extra NAME=FILE.jinja ...]

Every `*.jinja` in TEMPLATE_DIR (and each --extra template) is rendered with transformers'
`render_jinja_template` (the function `apply_chat_template` calls: jinja2 sandbox, trim_blocks,
lstrip_blocks, loopcontrols, HF's `raise_exception` / `tojson` / `strftime_now` / `namespace`) for a few
conversations. Writes {"made_with", "cases": [{"template", "case", "bos_token", "eos_token", "messages",
"tools", "add_generation_prompt", "expected" | "error"}]}; "error" holds the exception message when the
template refuses the conversation (e.g. Gemma has no system role).
"""
import argparse, glob, json, os

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

# The special tokens each model's tokenizer_config.json declares (the values apply_chat_template passes).
SPECIALS = {
    "HuggingFaceTB-SmolLM3-3B": ("<|im_start|>", "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "smollm2-135m": ("<|im_start|>", "<|im_end|>"),
}

SYSTEM = {"role": "system", "content": "You are a concise assistant.\nAnswer in one sentence. "}
TURNS = [
    {"role": "user", "content": "  What is the capital of France?  "},
    {"role": "assistant", "content": "The capital of France is Paris.\n"},
    {"role": "user", "content": "And of Japan? Answer with \"quotes\", <tags> & émojis 🗾."},
]
# Keys sorted so that any JSON map order gives the same rendering.
TOOLS = json.loads(json.dumps([{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "days": {"type": "integer", "description": "Forecast days"},
            },
            "required": ["city"],
        },
    },
}], sort_keys=True))

CASES = [
    ("system_multi_turn", [SYSTEM] + TURNS, None, True),
    ("system_multi_turn_no_gen", [SYSTEM] + TURNS[:2], None, False),
    ("no_system", TURNS, None, True),
    ("single_user", TURNS[:1], None, True),
    ("tools", TURNS, TOOLS, True),
    ("thinking", [{"role": "system", "content": "Be brief. /no_think"}, TURNS[0],
                  {"role": "assistant", "content": "\n<think>France...</think>\n\nParis."}, TURNS[2]], None, True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("template_dir")
    ap.add_argument("--extra", action="append", default=[], help="NAME=FILE.jinja")
    a = ap.parse_args()
    templates = {}
    for path in sorted(glob.glob(os.path.join(a.template_dir, "*.jinja"))):
        templates[os.path.basename(path)[: -len(".jinja")]] = open(path, encoding="utf-8").read()
    for e in a.extra:
        name, path = e.split("=", 1)
        templates[name] = open(path, encoding="utf-8").read()
    cases = []
    for name, src in templates.items():
        bos, eos = SPECIALS[name]
        for case, messages, tools, gen in CASES:
            c = {"template": name, "case": case, "bos_token": bos, "eos_token": eos, "messages": messages,
                 "tools": tools, "add_generation_prompt": gen}
            try:
                out, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=src,
                                               add_generation_prompt=gen, bos_token=bos, eos_token=eos)
                c["expected"] = out[0]
            except jinja2.exceptions.TemplateError as err:
                c["error"] = str(err)
            cases.append(c)
    made = f"transformers {transformers.__version__} render_jinja_template, jinja2 {jinja2.__version__}"
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"made_with": made, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{a.out}: {len(cases)} cases, {sum('error' in c for c in cases)} refused")


if __name__ == "__main__":
    main()
