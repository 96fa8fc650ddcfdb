#!/usr/bin/env python3
"""Greedy-generation references for Llama-architecture GGUF files: an exact float32 model and llama.cpp.

usage: python3 scripts/refs/make_gguf_refs.py OUT_DIR FILE.gguf [FILE.gguf ...]
         [--llamacpp-bin /tmp/llamacpp/build/bin] [--prompt TEXT | --chat-messages JSON] [--n 64] [--out-name NAME]
needs: pip install torch transformers gguf numpy jinja2 ; a llama.cpp build (llama-tokenize, llama-server)

For each FILE it writes OUT_DIR/<file stem>.json (schema in scripts/refs/README.md):
  * prompt ids from llama.cpp's llama-tokenize (BOS added as llama.cpp does for the vocab);
  * "exact": every tensor dequantized to float32 with gguf.quants.dequantize, loaded into a transformers
    LlamaForCausalLM in float32 (Q/K rows un-permuted from llama.cpp's adjacent-pair RoPE layout to HF's
    rotate_half layout), greedy N tokens with the top-5 log_softmax of the raw logits at every step;
  * "llamacpp": llama-server's greedy N tokens with its top-5 logprobs (n_probs, post_sampling_probs=false);
  * "exact_on_llamacpp_path": the exact model's top-5 teacher-forced along llama.cpp's tokens;
  * summary numbers comparing them.
"""
import argparse, json, os, shlex, signal, socket, subprocess, sys, time, urllib.request
from importlib.metadata import version

import numpy as np
import torch
import transformers
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from transformers import LlamaConfig, LlamaForCausalLM

DEFAULT_PROMPT = "Once upon a time, there was a little"
PORT = 8089


