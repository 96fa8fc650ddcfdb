#!/usr/bin/env python3
"""Measures SmolLM2 drafts made by scripts/distill-smollm2.sh (docs/DISTILLATION.md, "A distilled SmolLM2 draft").

    scripts/eval-smollm2-draft.py OUTDIR [--rounds 2] [--n 128] [--speed-prompts 4] [--draft-vocab 0,16384]

1. Top-1 agreement with the teacher (and KL) on held-out text, `bushu perplexity --kl-base TEACHER`:
   Shakespeare's val.txt (plays never in the training data), the part of docs/*.md and of crates/bushu/src
   past the slices the recipe trained on.
2. Greedy speculative decoding on held-out chat prompts (every 7th line of bench/prompts/chat-prompts.txt and
   bench/prompts/distill/heldout.txt, in SmolLM2's chat template): acceptance rate and mean accepted length
   of each draft over every held-out prompt (one run each), then tokens/s of plain greedy against each draft
   on the first --speed-prompts prompts, interleaved per prompt and round (the host is shared: ratios of the
   same round count), and whether each speculative output is the plain output token for token.
Env: TEACHER, BIN (default target/release), THREADS (default 2), NICE (default "nice -n 19").
"""
import argparse, json, os, statistics, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--n", type=int, default=128)
ap.add_argument("--speed-prompts", type=int, default=4)
ap.add_argument("--draft-vocab", default="0")
ap.add_argument("--drafts", default="truncated,distilled")
ap.add_argument("--skip-agreement", action="store_true")
ap.add_argument("--skip-acceptance", action="store_true")
ap.add_argument("--skip-speed", action="store_true")
ap.add_argument("--p-min", default=None, help="--draft-p-min of every speculative run (bushu's default: 0.75)")
ap.add_argument("--draft-max", default=None, help="--draft-max of every speculative run (bushu's default: 8)")
ap.add_argument("--heldout-bytes", type=int, default=12000, help="bytes of each held-out text")
ap.add_argument("--acceptance-prompts", type=int, default=0, help="0: every held-out prompt")
a = ap.parse_args()
TEACHER = os.environ.get("TEACHER", os.path.expanduser("~/.cache/bushu/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
BIN = os.environ.get("BIN", "target/release")
THREADS = os.environ.get("THREADS", "2")
NICE = os.environ.get("NICE", "nice -n 19").split()
SHARED = os.environ.get("SHARED", "../shared")
# A draft name is OUTDIR/draft-NAME.gguf, or `self-speculate L` (the target's own first L layers, untrained).
drafts = {d: d if d.startswith("self-speculate ") else os.path.join(a.out, f"draft-{d}.gguf") for d in a.drafts.split(",")}
vocabs = [int(v) for v in a.draft_vocab.split(",")]
ev = os.path.join(a.out, "eval")
os.makedirs(ev, exist_ok=True)


def sh(args):
    r = subprocess.run(NICE + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr}")
    return r.stdout


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; threads {THREADS}; load average at start {os.getloadavg()[0]:.1f}\n")

# 1. Held-out text.
def cat_sorted(paths):
    return b"".join(open(p, "rb").read() for p in sorted(paths))

held = {
    "shakespeare val.txt": open(f"{SHARED}/testdata/shakespeare/val.txt", "rb").read()[: a.heldout_bytes],
    "docs past the training slice": cat_sorted(
        [os.path.join("docs", f) for f in os.listdir("docs") if f.endswith(".md")]
    )[150000 : 150000 + a.heldout_bytes],
    "Rust source past the training slice": cat_sorted(
        [os.path.join(r, f) for r, _, fs in os.walk("crates/bushu/src") for f in fs if f.endswith(".rs")]
    )[200000 : 200000 + a.heldout_bytes],
}
if not a.skip_agreement:
    print("| held-out text | draft | top-1 agreement with the teacher | KL (nats) | draft perplexity |")
    print("|---|---|---|---|---|")
    for name, data in held.items():
        path = os.path.join(ev, name.split()[0] + ".txt")
        open(path, "wb").write(data.decode("utf-8", "ignore").encode())
        for d, f in drafts.items():
            if d.startswith("self-speculate "):
                continue
            j = json.loads(sh([f"{BIN}/bushu", "perplexity", "-m", f, "-f", path, "--kl-base", TEACHER, "-c", "256",
                               "--threads", THREADS, "--json"]))
            print(f"| {name} | {d} | {100 * j['top1_agreement']:.1f} % | {j.get('kl_mean', j.get('kl', float('nan'))):.3f} | {j.get('perplexity', float('nan')):.2f} |",
                  flush=True)
    print()

# 2. Held-out chat prompts in SmolLM2's template.
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
lines = [l.strip() for l in open("bench/prompts/distill/heldout.txt") if l.strip()]
lines += [l.strip() for i, l in enumerate(open("bench/prompts/chat-prompts.txt"), 1) if i % 7 == 0 and l.strip()]
prompts = []
for i, l in enumerate(lines):
    p = os.path.join(ev, f"prompt-{i:02d}.txt")
    open(p, "w").write(f"{SYSTEM}<|im_start|>user\n{l}<|im_end|>\n<|im_start|>assistant\n")
    prompts.append(p)


def run(prompt, draft=None, vocab=0):
    args = [f"{BIN}/bushu", "run", "-m", TEACHER, "-f", prompt, "-n", str(a.n), "--temperature", "0",
            "--threads", THREADS, "--json"]
    if draft and a.p_min is not None:
        args += ["--draft-p-min", a.p_min]
    if draft and a.draft_max is not None:
        args += ["--draft-max", a.draft_max]
    if draft and draft.startswith("self-speculate "):
        args += ["--self-speculate", draft.split()[1]]
    elif draft:
        args += ["--draft-model", draft]
        if vocab:
            args += ["--draft-vocab", str(vocab)]
    out = sh(args)
    return json.loads(out.strip().splitlines()[-1])


configs = [(d, v) for d in drafts for v in vocabs]
label = lambda d, v: d + (f" --draft-vocab {v}" if v else "")

acc_prompts = prompts[: a.acceptance_prompts] if a.acceptance_prompts else prompts
if not a.skip_acceptance:
    prompts_all, prompts = prompts, acc_prompts
    print(f"Acceptance over {len(prompts)} held-out prompts (greedy, -n {a.n}; one run each):\n")
    print("| draft | drafted | accepted | acceptance rate | mean accepted length | outputs identical to plain |")
    print("|---|---|---|---|---|---|")
    plain = {p: run(p)["tokens"] for p in prompts}
    for d, v in configs:
        dn = da = steps = same = 0
        for p in prompts:
            j = run(p, drafts[d], v)
            s = j["speculative"]
            dn += s["draft_n"]
            da += s["draft_n_accepted"]
            steps += s["draft_steps"]
            same += j["tokens"] == plain[p]
        # Tokens per target pass that verified drafts (accepted drafts + the target's own token), pooled.
        mal = (da + steps) / steps if steps else float("nan")
        print(f"| {label(d, v)} | {dn} | {da} | {100 * da / max(dn, 1):.1f} % | {mal:.2f} | {same}/{len(prompts)} |",
              flush=True)
    print()
    prompts = prompts_all
if a.skip_speed:
    sys.exit(0)

# 3. Speed, interleaved.
speed = prompts[: a.speed_prompts]
tps = {("plain", 0): []}
for c in configs:
    tps[c] = []
ratios = {c: [] for c in configs}
identical = {c: 0 for c in configs}
for r in range(a.rounds):
    for p in speed:
        base = run(p)
        tps[("plain", 0)].append(base["timings"]["decode_tokens_per_s"])
        for c in configs:
            j = run(p, drafts[c[0]], c[1])
            t = j["timings"]["decode_tokens_per_s"]
            tps[c].append(t)
            ratios[c].append(t / base["timings"]["decode_tokens_per_s"])
            identical[c] += j["tokens"] == base["tokens"]
            print(f"  round {r + 1} {os.path.basename(p)} {label(*c)}: {t:.1f} tok/s vs plain "
                  f"{base['timings']['decode_tokens_per_s']:.1f}, acceptance {100 * j['speculative']['acceptance_rate']:.0f} %",
                  file=sys.stderr, flush=True)
print(f"Decode speed, {len(speed)} prompts x {a.rounds} rounds, -n {a.n}, interleaved "
      f"(load average at the end {os.getloadavg()[0]:.1f}):\n")
print("| decoding | decode tok/s (median) | speedup vs plain (median of same-round ratios) | identical to plain |")
print("|---|---|---|---|")
print(f"| plain greedy | {statistics.median(tps[('plain', 0)]):.1f} | 1.00x | - |")
for c in configs:
    print(f"| {label(*c)} | {statistics.median(tps[c]):.1f} | {statistics.median(ratios[c]):.2f}x | "
          f"{identical[c]}/{len(speed) * a.rounds} |")
