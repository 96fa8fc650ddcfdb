#!/usr/bin/env python3
"""Gemma 3 references (tests/fixtures/gemma3/): llama.cpp and an exact float32 transformers model on
gemma-3-270m-q4_k_m.gguf, a tiny random Hugging Face Gemma3ForCausalLM directory, the chat template.

usage: python3 scripts/refs/make_gemma3_refs.py SUBCOMMAND [--model FILE.gguf] [--out-dir tests/fixtures/gemma3]
         [--llamacpp-bin /tmp/llamacpp/build/bin]
  tokenize     tokenize.json    llama-tokenize ids (BOS and specials as the vocab/tool default, plus --no-bos
                                and --no-parse-special variants) for ~28 texts
  greedy       greedy.json      llama-server greedy 64 tokens (top-5 logprobs) for 6 prompts, cross-checked
                                with llama-simple's text
  reference    reference.json   per prompt the make_gguf_refs.py schema: exact-model greedy, llama.cpp greedy,
                                the exact model teacher-forced along llama.cpp's path, error summaries; plus a
                                long (> 512 token) prompt where the sliding window matters
  perplexity   perplexity.json  llama-perplexity -c 512 --chunks N -t 2 (final and running per-chunk values)
  hf           hf/              tiny random Gemma3ForCausalLM directory + reference.json (make_hf_fixtures.py schema)
  template     chat.json        llama.cpp's renderings (built-in `gemma` template, and its fallback for this
                                file, which has no tokenizer.chat_template) next to transformers' rendering of
                                chat_template.jinja (Gemma 3's tokenizer_config.json template), with llama-tokenize ids
needs: pip install torch transformers gguf numpy safetensors tokenizers jinja2 ; a llama.cpp build.

The exact model: every tensor dequantized to float32 with gguf.quants.dequantize, loaded into transformers'
Gemma3ForCausalLM (float32, eager attention) with the config built from the GGUF metadata, and
* 1 subtracted from every RMSNorm weight (llama.cpp's converter stores Gemma's (1 + w) scale, HF stores w),
* Q/K rows NOT permuted (llama.cpp runs Gemma 3 with NEOX RoPE, i.e. HF's rotate_half pairing),
* layer i global iff i % 6 == 5 (llama.cpp: is_swa = il % 6 < 5; HF: (i + 1) % 6 == 0), local RoPE base 10000
  (the file has no gemma3.rope.freq_base_swa; llama.cpp's default), global base gemma3.rope.freq_base (1e6).
`reference --check-conventions` also runs the rejected variants (norms +1 kept, Q/K permuted as for Llama,
one RoPE base everywhere, no window) and records how far each is from llama.cpp.
"""
import argparse, hashlib, json, math, os, re, shlex, signal, subprocess, sys, time, urllib.request
from importlib.metadata import version

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_MODEL = "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PORT = 8097  # llama-server (make_gguf_refs.py uses 8089, llamacpp_greedy.py 8093)
LCPP_SOURCE = "llama-cpp-python 0.3.36 sdist vendor/llama.cpp (built in /tmp/llamacpp)"


