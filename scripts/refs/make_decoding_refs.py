#!/usr/bin/env python3
"""Reference outputs of decoding strategies, for crates/bushu/tests/decoding_hf.rs.

usage: python3 scripts/refs/make_decoding_refs.py   (writes tests/fixtures/decoding/*.json)
needs: torch, transformers (>= 4.50; made with 5.x), the random HF fixtures in tests/fixtures/hf/ and
/work/shared/models/shakespeare/*-hf.

hf_generate.json — for each random model (prompt = its reference.json prompt_ids, no BOS):
  cases[]: {name, kwargs (the generate() arguments besides the prompt), tokens (per returned sequence,
  generated ids only), scores (beam search: sequences_scores)}. Greedy with repetition_penalty,
  sequence_bias (our logit bias), no_repeat_ngram_size 3; presence/frequency penalties (not in HF) as
  a custom LogitsProcessor written from the OpenAI formula; beam search with 2 and 4 beams, with and
  without an EOS the beams actually meet, length penalties, early stopping.
  Contrastive search: HF moved it to the Hub (transformers-community/contrastive-search, not
  available offline), so it is re-implemented here from Su et al. 2022 / the former HF
  `_contrastive_search`, recomputing every forward pass from scratch (no KV cache) with
  output_hidden_states=True — independent of bushu's look-ahead and hidden-state recovery.

contrastive_decoding.json — Shakespeare expert/amateur (F32 HF dirs): prompts, the first 16 tokens of
  greedy contrastive decoding (Li et al. 2022: argmax of log p_e - log p_a/τ over
  {p_e >= α max p_e}) from both models' full next-token distributions, recomputed from scratch each
  step, for (α, τ) in [(0.1, 1.0), (0.1, 0.5), (0.5, 1.0)]; plus plain greedy for comparison.
"""
import json, os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

torch.manual_seed(0)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
HF = os.path.join(ROOT, "tests/fixtures/hf")
OUT = os.path.join(ROOT, "tests/fixtures/decoding")
SHAKES = "/work/shared/models/shakespeare"
N = 12


class PresenceFrequency(LogitsProcessor):
    """logit - presence·[seen] - frequency·count, over the whole sequence (prompt included)."""

    def __init__(self, presence, frequency):
        self.presence, self.frequency = presence, frequency

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b in range(input_ids.shape[0]):
            ids, counts = torch.unique(input_ids[b], return_counts=True)
            scores[b, ids] -= self.presence + self.frequency * counts.to(scores.dtype)
        return scores


def generate(model, prompt, **kw):
    extra = kw.pop("_presence_frequency", None)
    procs = LogitsProcessorList([PresenceFrequency(*extra)]) if extra else None
    eos = kw.pop("eos_token_id", -1)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=N, do_sample=False, eos_token_id=eos,
                         pad_token_id=0, return_dict_in_generate=True, output_scores=True,
                         logits_processor=procs, **kw)
    seqs = [s[len(prompt):].tolist() for s in out.sequences]
    res = {"tokens": seqs}
    if getattr(out, "sequences_scores", None) is not None:
        res["scores"] = [float(x) for x in out.sequences_scores]
    return res


def last_hidden_and_logits(model, ids):
    with torch.no_grad():
        o = model(torch.tensor([ids]), output_hidden_states=True)
    return o.hidden_states[-1][0], o.logits[0]


def contrastive_search(model, prompt, alpha, k, n):
    ids = list(prompt)
    for _ in range(n):
        hidden, logits = last_hidden_and_logits(model, ids)
        probs = torch.softmax(logits[-1].double(), -1)
        top_p, top_ids = torch.topk(probs, k)
        ctx = hidden / hidden.norm(dim=-1, keepdim=True)
        best, best_score = None, None
        for p, t in zip(top_p.tolist(), top_ids.tolist()):
            h, _ = last_hidden_and_logits(model, ids + [t])
            h = h[-1] / h[-1].norm()
            penalty = float((ctx @ h).max())
            score = (1 - alpha) * p - alpha * penalty
            if best_score is None or score > best_score:
                best, best_score = t, score
        ids.append(best)
    return ids[len(prompt):]


