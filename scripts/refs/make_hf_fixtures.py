#!/usr/bin/env python3
"""Make small random-weight Hugging Face model directories plus reference logits / greedy tokens.

usage: python3 scripts/refs/make_hf_fixtures.py [OUT_DIR]   (default tests/fixtures/hf)
needs: pip install torch transformers safetensors numpy
Tokenizer files are copied from /work/shared/models/shakespeare/shakespeare-expert-hf (vocab 4096).

Each OUT_DIR/<name>/ is a complete HF model directory (config.json, model.safetensors in F32,
generation_config.json, tokenizer.json, tokenizer_config.json) and reference.json:
  prompt_ids            fixed prompt ids in 3..4095 (no BOS; fed to the model as listed)
  logits_positions      indices of the last 3 prompt positions
  logits                raw float32 logits at those positions (vocab_size floats each)
  greedy                16 greedy token ids after the prompt (eos disabled)
  greedy_logprobs_top5  per generated step, [[id, logprob] x5] of log_softmax(raw logits), best first
Floats are rounded to 6 significant digits.
"""
import json, os, shutil, sys

import numpy as np
import torch
import transformers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

TOK_DIR = "/work/shared/models/shakespeare/shakespeare-expert-hf"
V5 = int(transformers.__version__.split(".")[0]) >= 5
PROMPT = [312, 57, 1999, 4000, 3, 845, 77, 2048, 1234, 3071, 500, 4095]
N_GEN = 16


def rope_kwargs(theta, scaling):
    """Pass RoPE settings the way the installed transformers expects them."""
    if V5:
        p = {"rope_theta": float(theta), "rope_type": "default"}
        if scaling:
            p.update(scaling)
        return {"rope_parameters": p}
    kw = {"rope_theta": float(theta)}
    if scaling:
        kw["rope_scaling"] = dict(scaling)
    return kw


COMMON = dict(vocab_size=4096, bos_token_id=1, eos_token_id=2, hidden_act="silu",
              max_position_embeddings=512, num_hidden_layers=2, intermediate_size=160, hidden_size=64)

MODELS = {
    "llama3-gqa": (LlamaForCausalLM, LlamaConfig, dict(
        COMMON, num_attention_heads=8, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        # original_max_position_embeddings=64 puts the head_dim-16 frequencies in all three llama3 regimes:
        # wavelength 6.3 (< 16, kept), 32.5 (between 16 and 64, smoothed), >= 168 (> 64, divided by 8)
        **rope_kwargs(500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})), 1001),
    "llama-linear": (LlamaForCausalLM, LlamaConfig, dict(
        COMMON, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=False,
        **rope_kwargs(10000.0, {"rope_type": "linear", "factor": 2.0})), 1002),
    "qwen2-tied": (Qwen2ForCausalLM, Qwen2Config, dict(
        COMMON, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=True,
        use_sliding_window=False, **rope_kwargs(1000000.0, None)), 1003),
    "mistral": (MistralForCausalLM, MistralConfig, dict(
        COMMON, num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=None, **rope_kwargs(10000.0, None)), 1004),
    # sliding-window attention: each position sees only the last 5 (the 12-token prompt and 16 generated
    # tokens go well past it)
    "mistral-swa": (MistralForCausalLM, MistralConfig, dict(
        COMMON, num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
        sliding_window=5, **rope_kwargs(10000.0, None)), 1005),
}


def r6(x):
    return float(f"{float(x):.6g}")


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name in ("lm_head.weight", "model.embed_tokens.weight") and (
                    name == "lm_head.weight" or model.config.tie_word_embeddings):
                # output projection: peakier next-token distributions, fewer near-ties in greedy. N(0, 0.3) for an
                # untied lm_head; N(0, 0.15) for a tied embedding (larger makes the model just echo its input)
                std = 0.15 if model.config.tie_word_embeddings else 0.3
                p.copy_(std * torch.randn(p.shape, generator=g))
            else:  # other linear / embedding weights and biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def top5(logits_row):
    lp = torch.log_softmax(logits_row.double(), dim=-1)
    v, i = torch.topk(lp, 5)
    return [[int(a), r6(b)] for a, b in zip(i.tolist(), v.tolist())]


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf"
    torch.set_grad_enabled(False)
    only = set(sys.argv[2:])  # optional: regenerate only these fixtures
    for name, (cls, cfg_cls, kw, seed) in MODELS.items():
        if only and name not in only:
            continue
        torch.manual_seed(seed)
        cfg = cfg_cls(**kw)
        model = cls(cfg).to(torch.float32)
        init_weights(model, seed)
        if cfg.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        model.eval()
        d = os.path.join(out_root, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TOK_DIR, f), os.path.join(d, f))

        # reload from disk so the reference is what a user loading the directory gets
        m = cls.from_pretrained(d, dtype=torch.float32).eval()
        ids = torch.tensor([PROMPT])
        logits = m(ids, use_cache=False).logits[0]
        pos = list(range(len(PROMPT) - 3, len(PROMPT)))

        # greedy by full recomputation (no cache), eos ignored
        seq = list(PROMPT)
        greedy, lp5 = [], []
        for _ in range(N_GEN):
            lg = m(torch.tensor([seq]), use_cache=False).logits[0, -1]
            t = int(torch.argmax(lg))
            greedy.append(t)
            lp5.append(top5(lg))
            seq.append(t)
        # cross-check with generate() (KV cache path), eos disabled
        gc = GenerationConfig(do_sample=False, max_new_tokens=N_GEN, min_new_tokens=N_GEN,
                              eos_token_id=None, pad_token_id=0, bos_token_id=1)
        gen = m.generate(ids, generation_config=gc, attention_mask=torch.ones_like(ids))[0, len(PROMPT):].tolist()
        if gen != greedy:
            print(f"WARNING {name}: generate() {gen} != manual greedy {greedy}")

        ref = {
            "model": name,
            "architecture": cls.__name__,
            "prompt_ids": PROMPT,
            "logits_positions": pos,
            "logits": [[r6(v) for v in logits[p].tolist()] for p in pos],
            "greedy": greedy,
            "greedy_logprobs_top5": lp5,
            "generate_matches_manual_greedy": gen == greedy,
            "min_top2_logprob_gap": r6(min(a[0][1] - a[1][1] for a in lp5)),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "init": f"seed {seed}: untied lm_head N(0, 0.3), tied embedding N(0, 0.15), other linear/embedding "
                    "weights and biases N(0, 0.1), norm weights 1+N(0, 0.1)",
            "made_with": "python3 scripts/refs/make_hf_fixtures.py tests/fixtures/hf",
        }
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
        gaps = [a[0][1] - a[1][1] for a in lp5]
        print(f"{name}: greedy={greedy} min top2 gap={min(gaps):.3f} logit std={logits.std():.3f}")


if __name__ == "__main__":
    main()