def r6(x):
    return float(f"{float(x):.6g}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def q(cmd):
    return " ".join(shlex.quote(str(x)) for x in cmd)


def compact(doc):
    """indent=1 JSON with every list of numbers on one line (as llamacpp_greedy.py writes)."""
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return re.sub(r"\[[-0-9.,e\s]+\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text) + "\n"


def write(path, doc, compact_lists=True):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact_lists:
            f.write(compact(doc))
        else:
            json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def llamacpp_version(bin_dir):
    p = subprocess.run([os.path.join(bin_dir, "llama-cli"), "--version"], capture_output=True, text=True)
    lines = [l.strip() for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    keep = [l for l in lines if l.startswith("version") or l.startswith("built with")]
    return {"llama_cli_version": keep or lines[-2:], "source": LCPP_SOURCE}


# ----------------------------------------------------------------------------------------------- llama.cpp

def tokenize(bin_dir, model, text, extra=()):
    cmd = [os.path.join(bin_dir, "llama-tokenize"), "-m", model, "-p", text, "--ids", "--log-disable",
           "--no-escape", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    return (json.loads(out[-1]) if out else []), cmd


def wait_port(port, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("llama-server exited (see /tmp/llama-server-gemma3.log)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("llama-server did not come up")


def post(route, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=1800) as resp:
        return json.loads(resp.read())


class Server:
    """llama-server on 127.0.0.1:PORT for the duration of a with-block."""

    def __init__(self, bin_dir, model, ctx=1024, extra=()):
        self.cmd = [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(PORT),
                    "-t", "2", "-c", str(ctx), "-np", "1", "--no-webui", *extra]

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=open("/tmp/llama-server-gemma3.log", "w"))
        wait_port(PORT, self.proc)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/props", timeout=5) as rr:
                self.props = json.loads(rr.read())
        except Exception:
            self.props = {}
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def completion_body(prompt_ids, n, n_probs):
    return {"prompt": prompt_ids, "n_predict": n, "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0,
            "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
            "n_probs": n_probs, "post_sampling_probs": False, "cache_prompt": False, "ignore_eos": True,
            "samplers": ["top_k"], "return_tokens": True}


def server_greedy(prompt_ids, n, n_probs):
    body = completion_body(prompt_ids, n, n_probs)
    resp = post("/completion", body)
    probs = resp["completion_probabilities"]
    toks = [int(p["id"]) for p in probs]
    if resp.get("tokens"):
        assert [int(t) for t in resp["tokens"]] == toks, (resp["tokens"], toks)
    tops = [[[int(x["id"]), float(x["logprob"])] for x in p["top_logprobs"]] for p in probs]
    for p, t in zip(probs, tops):
        assert int(p["id"]) == t[0][0], "greedy token is not llama.cpp's top-1"
    return toks, tops, body, resp


def llama_simple(bin_dir, model, prompt, n):
    cmd = [os.path.join(bin_dir, "llama-simple"), "-m", model, "-n", str(n), prompt]
    # This build loses its last stdout lines when stdout is a pipe: run it under a pseudo-terminal.
    out = subprocess.run(["script", "-qc", q(cmd) + " 2>/dev/null", "/dev/null"],
                         check=True, capture_output=True, text=True).stdout
    return out.replace("\r\n", "\n"), cmd


# ----------------------------------------------------------------------------------------------- tokenize

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello  world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say we've done it, isn't it? You'd've known.",
    "def add(a, b):\n    return a + b\n\n\nprint(add(3, 4))\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    for x in &v {\n        println!(\"{x}\");\n    }\n}",
    "\tif (x) {\n\t\treturn;\n\t}",
    "3.14159 1234567890 12,345.67 -42 0x1F 2024-01-31",
    "Numbers: 1 22 333 4444 55555 666666 7777777 88888888",
    "Grüße aus München! Ça va? Niño, façade, naïve.",
    "Привет, мир! Как дела?",
    "你好，世界。今天天气很好。",
    "こんにちは世界、カタカナとひらがな。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 ❤️ 🏳️‍🌈",
    "a  b   c    d\t\te\n\nf\n\n\ng   \n  h",
    "   leading and trailing spaces   ",
    "\n\n\n",
    "          ten spaces then text",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal bos<eos>",
    "Byte fallback: \u0001\u0002 \u2028 \U0001D4B3 \U000E0041 \uFFFD \u0B95\u0BCD",
    "C:\\path\\to\\file.txt and a literal \\n backslash-n",
    "<unused0> <mask> [multimodal] <start_of_image>",
    "ﬁ ligature, Å (A + ring) vs Å, ＦＵＬＬ width",
    "x" * 40 + " " + "ab" * 20,
]


def cmd_tokenize(a):
    from gguf import GGUFReader
    from make_gguf_refs import field
    r = GGUFReader(a.model)
    toks = field(r, "tokenizer.ggml.tokens")
    cases = []
    for text in TEXTS:
        ids, cmd = tokenize(a.llamacpp_bin, a.model, text)
        no_bos, cmd_nb = tokenize(a.llamacpp_bin, a.model, text, ["--no-bos"])
        c = {"text": text, "ids": ids, "ids_no_bos": no_bos}
        if "<" in text or "[" in text:
            c["ids_no_parse_special"], cmd_np = tokenize(a.llamacpp_bin, a.model, text, ["--no-parse-special"])
        c["pieces"] = [toks[i] for i in ids]
        cases.append(c)
        print(len(ids), repr(text)[:50], ids[:12], file=sys.stderr)
    doc = {
        "file": os.path.basename(a.model), "sha256": MODEL_SHA256,
        "add_bos_token": field(r, "tokenizer.ggml.add_bos_token"),
        "add_space_prefix": field(r, "tokenizer.ggml.add_space_prefix"),
        "bos_token_id": field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(r, "tokenizer.ggml.eos_token_id"),
        "about": "ids: llama-tokenize defaults (BOS added because the vocab asks for it; special tokens such as "
                 "<start_of_turn> parsed: the tool's default, --parse-special is implied). ids_no_bos: --no-bos. "
                 "ids_no_parse_special (texts with '<' or '['): --no-parse-special (BOS still added). pieces: the "
                 "vocab strings of ids (informational).",
        "made_with": {"script": "python3 scripts/refs/make_gemma3_refs.py tokenize " + q(sys.argv[2:]),
                      "per_text": f"{a.llamacpp_bin}/llama-tokenize -m MODEL -p TEXT --ids --log-disable --no-escape "
                                  "[--no-bos | --no-parse-special]",
                      "llamacpp": llamacpp_version(a.llamacpp_bin)},
        "cases": cases,
    }
    write(os.path.join(a.out_dir, "tokenize.json"), doc)


# ----------------------------------------------------------------------------------------------- greedy

GREEDY_PROMPTS = [
    ("prose", "The history of the Roman Empire"),
    ("story", "Once upon a time, there was a little"),
    ("python", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("rust", "// Sum the squares of a slice.\nfn sum_squares(xs: &[i64]) -> i64 {\n"),
    ("chat", "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"),
    ("chat_list", "<start_of_turn>user\nList three primary colors, one per line.<end_of_turn>\n"
                  "<start_of_turn>model\n"),
]


def cmd_greedy(a):
    n = a.n
    prompts = []
    for name, text in GREEDY_PROMPTS:
        ids, tok_cmd = tokenize(a.llamacpp_bin, a.model, text)
        prompts.append({"name": name, "text": text, "ids": ids})
    with Server(a.llamacpp_bin, a.model, ctx=512) as srv:
        for p in prompts:
            toks, tops, body, resp = server_greedy(p["ids"], n, 5)
            p["tokens"] = toks
            p["top5"] = [[[i, r6(lp)] for i, lp in t[:5]] for t in tops]
            p["gaps"] = [r6(t[0][1] - t[1][1]) for t in tops]
            p["text_out"] = resp["content"]
            print(p["name"], toks[:16], repr(resp["content"][:60]), file=sys.stderr)
        build = srv.props.get("build_info")
        server_cmd = srv.cmd
    for p in prompts:
        # llama-simple: greedy sampler, stops at EOG; prints the prompt pieces then the generated text.
        out, simple_cmd = llama_simple(a.llamacpp_bin, a.model, p["text"], n)
        gen = p["text_out"]
        agrees = gen in out
        if not agrees:  # it stops at an end-of-generation token (ignore_eos is server-only)
            cut = gen.split("<end_of_turn>")[0].split("<eos>")[0]
            agrees = bool(cut) and cut in out
        p["llama_simple_agrees"] = agrees
        if not agrees:
            print(f"WARNING {p['name']}: llama-simple text differs:\n{out!r}\nvs server\n{gen!r}", file=sys.stderr)
    doc = {
        "file": os.path.basename(a.model), "sha256": MODEL_SHA256, "n_predict": n,
        "about": "llama.cpp greedy continuations (EOS/<end_of_turn> ignored). tokens: generated ids; top5: "
                 "[[id, logprob] x5] per step (log_softmax of the raw logits); gaps: top-1 minus top-2 logprob "
                 "(near-ties < 0.05 may flip in any other engine); ids: prompt ids from llama-tokenize (BOS added, "
                 "specials parsed); llama_simple_agrees: llama-simple (greedy sampler, stops at EOG) printed the "
                 "same text. text_out: the server's detokenized content.",
        "made_with": {"script": "python3 scripts/refs/make_gemma3_refs.py greedy " + q(sys.argv[2:]),
                      "tokenize": f"{a.llamacpp_bin}/llama-tokenize -m MODEL -p TEXT --ids --log-disable --no-escape",
                      "server": q(server_cmd), "server_fa_off": q(fa_off_cmd) if fa_off_cmd else None,
            "completion_request": dict(completion_body([], n, 5), prompt="IDS"),
                      "simple": f"script -qc \"{a.llamacpp_bin}/llama-simple -m MODEL -n {n} TEXT\"",
                      "llamacpp_build": build, "llamacpp": llamacpp_version(a.llamacpp_bin)},
        "prompts": prompts,
    }
    write(os.path.join(a.out_dir, "greedy.json"), doc)


# ----------------------------------------------------------------------------------------------- exact model

def gguf_meta(r):
    from make_gguf_refs import field
    g = lambda k, d=None: field(r, f"gemma3.{k}", d)
    return dict(
        n_layer=g("block_count"), dim=g("embedding_length"), ffn=g("feed_forward_length"),
        n_head=g("attention.head_count"), n_kv=g("attention.head_count_kv"), head_dim=g("attention.key_length"),
        eps=float(g("attention.layer_norm_rms_epsilon")), window=g("attention.sliding_window"),
        rope_global=float(g("rope.freq_base", 1e6)), rope_local=float(g("rope.freq_base_swa", 10000.0)),
        swa_pattern=g("attention.sliding_window_pattern", 6), ctx=g("context_length"),
        softcap=g("final_logit_softcapping"), bos=field(r, "tokenizer.ggml.bos_token_id"),
        eos=field(r, "tokenizer.ggml.eos_token_id"), pad=field(r, "tokenizer.ggml.padding_token_id"))


def load_weights(path, cache):
    if cache and os.path.exists(cache):
        d = np.load(cache)
        return {k: d[k] for k in d.files}
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(path)
    W = {}
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).astype(np.float32)
        W[t.name] = x.reshape([int(s) for s in reversed(t.shape)]) if len(t.shape) > 1 else x.reshape(-1)
    if cache:
        np.savez(cache, **W)
    return W


def permute_llama(w, n_head):
    """HF rotate_half layout -> llama.cpp adjacent-pair layout (convert_hf_to_gguf's LlamaModel.permute);
    used only for the rejected 'Q/K permuted' variant."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def unpermute_llama(w, n_head):
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def build_exact(meta, W, variant="exact"):
    """variant: exact | norm_plus1_kept | qk_unpermuted | single_rope_base | no_window"""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    n = meta["n_layer"]
    pat = meta["swa_pattern"]
    layer_types = ["sliding_attention" if i % pat < pat - 1 else "full_attention" for i in range(n)]
    local = meta["rope_local"] if variant != "single_rope_base" else meta["rope_global"]
    cfg = Gemma3TextConfig(
        vocab_size=W["token_embd.weight"].shape[0], hidden_size=meta["dim"], intermediate_size=meta["ffn"],
        num_hidden_layers=n, num_attention_heads=meta["n_head"], num_key_value_heads=meta["n_kv"],
        head_dim=meta["head_dim"], hidden_activation="gelu_pytorch_tanh", max_position_embeddings=meta["ctx"],
        rms_norm_eps=meta["eps"], query_pre_attn_scalar=meta["head_dim"],  # llama.cpp: 1/sqrt(n_embd_head_k)
        sliding_window=meta["window"] if variant != "no_window" else meta["ctx"], layer_types=layer_types,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": meta["rope_global"]},
                         "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        final_logit_softcapping=meta["softcap"], attn_logit_softcapping=None, tie_word_embeddings=True,
        bos_token_id=meta["bos"], eos_token_id=meta["eos"], pad_token_id=meta["pad"],
        attn_implementation="eager")
    model = Gemma3ForCausalLM(cfg).to(torch.float32)
    shift = 0.0 if variant == "norm_plus1_kept" else 1.0

    def norm(name):
        return W[name] - shift

    def qk(name, heads):
        return unpermute_llama(W[name], heads) if variant == "qk_unpermuted" else W[name]

    sd = {"model.embed_tokens.weight": W["token_embd.weight"], "model.norm.weight": norm("output_norm.weight")}
    for i in range(n):
        p, h = f"blk.{i}.", f"model.layers.{i}."
        sd[h + "self_attn.q_proj.weight"] = qk(p + "attn_q.weight", meta["n_head"])
        sd[h + "self_attn.k_proj.weight"] = qk(p + "attn_k.weight", meta["n_kv"])
        sd[h + "self_attn.v_proj.weight"] = W[p + "attn_v.weight"]
        sd[h + "self_attn.o_proj.weight"] = W[p + "attn_output.weight"]
        sd[h + "self_attn.q_norm.weight"] = norm(p + "attn_q_norm.weight")
        sd[h + "self_attn.k_norm.weight"] = norm(p + "attn_k_norm.weight")
        sd[h + "mlp.gate_proj.weight"] = W[p + "ffn_gate.weight"]
        sd[h + "mlp.up_proj.weight"] = W[p + "ffn_up.weight"]
        sd[h + "mlp.down_proj.weight"] = W[p + "ffn_down.weight"]
        sd[h + "input_layernorm.weight"] = norm(p + "attn_norm.weight")
        sd[h + "post_attention_layernorm.weight"] = norm(p + "post_attention_norm.weight")
        sd[h + "pre_feedforward_layernorm.weight"] = norm(p + "ffn_norm.weight")
        sd[h + "post_feedforward_layernorm.weight"] = norm(p + "post_ffw_norm.weight")
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert abs(float(model.model.embed_tokens.embed_scale) - math.sqrt(meta["dim"])) < 1e-4
    return model.eval(), cfg


def top_k_logprobs(logits, k=5):
    import torch
    lp = torch.log_softmax(logits.double(), dim=-1)
    v, i = torch.topk(lp, k)
    return [[int(a), r6(b)] for a, b in zip(i.tolist(), v.tolist())], lp


def full_logprobs(model, ids):
    """log_softmax (float64) of the raw logits at every position, one full forward pass without cache."""
    import torch
    with torch.no_grad():
        lg = model(torch.tensor([list(ids)]), use_cache=False).logits[0]
    return torch.log_softmax(lg.double(), dim=-1)


def exact_greedy(model, prompt, n):
    """Greedy with the KV cache (fast), then one full recomputation along the path: the reported top-5
    come from that pass and every greedy token must be its argmax (the cache path is only a proposer)."""
    import torch
    with torch.no_grad():
        out = model(torch.tensor([list(prompt)]), use_cache=True, logits_to_keep=1)
        past, toks = out.past_key_values, []
        t = int(torch.argmax(out.logits[0, -1]))
        for s in range(n):
            toks.append(t)
            if s == n - 1:
                break
            out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            t = int(torch.argmax(out.logits[0, -1]))
    # verify by full recomputation along the path; if the cached path was not the full-pass argmax at some
    # step (a near-tie resolved differently), redo from there by full recomputation
    while True:
        lps = full_logprobs(model, list(prompt) + toks[:-1])[len(prompt) - 1:]
        am = [int(torch.argmax(lps[s])) for s in range(n)]
        bad = next((s for s in range(n) if am[s] != toks[s]), None)
        if bad is None:
            break
        print(f"  cache/full argmax mismatch at step {bad}: recomputing", file=sys.stderr)
        toks = toks[:bad] + [am[bad]]
        while len(toks) < n:
            lp = full_logprobs(model, list(prompt) + toks)[-1]
            toks.append(int(torch.argmax(lp)))
    top5 = [top_k_logprobs_from_lp(lps[s]) for s in range(n)]
    return toks, top5, lps


def top_k_logprobs_from_lp(lp, k=5):
    import torch
    v, i = torch.topk(lp, k)
    return [[int(a), r6(b)] for a, b in zip(i.tolist(), v.tolist())]


def teacher_forced(model, prompt, toks):
    lps = full_logprobs(model, list(prompt) + list(toks[:-1]))[len(prompt) - 1:]
    return [top_k_logprobs_from_lp(lps[s]) for s in range(len(toks))], lps


def summarize(exact_toks, exact_top5, exact_lps, lc_toks, lc_tops_full):
    from make_gguf_refs import summarize as s
    return s(exact_toks, exact_top5, exact_lps, lc_toks, lc_tops_full)


def tf_err(lc_tops, lps, k=5):
    """max / mean |llama.cpp logprob - exact logprob| over llama.cpp's top-k ids, along llama.cpp's path."""
    d = [abs(l - float(lps[s][i])) for s, t in enumerate(lc_tops) for i, l in t[:k]]
    return r6(max(d)), r6(sum(d) / len(d))


REF_PROMPTS = [
    ("story", "Once upon a time, there was a little"),
    ("python", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("chat", "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"),
]


def long_prompt_text(text_file, n_tokens, bin_dir, model):
    """The start of val.txt cut to about n_tokens tokens (whole lines)."""
    lines = open(text_file, encoding="utf-8").read().splitlines(keepends=True)
    text = ""
    for line in lines:
        if len(tokenize(bin_dir, model, text + line)[0]) > n_tokens:
            break
        text += line
    return text


def cmd_reference(a):
    import torch
    import transformers
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    from gguf import GGUFReader
    t0 = time.time()
    r = GGUFReader(a.model)
    meta = gguf_meta(r)
    W = load_weights(a.model, a.cache)
    model, cfg = build_exact(meta, W)
    print(f"exact model ready ({time.time() - t0:.0f}s)", file=sys.stderr)
    prompts = [(n, t, a.n) for n, t in REF_PROMPTS]
    if a.long_tokens:
        prompts.append(("long_val_txt", long_prompt_text(a.text, a.long_tokens, a.llamacpp_bin, a.model), a.n_long))
    cases = []
    for name, text, n in prompts:
        ids, tok_cmd = tokenize(a.llamacpp_bin, a.model, text)
        cases.append({"name": name, "prompt": text, "prompt_ids": ids, "n": n})
    ctx = max(len(c["prompt_ids"]) + c["n"] for c in cases) + 8
    ctx = max(512, 256 * math.ceil(ctx / 256))
    with Server(a.llamacpp_bin, a.model, ctx=ctx) as srv:
        for c in cases:
            c["_lc"] = server_greedy(c["prompt_ids"], c["n"], 20)
        build = srv.props.get("build_info")
        server_cmd = srv.cmd
    fa_off_cmd = None
    if a.fa_off_too:  # the same with flash attention off (the default, auto, resolves to on for CPU)
        with Server(a.llamacpp_bin, a.model, ctx=ctx, extra=["-fa", "off"]) as srv:
            for c in cases:
                c["_lc_fa_off"] = server_greedy(c["prompt_ids"], c["n"], 20)
            fa_off_cmd = srv.cmd
    out_cases = []
    for c in cases:
        t1 = time.time()
        ids, n = c["prompt_ids"], c["n"]
        lc_toks, lc_tops, body, resp = c.pop("_lc")
        ex_toks, ex_top5, ex_lps = exact_greedy(model, ids, n)
        tf, tf_lps = teacher_forced(model, ids, lc_toks)
        doc = {"name": c["name"], "prompt": c["prompt"], "prompt_ids": ids,
               "exact": {"tokens": ex_toks, "top5": ex_top5},
               "llamacpp": {"tokens": lc_toks, "top5": [[[i, r6(lp)] for i, lp in t[:5]] for t in lc_tops]},
               "exact_on_llamacpp_path": {"top5": tf}}
        doc.update(summarize(ex_toks, ex_top5, ex_lps, lc_toks, lc_tops))
        mx, mean = tf_err(lc_tops, tf_lps)
        doc["llamacpp_vs_exact_teacher_forced_top5_max_abs_err"] = mx
        doc["llamacpp_vs_exact_teacher_forced_top5_mean_abs_err"] = mean
        if "_lc_fa_off" in c:
            f_toks, f_tops, _, _ = c.pop("_lc_fa_off")
            f_tf, f_lps = teacher_forced(model, ids, f_toks)
            fs = summarize(ex_toks, ex_top5, ex_lps, f_toks, f_tops)
            fmx, fmean = tf_err(f_tops, f_lps)
            doc["llamacpp_fa_off"] = {
                "tokens": f_toks, "top5": [[[i, r6(lp)] for i, lp in t[:5]] for t in f_tops],
                "agree_len": fs["llamacpp_agree_len"], "top5_max_abs_err": fs["llamacpp_top5_max_abs_err"],
                "top5_mean_abs_err": fs["llamacpp_top5_mean_abs_err"],
                "teacher_forced_top5_max_abs_err": fmx, "teacher_forced_top5_mean_abs_err": fmean}
            print(f"  fa off: agree {fs['llamacpp_agree_len']} err {fs['llamacpp_top5_max_abs_err']}/"
                  f"{fs['llamacpp_top5_mean_abs_err']} tf {fmx}/{fmean}", file=sys.stderr)
        doc["exact_text"] = decode(r, ex_toks)
        doc["llamacpp_text"] = resp["content"]
        if a.check_conventions:
            doc["convention_checks"] = convention_checks(meta, W, ids, lc_toks, lc_tops, a.variants)
        out_cases.append(doc)
        print(f"{c['name']} ({len(ids)} prompt tokens): agree {doc['llamacpp_agree_len']}/{n} top5 err max "
              f"{doc['llamacpp_top5_max_abs_err']} mean {doc['llamacpp_top5_mean_abs_err']} tie "
              f"{doc['first_near_tie_step']} tf err {mx}/{mean} ({time.time() - t1:.0f}s)", file=sys.stderr)
        print("  exact   ", ex_toks[:20], repr(doc["exact_text"][:80]), file=sys.stderr)
        print("  llamacpp", lc_toks[:20], repr(resp["content"][:80]), file=sys.stderr)
    doc = {
        "file": os.path.basename(a.model), "sha256": MODEL_SHA256,
        "about": "Per case, the schema of tests/fixtures/gguf/*.json (scripts/refs/README.md): exact = the GGUF "
                 "dequantized (gguf-py) and run in float32 by transformers Gemma3ForCausalLM; llamacpp = "
                 "llama-server greedy with n_probs 20 (top-5 kept); exact_on_llamacpp_path = exact model "
                 "teacher-forced on llama.cpp's tokens. The long_val_txt case (prompt > sliding window 512) "
                 "exercises the local layers' window.",
        "conventions": {
            "norms": "GGUF RMSNorm weights (attn_norm, post_attention_norm, ffn_norm, post_ffw_norm, attn_q_norm, "
                     "attn_k_norm, output_norm) hold Gemma's full scale (1 + w): y = x / rms(x) * weight_gguf; "
                     "HF gets weight_gguf - 1",
            "qk_rows": "not permuted: GGUF attn_q/attn_k rows are in HF order; llama.cpp applies NEOX RoPE "
                       "(pairs (i, i + head_dim/2), HF rotate_half)",
            "layer_types": cfg.layer_types,
            "global_layers": [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"],
            "rope_theta_global": meta["rope_global"], "rope_theta_local": meta["rope_local"],
            "rope_local_source": "no gemma3.rope.freq_base_swa in the file: llama.cpp's default "
                                 "rope_freq_base_train_swa = 10000 (src/llama-hparams.h)",
            "sliding_window": meta["window"],
            "window_semantics": "position p attends to keys p-511..p (512 keys incl. itself): llama.cpp masks "
                                "when p - p_k >= n_swa (llama_hparams::is_masked_swa, LLAMA_SWA_TYPE_STANDARD); "
                                "transformers keeps kv_idx > q_idx - sliding_window (masking_utils."
                                "sliding_window_overlay)",
            "embedding_scale": f"token embeddings * sqrt({meta['dim']}) = {math.sqrt(meta['dim'])} (float32), "
                               "before layer 0; the output projection (tied token_embd) is not scaled",
            "query_scale": f"1/sqrt({meta['head_dim']}) (query_pre_attn_scalar = head_dim)",
            "activation": "GeGLU, gelu tanh approximation (gelu_pytorch_tanh)",
            "final_logit_softcapping": meta["softcap"], "rms_norm_eps": meta["eps"],
        },
        "cases": out_cases,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": version("gguf"),
                     "llamacpp_build": build, "llamacpp": llamacpp_version(a.llamacpp_bin)},
        "made_with": {
            "script": "python3 scripts/refs/make_gemma3_refs.py reference " + q(sys.argv[2:]),
            "tokenize": f"{a.llamacpp_bin}/llama-tokenize -m MODEL -p TEXT --ids --log-disable --no-escape",
            "server": q(server_cmd), "server_fa_off": q(fa_off_cmd) if fa_off_cmd else None,
            "completion_request": dict(completion_body([], a.n, 20), prompt="IDS"),
            "exact": "gguf.quants.dequantize -> float32 transformers Gemma3ForCausalLM (eager attention, norms - 1, "
                     "Q/K as stored); greedy proposed with the KV cache and verified/re-scored by one full "
                     "recomputation (top-5 of log_softmax(raw logits) in float64)",
        },
    }
    write(os.path.join(a.out_dir, "reference.json"), doc, compact_lists=False)


def decode(r, ids):
    from make_gguf_refs import field
    toks = field(r, "tokenizer.ggml.tokens")
    return "".join(toks[i] for i in ids).replace("\u2581", " ")


def convention_checks(meta, W, prompt, lc_toks, lc_tops, variants):
    """Teacher-forced top-5 error against llama.cpp (along its path) for the exact model and rejected variants."""
    import torch
    res = {}
    for v in variants:
        m, _ = build_exact(meta, W, v)
        tf, lps = teacher_forced(m, prompt, lc_toks)
        mx, mean = tf_err(lc_tops, lps)
        agree = sum(1 for s in range(len(lc_toks)) if int(torch.argmax(lps[s])) == lc_toks[s])
        res[v] = {"tf_top5_max_abs_err": mx, "tf_top5_mean_abs_err": mean, "argmax_matches_llamacpp": agree}
        print(f"    variant {v}: err {mx}/{mean}, argmax == llama.cpp at {agree}/{len(lc_toks)} steps", file=sys.stderr)
        del m
    return res


# ----------------------------------------------------------------------------------------------- perplexity

def cmd_perplexity(a):
    cmd = [os.path.join(a.llamacpp_bin, "llama-perplexity"), "-m", a.model, "-f", a.text, "-c", "512", "-t", "2",
           "--chunks", str(a.chunks)]
    t0 = time.time()
    # Under a pseudo-terminal: this build loses its last buffered stdout lines when stdout is a pipe/file.
    p = subprocess.run(["script", "-qc", q(cmd), "/dev/null"], capture_output=True, text=True)
    log = (p.stdout + p.stderr).replace("\r\n", "\n")
    secs = time.time() - t0
    mm = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    assert p.returncode == 0 and mm, log[-3000:]
    running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", log)]
    nch = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", log)
    doc = {
        "file": os.path.basename(a.model), "sha256": MODEL_SHA256, "text_file": "../shared/testdata/shakespeare/val.txt",
        "n_ctx": 512, "n_chunks": int(nch.group(1)) if nch else a.chunks,
        "batch_size": int(nch.group(3)) if nch else None, "n_seq": int(nch.group(4)) if nch else None,
        "ppl": float(mm.group(1)), "ppl_err": float(mm.group(2)),
        "running_ppl": running,
        "about": "llama-perplexity's default scoring: each 512-token chunk starts with BOS (the vocab adds it), the "
                 "first half is context, the second half (tokens 256..511) is scored; running_ppl[i] is the "
                 "perplexity over chunks 1..i+1 as printed ([1]x,[2]y,...); ppl is the 'Final estimate'.",
        "seconds": round(secs, 1),
        "command": q(cmd).replace(a.text, "../shared/testdata/shakespeare/val.txt"),
        "made_with": {"script": "python3 scripts/refs/make_gemma3_refs.py perplexity " + q(sys.argv[2:]),
                      "run_as": f"script -qc \"{q(cmd)}\" /dev/null", "llamacpp": llamacpp_version(a.llamacpp_bin)},
    }
    print(doc["ppl"], doc["ppl_err"], running, f"{secs:.0f}s", file=sys.stderr)
    write(os.path.join(a.out_dir, "perplexity.json"), doc)


# ----------------------------------------------------------------------------------------------- tiny HF dir

HF_PROMPT = [2, 57, 199, 40, 3, 145, 77, 248, 123, 71, 250, 95]  # starts with BOS (2); fed as is
HF_N_GEN = 16
HF_SEED = 3011
HF_VOCAB = 256
HF_POST_W = 8.0  # stored post-norm weights w (scale 1 + w ~ 9): see cmd_hf
HF_STD = 0.3


def make_tiny_tokenizer(d, train_text):
    """A Gemma-like SentencePiece-style BPE (tokenizers library): '▁' for spaces, no prefix space, byte fallback
    off, <pad>=0 <eos>=1 <bos>=2 <unk>=3 <start_of_turn>=4 <end_of_turn>=5, vocab HF_VOCAB."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tk = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " ")])
    trainer = BpeTrainer(vocab_size=HF_VOCAB, special_tokens=specials, show_progress=False)
    tk.train_from_iterator([train_text], trainer=trainer)
    assert tk.get_vocab_size() <= HF_VOCAB, tk.get_vocab_size()
    for i, s in enumerate(specials):
        assert tk.token_to_id(s) == i
    from tokenizers.processors import TemplateProcessing
    tk.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    tk.save(os.path.join(d, "tokenizer.json"))
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
           "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 512,
           "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return tk


def cmd_hf(a):
    import shutil
    import torch
    import transformers
    from transformers import GenerationConfig, Gemma3ForCausalLM, Gemma3TextConfig
    torch.set_grad_enabled(False)
    d = os.path.join(a.out_dir, "hf")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    torch.manual_seed(HF_SEED)
    cfg = Gemma3TextConfig(
        vocab_size=HF_VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512,
        rms_norm_eps=1e-6, query_pre_attn_scalar=32, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model = Gemma3ForCausalLM(cfg).to(torch.float32)
    g = torch.Generator().manual_seed(HF_SEED)
    for name, p in sorted(model.named_parameters()):
        if "post_" in name:  # post-attention / post-feed-forward norms: scale (1 + w) ~ 9, so the layers
            # outweigh the scaled embedding of the current token (else the tied model just repeats its input)
            p.copy_(HF_POST_W + 0.3 * torch.randn(p.shape, generator=g))
        elif "norm" in name:  # HF Gemma stores w of the (1 + w) scale
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif name == "model.embed_tokens.weight":  # tied output projection; inputs are scaled by sqrt(64) = 8
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(HF_STD * torch.randn(p.shape, generator=g))
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(d, safe_serialization=True)
    train = open(a.text, encoding="utf-8").read()[:200000]
    tk = make_tiny_tokenizer(d, train)
    shutil.copy(os.path.join(a.out_dir, "chat_template.jinja"), os.path.join(d, "chat_template.jinja"))

    m = Gemma3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    assert m.config.layer_types == ["sliding_attention", "full_attention"] and m.config.sliding_window == 4
    ids = torch.tensor([HF_PROMPT])
    logits = m(ids, use_cache=False).logits[0]
    pos = list(range(len(HF_PROMPT) - 3, len(HF_PROMPT)))
    seq, greedy, lp5 = list(HF_PROMPT), [], []
    for _ in range(HF_N_GEN):
        lg = m(torch.tensor([seq]), use_cache=False).logits[0, -1]
        t = int(torch.argmax(lg))
        greedy.append(t)
        lp5.append(top_k_logprobs(lg)[0])
        seq.append(t)
    gc = GenerationConfig(do_sample=False, max_new_tokens=HF_N_GEN, min_new_tokens=HF_N_GEN, eos_token_id=None,
                          pad_token_id=0, bos_token_id=2)
    gen = m.generate(ids, generation_config=gc, attention_mask=torch.ones_like(ids))[0, len(HF_PROMPT):].tolist()
    # The window must matter: the same weights with a window covering everything give other logits.
    full_cfg = Gemma3TextConfig.from_pretrained(d)
    full_cfg.sliding_window = 512
    mf = Gemma3ForCausalLM(full_cfg).to(torch.float32).eval()
    mf.load_state_dict(m.state_dict())
    lf = mf(ids, use_cache=False).logits[0]
    window_effect = r6((lf[4:] - logits[4:]).abs().max())
    early_same = r6((lf[:4] - logits[:4]).abs().max())
    # and the window is p-3..p (4 keys): with window 5 position 4 (the first that can see 5 keys) changes
    cfg5 = Gemma3TextConfig.from_pretrained(d)
    cfg5.sliding_window = 5
    m5 = Gemma3ForCausalLM(cfg5).to(torch.float32).eval()
    m5.load_state_dict(m.state_dict())
    l5 = m5(ids, use_cache=False).logits[0]
    diff5 = [r6((l5[p] - logits[p]).abs().max()) for p in range(len(HF_PROMPT))]
    text = "ROMEO: But soft, what light"
    enc = tk.encode(text).ids
    ref = {
        "model": "gemma3-tiny", "architecture": "Gemma3ForCausalLM", "prompt_ids": HF_PROMPT,
        "logits_positions": pos, "logits": [[r6(v) for v in logits[p].tolist()] for p in pos],
        "all_positions_top5": [top_k_logprobs(logits[p])[0] for p in range(len(HF_PROMPT))],
        "greedy": greedy, "greedy_logprobs_top5": lp5, "generate_matches_manual_greedy": gen == greedy,
        "min_top2_logprob_gap": r6(min(x[0][1] - x[1][1] for x in lp5)),
        "window_check": {
            "about": "same weights, sliding_window 512 (no effective window): max |logit diff| at positions 0..3 "
                     "(window not yet binding) and 4..11; and with window 5: max |logit diff| per position "
                     "(positions 0..3 equal, position 4 differs: with window 4, position 4 does not see position 0, i.e. p sees p-3..p)",
            "no_window_diff_pos_0_3": early_same, "no_window_diff_pos_4_11": window_effect,
            "window5_diff_per_position": diff5},
        "tokenizer_example": {"text": text, "ids": enc},
        "config_notes": "2 layers: layer 0 sliding (window 4, rope_theta 10000), layer 1 full (rope_theta 1e6); "
                        "hidden 64, 2 heads / 1 KV head, head_dim 16 (q_proj 32x64, o_proj 64x32), "
                        "query_pre_attn_scalar 32 (queries scaled by 32^-0.5, NOT head_dim^-0.5), ffn 64, "
                        "tied embeddings (no lm_head in the file), embeddings scaled by sqrt(64) = 8, norms "
                        "stored as w with scale (1 + w), gelu_pytorch_tanh, eps 1e-6, no softcapping",
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "init": f"seed {HF_SEED}: post-attention/post-feed-forward norm weights (stored w) {HF_POST_W} + N(0, 0.3), other norm weights N(0, 0.2), tied embedding N(0, 0.2), other weights "
                f"N(0, {HF_STD}); tokenizer: tokenizers BPE trained on the first 200000 chars of val.txt, vocab 256",
        "made_with": "python3 scripts/refs/make_gemma3_refs.py hf " + q(sys.argv[2:]),
    }
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    assert gen == greedy, (gen, greedy)
    assert window_effect > 1e-3 and early_same < 1e-5, (window_effect, early_same)
    assert all(x < 1e-5 for x in diff5[:4]) and diff5[4] > 1e-4, diff5
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"hf: greedy={greedy} min gap {ref['min_top2_logprob_gap']} window effect {window_effect} "
          f"diff5 {diff5} total {total} bytes", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- template

CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant.\nAnswer in one sentence. "},
    {"role": "user", "content": "  What is the capital of France?  "},
    {"role": "assistant", "content": "The capital of France is Paris.\n"},
    {"role": "user", "content": "And of Japan?"},
]


def cmd_template(a):
    import jinja2
    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template
    src = open(os.path.join(a.out_dir, "chat_template.jinja"), encoding="utf-8").read()
    cases = []
    variants = [("system_user_assistant_user", CONVERSATION, True),
                ("system_user_assistant_user_no_gen", CONVERSATION, False),
                ("no_system", CONVERSATION[1:], True),
                ("single_user", CONVERSATION[1:2], True)]
    for name, msgs, gen in variants:
        out, _ = render_jinja_template(conversations=[msgs], chat_template=src, add_generation_prompt=gen,
                                       bos_token="<bos>", eos_token="<eos>")
        cases.append({"case": name, "messages": msgs, "add_generation_prompt": gen, "hf_jinja": out[0]})
    # llama.cpp: /apply-template of llama-server, (1) with the file's own template (none -> fallback),
    # (2) --chat-template gemma (built-in, src/llama-chat.cpp), (3) --jinja --chat-template-file chat_template.jinja
    lc = {}
    setups = [("file_default", []), ("builtin_gemma", ["--chat-template", "gemma", "--no-jinja"]),
              ("jinja_file", ["--jinja", "--chat-template-file", os.path.join(a.out_dir, "chat_template.jinja")])]
    for key, extra in setups:
        try:
            with Server(a.llamacpp_bin, a.model, ctx=512, extra=extra) as srv:
                outs = []
                for c in cases:
                    body = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"]}
                    try:
                        outs.append(post("/apply-template", body)["prompt"])
                    except Exception as e:  # noqa: BLE001
                        outs.append({"error": str(e)})
                lc[key] = {"server": q(srv.cmd), "renderings": outs}
        except Exception as e:  # noqa: BLE001
            lc[key] = {"error": str(e), "extra_args": extra}
            print(f"WARNING {key}: {e}", file=sys.stderr)
    for i, c in enumerate(cases):
        for key in lc:
            if "renderings" in lc[key]:
                c[f"llamacpp_{key}"] = lc[key]["renderings"][i]
        # token ids of the official rendering (the <bos> text is parsed as the BOS token; --no-bos so it is not doubled)
        c["hf_jinja_ids"], _ = tokenize(a.llamacpp_bin, a.model, c["hf_jinja"], ["--no-bos"])
    doc = {
        "file": os.path.basename(a.model),
        "about": "hf_jinja: tests/fixtures/gemma3/chat_template.jinja (Gemma 3's tokenizer_config.json template: "
                 "system folded into the first user turn with '\\n\\n', assistant -> model, contents trimmed, "
                 "<bos> from bos_token) rendered by transformers' render_jinja_template (what apply_chat_template "
                 "uses), bos_token '<bos>'. hf_jinja_ids: llama-tokenize --no-bos of that text (its literal "
                 "'<bos>' becomes id 2). llamacpp_file_default: llama-server /apply-template with this file (it has "
                 "no tokenizer.chat_template, so llama.cpp falls back to ChatML!). llamacpp_builtin_gemma: "
                 "--chat-template gemma (llama-chat.cpp LLM_CHAT_TEMPLATE_GEMMA: no <bos> text, system trimmed and "
                 "joined with '\\n\\n'). llamacpp_jinja_file: --jinja --chat-template-file chat_template.jinja.",
        "template_source": "google/gemma-3 *-it tokenizer_config.json chat_template, as quoted verbatim in "
                           "ShishirPatil/gorilla (BFCL) model_handler/local_inference/gemma.py; the same text "
                           "(minus the 'is string' branch) is transformers' tests/models/gemma3 processor template",
        "cases": cases,
        "llamacpp_servers": {k: v.get("server", v.get("error")) for k, v in lc.items()},
        "made_with": {"script": "python3 scripts/refs/make_gemma3_refs.py template " + q(sys.argv[2:]),
                      "hf": f"transformers {transformers.__version__} render_jinja_template, jinja2 {jinja2.__version__}",
                      "llamacpp": llamacpp_version(a.llamacpp_bin)},
    }
    write(os.path.join(a.out_dir, "chat.json"), doc)
    for c in cases:
        print(c["case"], repr(c["hf_jinja"]), file=sys.stderr)
        for key in lc:
            print("   ", key, repr(c.get(f"llamacpp_{key}")), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["tokenize", "greedy", "reference", "perplexity", "hf", "template"])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out-dir", default="tests/fixtures/gemma3")
    ap.add_argument("--llamacpp-bin", default="/tmp/llamacpp/build/bin")
    ap.add_argument("--text", default="/work/shared/testdata/shakespeare/val.txt")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--long-tokens", type=int, default=600, help="reference: long prompt length (0: none)")
    ap.add_argument("--n-long", type=int, default=16)
    ap.add_argument("--cache", default="/tmp/gemma3-270m-dequant.npz", help="dequantized weights cache ('' = none)")
    ap.add_argument("--check-conventions", action="store_true")
    ap.add_argument("--fa-off-too", action="store_true", help="reference: also llama.cpp with -fa off")
    ap.add_argument("--variants", nargs="*",
                    default=["exact", "norm_plus1_kept", "qk_unpermuted", "single_rope_base", "no_window"])
    a = ap.parse_args()
    if a.cmd in ("tokenize", "greedy", "reference", "perplexity", "template"):
        assert os.path.exists(a.model), a.model
    {"tokenize": cmd_tokenize, "greedy": cmd_greedy, "reference": cmd_reference, "perplexity": cmd_perplexity,
     "hf": cmd_hf, "template": cmd_template}[a.cmd](a)


if __name__ == "__main__":
    main()