def main():
    os.makedirs(OUT, exist_ok=True)
    models = []
    for name in ["llama3-gqa", "qwen2-tied"]:
        d = os.path.join(HF, name)
        ref = json.load(open(os.path.join(d, "reference.json")))
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        prompt = ref["prompt_ids"]
        greedy = ref["greedy"]
        eos_met = greedy[3]  # a token the search meets: makes EOS handling matter
        cases = [
            ("greedy", {}),
            ("repetition_penalty_1.3", {"repetition_penalty": 1.3}),
            ("repetition_penalty_0.8", {"repetition_penalty": 0.8}),
            ("no_repeat_ngram_3", {"no_repeat_ngram_size": 3}),
            ("no_repeat_ngram_2", {"no_repeat_ngram_size": 2}),
            ("logit_bias", {"sequence_bias": {(greedy[0],): -5.0, (17,): 3.0}}),
            ("presence_0.5_frequency_0.3", {"_presence_frequency": (0.5, 0.3)}),
            ("penalties_combined", {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3,
                                    "_presence_frequency": (0.2, 0.1)}),
            ("beam_2", {"num_beams": 2, "num_return_sequences": 2}),
            ("beam_4", {"num_beams": 4, "num_return_sequences": 4}),
            ("beam_4_eos", {"num_beams": 4, "num_return_sequences": 4, "eos_token_id": eos_met}),
            ("beam_2_eos", {"num_beams": 2, "num_return_sequences": 2, "eos_token_id": eos_met}),
            ("beam_4_eos_lp0.5_early", {"num_beams": 4, "num_return_sequences": 3, "eos_token_id": eos_met,
                                        "length_penalty": 0.5, "early_stopping": True}),
            ("beam_4_eos_lp2_never", {"num_beams": 4, "num_return_sequences": 2, "eos_token_id": eos_met,
                                      "length_penalty": 2.0, "early_stopping": "never"}),
            ("beam_3_repetition_1.5", {"num_beams": 3, "num_return_sequences": 3, "repetition_penalty": 1.5}),
        ]
        out_cases = []
        for cname, kw in cases:
            r = generate(model, prompt, **dict(kw))
            j = {k: v for k, v in kw.items() if k not in ("sequence_bias", "_presence_frequency")}
            if "sequence_bias" in kw:
                j["logit_bias"] = [[k[0], v] for k, v in kw["sequence_bias"].items()]
            if "_presence_frequency" in kw:
                j["presence_penalty"], j["frequency_penalty"] = kw["_presence_frequency"]
            if "eos_token_id" not in j:
                j["eos_token_id"] = None
            out_cases.append({"name": cname, "kwargs": j, **r})
            print(name, cname, r)
        for alpha, k in [(0.6, 4), (0.3, 6)]:
            toks = contrastive_search(model, prompt, alpha, k, N)
            out_cases.append({"name": f"contrastive_search_{alpha}_{k}",
                              "kwargs": {"penalty_alpha": alpha, "top_k": k, "eos_token_id": None},
                              "tokens": [toks]})
            print(name, "contrastive", alpha, k, toks)
        models.append({"model": name, "prompt_ids": prompt, "max_new_tokens": N, "cases": out_cases})
    json.dump({"transformers_version": transformers.__version__, "torch_version": torch.__version__,
               "made_with": "scripts/refs/make_decoding_refs.py", "models": models},
              open(os.path.join(OUT, "hf_generate.json"), "w"), indent=1)

    # Contrastive decoding on the Shakespeare expert / amateur.
    tok = AutoTokenizer.from_pretrained(os.path.join(SHAKES, "shakespeare-expert-hf"))
    expert = AutoModelForCausalLM.from_pretrained(os.path.join(SHAKES, "shakespeare-expert-hf"),
                                                  torch_dtype=torch.float32).eval()
    amateur = AutoModelForCausalLM.from_pretrained(os.path.join(SHAKES, "shakespeare-amateur-hf"),
                                                   torch_dtype=torch.float32).eval()
    prompts = ["ROMEO: What light through yonder", "To be, or not to be,", "KING LEAR:\nBlow, winds,"]
    runs = []
    n_cd = 16
    for text in prompts:
        ids = tok(text)["input_ids"]
        entry = {"prompt": text, "prompt_ids": ids, "cd": []}
        g = list(ids)
        for _ in range(n_cd):
            with torch.no_grad():
                le = expert(torch.tensor([g])).logits[0, -1].double()
            g.append(int(le.argmax()))
        entry["greedy"] = g[len(ids):]
        for alpha, tau in [(0.1, 1.0), (0.1, 0.5), (0.5, 1.0)]:
            seq = list(ids)
            for _ in range(n_cd):
                with torch.no_grad():
                    le = expert(torch.tensor([seq])).logits[0, -1].double()
                    la = amateur(torch.tensor([seq])).logits[0, -1].double()
                lpe = torch.log_softmax(le, -1)
                lpa = torch.log_softmax(la / tau, -1)
                plausible = lpe >= lpe.max() + torch.log(torch.tensor(alpha, dtype=torch.float64))
                score = torch.where(plausible, lpe - lpa, torch.tensor(float("-inf"), dtype=torch.float64))
                seq.append(int(score.argmax()))
            entry["cd"].append({"alpha": alpha, "amateur_temperature": tau, "tokens": seq[len(ids):],
                                "text": tok.decode(seq[len(ids):])})
            print(text, alpha, tau, repr(tok.decode(seq[len(ids):])))
        runs.append(entry)
    json.dump({"transformers_version": transformers.__version__, "made_with": "scripts/refs/make_decoding_refs.py",
               "expert": "shakespeare-expert-hf", "amateur": "shakespeare-amateur-hf", "runs": runs},
              open(os.path.join(OUT, "contrastive_decoding.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