def r6(x):
    return float(f"{float(x):.6g}")


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    t = f.types[0]
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if t == GGUFValueType.ARRAY:
        if f.types[1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    return f.parts[f.data[0]][0].item()


def unpermute(w, n_head):
    """llama.cpp layout (per head rows: pair0.x, pair0.y, pair1.x, pair1.y, ...) -> HF rotate_half layout
    (per head: all x then all y). Inverse of convert_hf_to_gguf's LlamaModel.permute."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def load_exact(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    assert arch == "llama", f"only llama architecture supported, got {arch}"
    g = lambda k, d=None: field(r, f"llama.{k}", d)
    n_head, n_kv = g("attention.head_count"), g("attention.head_count_kv", g("attention.head_count"))
    dim = g("embedding_length")
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim > 1 or len(t.shape) > 1 else a.reshape(-1)
    vocab = W["token_embd.weight"].shape[0]
    tied = "output.weight" not in W
    rope_theta = float(g("rope.freq_base", 10000.0))
    rope_dim = g("rope.dimension_count", dim // n_head)
    assert rope_dim == dim // n_head, "partial rotary not supported"
    assert g("rope.scaling.type") in (None, "none"), "rope scaling not supported here"
    kw = dict(vocab_size=vocab, hidden_size=dim, intermediate_size=g("feed_forward_length"),
              num_hidden_layers=g("block_count"), num_attention_heads=n_head, num_key_value_heads=n_kv,
              rms_norm_eps=float(g("attention.layer_norm_rms_epsilon")),
              max_position_embeddings=g("context_length"), tie_word_embeddings=tied,
              bos_token_id=field(r, "tokenizer.ggml.bos_token_id"), eos_token_id=field(r, "tokenizer.ggml.eos_token_id"))
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    else:
        kw["rope_theta"] = rope_theta
    cfg = LlamaConfig(**kw)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    sd = {"model.embed_tokens.weight": W["token_embd.weight"], "model.norm.weight": W["output_norm.weight"]}
    if not tied:
        sd["lm_head.weight"] = W["output.weight"]
    for i in range(cfg.num_hidden_layers):
        p, q = f"blk.{i}.", f"model.layers.{i}."
        sd[q + "self_attn.q_proj.weight"] = unpermute(W[p + "attn_q.weight"], n_head)
        sd[q + "self_attn.k_proj.weight"] = unpermute(W[p + "attn_k.weight"], n_kv)
        sd[q + "self_attn.v_proj.weight"] = W[p + "attn_v.weight"]
        sd[q + "self_attn.o_proj.weight"] = W[p + "attn_output.weight"]
        sd[q + "mlp.gate_proj.weight"] = W[p + "ffn_gate.weight"]
        sd[q + "mlp.up_proj.weight"] = W[p + "ffn_up.weight"]
        sd[q + "mlp.down_proj.weight"] = W[p + "ffn_down.weight"]
        sd[q + "input_layernorm.weight"] = W[p + "attn_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = W[p + "ffn_norm.weight"]
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if tied:
        model.tie_weights()
    return model.eval(), r


def top_k_logprobs(logits, k=5):
    lp = torch.log_softmax(logits.double(), dim=-1)
    v, i = torch.topk(lp, k)
    return [[int(a), r6(b)] for a, b in zip(i.tolist(), v.tolist())], lp


def exact_greedy(model, prompt, n):
    seq, toks, top5, lps = list(prompt), [], [], []
    with torch.no_grad():
        for _ in range(n):
            lg = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
            t5, lp = top_k_logprobs(lg)
            t = int(torch.argmax(lg))
            toks.append(t); top5.append(t5); lps.append(lp); seq.append(t)
    return toks, top5, lps


def teacher_forced(model, prompt, toks):
    with torch.no_grad():
        lg = model(torch.tensor([list(prompt) + list(toks)]), use_cache=False).logits[0]
    out = []
    for s in range(len(toks)):
        out.append(top_k_logprobs(lg[len(prompt) - 1 + s]))
    return out


def tokenize(bin_dir, path, text):
    cmd = [os.path.join(bin_dir, "llama-tokenize"), "-m", path, "-p", text, "--ids", "--log-disable", "--no-escape"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out), cmd


def wait_port(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("llama-server exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("llama-server did not come up")


def post(port, route, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def llamacpp_greedy(bin_dir, path, prompt_ids, n, n_probs=20):
    server_cmd = [os.path.join(bin_dir, "llama-server"), "-m", path, "--host", "127.0.0.1", "--port", str(PORT),
                  "-t", "2", "-c", "512", "-np", "1", "--no-webui"]
    proc = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=open("/tmp/llama-server.log", "w"))
    try:
        wait_port(PORT, proc)
        body = {"prompt": prompt_ids, "n_predict": n, "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0,
                "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
                "n_probs": n_probs, "post_sampling_probs": False, "cache_prompt": False, "ignore_eos": True,
                "samplers": ["top_k"], "return_tokens": True}
        resp = post(PORT, "/completion", body)
        props = post(PORT, "/tokenize", {"content": "x"})  # liveness only
        del props
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/props", timeout=5) as rr:
                build = json.loads(rr.read()).get("build_info")
        except Exception:
            build = None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
    probs = resp["completion_probabilities"]
    toks = [int(p["id"]) for p in probs]
    if resp.get("tokens"):
        assert [int(t) for t in resp["tokens"]] == toks, (resp["tokens"], toks)
    tops = [[[int(x["id"]), float(x["logprob"])] for x in p["top_logprobs"]] for p in probs]
    for p, t in zip(probs, tops):
        assert int(p["id"]) == t[0][0], "greedy token is not llama.cpp's top-1"
    body_doc = dict(body)
    return toks, tops, server_cmd, body_doc, build, resp


def summarize(exact_toks, exact_top5, exact_lps, lc_toks, lc_tops_full):
    agree = 0
    while agree < min(len(exact_toks), len(lc_toks)) and exact_toks[agree] == lc_toks[agree]:
        agree += 1
    errs, missing = [], 0
    for s in range(agree):
        lc = {i: lp for i, lp in lc_tops_full[s]}
        for i, _ in exact_top5[s]:
            if i in lc:
                errs.append(abs(lc[i] - float(exact_lps[s][i])))
            else:
                missing += 1
    tie = None
    for s, t5 in enumerate(exact_top5):
        if float(exact_lps[s][t5[0][0]]) - float(exact_lps[s][t5[1][0]]) < 0.05:
            tie = s
            break
    return {"llamacpp_agree_len": agree,
            "llamacpp_top5_max_abs_err": r6(max(errs)) if errs else None,
            "llamacpp_top5_mean_abs_err": r6(sum(errs) / len(errs)) if errs else None,
            "llamacpp_top5_ids_missing": missing,
            "first_near_tie_step": tie}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--llamacpp-bin", default="/tmp/llamacpp/build/bin")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--chat-messages", help="JSON list of messages; render with the GGUF's chat template")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out-name", help="output file stem (default: the GGUF file stem)")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    torch.set_grad_enabled(False)
    for path in a.files:
        t0 = time.time()
        model, reader = load_exact(path)
        doc = {"file": os.path.basename(path)}
        if a.chat_messages:
            import jinja2.sandbox
            messages = json.loads(a.chat_messages)
            tmpl = field(reader, "tokenizer.chat_template")
            toks = field(reader, "tokenizer.ggml.tokens")
            bos = toks[field(reader, "tokenizer.ggml.bos_token_id")]
            eos = toks[field(reader, "tokenizer.ggml.eos_token_id")]
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                               extensions=["jinja2.ext.loopcontrols"])
            text = env.from_string(tmpl).render(messages=messages, add_generation_prompt=True,
                                                bos_token=bos, eos_token=eos)
            doc["chat_messages"] = messages
            doc["chat_template_add_generation_prompt"] = True
        else:
            text = a.prompt
        prompt_ids, tok_cmd = tokenize(a.llamacpp_bin, path, text)
        doc["prompt"] = text
        doc["prompt_ids"] = prompt_ids
        ex_toks, ex_top5, ex_lps = exact_greedy(model, prompt_ids, a.n)
        lc_toks, lc_tops, server_cmd, body, build, _ = llamacpp_greedy(a.llamacpp_bin, path, prompt_ids, a.n)
        tf = teacher_forced(model, prompt_ids, lc_toks)
        doc["exact"] = {"tokens": ex_toks, "top5": ex_top5}
        doc["llamacpp"] = {"tokens": lc_toks, "top5": [[[i, r6(lp)] for i, lp in t[:5]] for t in lc_tops]}
        doc["exact_on_llamacpp_path"] = {"top5": [t5 for t5, _ in tf]}
        doc.update(summarize(ex_toks, ex_top5, ex_lps, lc_toks, lc_tops))
        # sanity: llama.cpp's probabilities are raw-logit log-softmax (compare along its own path)
        d = []
        for s, (t5, lp) in enumerate(tf):
            for i, l in lc_tops[s][:5]:
                d.append(abs(l - float(lp[i])))
        doc["llamacpp_vs_exact_teacher_forced_top5_max_abs_err"] = r6(max(d))
        doc["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__,
                           "gguf": version("gguf"), "llamacpp_build": build,
                           "llamacpp_source": "llama-cpp-python 0.3.36 sdist vendor/llama.cpp"}
        doc["made_with"] = {
            "script": "python3 " + " ".join(shlex.quote(x) for x in sys.argv),
            "tokenize": " ".join(shlex.quote(x) for x in tok_cmd),
            "server": " ".join(shlex.quote(x) for x in server_cmd),
            "completion_request": body,
            "exact": "gguf.quants.dequantize -> float32 transformers LlamaForCausalLM (Q/K un-permuted), greedy by "
                     "full recomputation each step, top5 of log_softmax(raw logits) in float64",
        }
        stem = a.out_name or os.path.splitext(os.path.basename(path))[0]
        with open(os.path.join(a.out_dir, stem + ".json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        print(f"{stem}: agree {doc['llamacpp_agree_len']}/{a.n} top5 err max {doc['llamacpp_top5_max_abs_err']} "
              f"mean {doc['llamacpp_top5_mean_abs_err']} tie {doc['first_near_tie_step']} "
              f"tf err {doc['llamacpp_vs_exact_teacher_forced_top5_max_abs_err']} ({time.time() - t0:.0f}s)")
        print("  exact   ", ex_toks[:20])
        print("  llamacpp", lc_toks[:20])


if __name__ == "__main__":
    main()
