//! `eval-medusa`: the measurements of docs/DISTILLATION.md, docs/SPECULATIVE.md and docs/ADAPTIVE.md for a
//! model and its Medusa heads, in one process over a file of prompts (one per line), each continued for
//! `n` tokens (no EOS, so every run is `n` tokens long):
//!
//! - plain greedy decoding (the reference: tokens, decode tokens/s);
//! - Medusa tree verification at each node budget: identical output (checked), mean accepted length,
//!   decode tokens/s, speedup over plain greedy;
//! - sampling at a temperature: plain, and Medusa with typical acceptance — the perplexity of each output
//!   under the base model (the quality cost of typical acceptance), with plain greedy's for reference;
//! - semi-autoregressive decoding for K = 0..heads and the one-pass non-autoregressive mode: tokens per
//!   forward pass, decode tokens/s, perplexity of the output under the base model, and greedy agreement
//!   with plain decoding (the fraction of positions holding plain greedy's token, and the mean length of
//!   the prefix shared with it).
//!
//! The perplexity of a continuation is `exp` of the mean negative log-likelihood of its tokens given
//! the prompt and the tokens before them, from one causal pass of the base model.

use anyhow::{bail, Context, Result};
use bushu::generate::{generate, GenerateOptions, Generation};
use bushu::model::{load, Logits, Model, ModelFile};
use bushu::sampling::SamplingParams;
use bushu::spec_decode::semi_ar::generate_semi_ar;
use bushu::spec_decode::{generate_speculative, DraftLengthParams, Medusa, MedusaHeads, SpecStats, Typical};
use std::path::Path;

/// Mean NLL (nats) of `out` after `prompt` under `model`.
pub fn continuation_nll(model: &Model, prompt: &[u32], out: &[u32]) -> Result<f64> {
    if out.is_empty() {
        return Ok(0.0);
    }
    let seq: Vec<u32> = prompt.iter().chain(out).copied().collect();
    let mut st = model.new_state(seq.len());
    let rows: Vec<usize> = (prompt.len() - 1..seq.len() - 1).collect();
    let logits = model.forward(&mut st, &seq, Logits::Rows(&rows))?;
    let v = model.config.vocab_size;
    let mut nll = 0.0f64;
    for (row, &t) in logits.chunks_exact(v).zip(out) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        nll += m + z.ln() - row[t as usize] as f64;
    }
    Ok(nll / out.len() as f64)
}

struct Run {
    tokens: Vec<u32>,
    decode_s: f64,
    passes: usize,
    stats: SpecStats,
}

fn from_gen(g: Generation, passes: usize, stats: SpecStats) -> Run {
    Run {
        decode_s: g.timings.decode_ms / 1000.0,
        tokens: g.tokens,
        passes,
        stats,
    }
}

/// Runs everything and prints Markdown tables.
#[allow(clippy::too_many_arguments)]
pub fn eval_medusa(
    model_path: &Path,
    heads_path: &Path,
    prompts: &Path,
    n: usize,
    trees: &[usize],
    temperature: f32,
    seed: u64,
    typical: Typical,
) -> Result<()> {
    let file: ModelFile = load(model_path).with_context(|| format!("the model {}", model_path.display()))?;
    let model = Model::new(&file)?;
    let heads = MedusaHeads::load(heads_path, &file)?;
    let text = std::fs::read_to_string(prompts).with_context(|| format!("cannot read {}", prompts.display()))?;
    let prompts: Vec<Vec<u32>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| file.tokenizer.encode(l, true))
        .collect::<Result<_>>()?;
    if prompts.is_empty() {
        bail!("no prompts in the file");
    }
    let tok = &file.tokenizer;
    let ctx = prompts.iter().map(Vec::len).max().unwrap_or(0) + n + 8;
    let greedy = GenerateOptions::new(n, SamplingParams::greedy(), Vec::new());
    let plain = |o: &GenerateOptions| -> Result<Vec<Run>> {
        prompts
            .iter()
            .map(|p| {
                let mut st = model.new_state(ctx);
                let g = generate(&model, tok, &mut st, p, o, &mut |_| {})?;
                Ok(from_gen(g, st.passes(), SpecStats::default()))
            })
            .collect()
    };
    let medusa = |o: &GenerateOptions, nodes: usize, rule: Option<Typical>| -> Result<Vec<Run>> {
        prompts
            .iter()
            .map(|p| {
                let mut st = model.new_state(ctx);
                let mut prop = Medusa::new(&heads, nodes, rule)?;
                let (g, s) = generate_speculative(
                    (&model, tok, &mut st),
                    p,
                    o,
                    &mut prop,
                    DraftLengthParams::default(),
                    &mut |_| {},
                )?;
                Ok(from_gen(g, st.passes(), s))
            })
            .collect()
    };
    let tps = |runs: &[Run]| {
        runs.iter().map(|r| r.tokens.len()).sum::<usize>() as f64 / runs.iter().map(|r| r.decode_s).sum::<f64>()
    };
    let ppl = |runs: &[Run]| -> Result<f64> {
        let mut s = 0.0;
        for (r, p) in runs.iter().zip(&prompts) {
            s += continuation_nll(&model, p, &r.tokens)?;
        }
        Ok((s / runs.len() as f64).exp())
    };
    let base = plain(&greedy)?;
    let base_tps = tps(&base);
    let base_ppl = ppl(&base)?;
    println!(
        "{} prompts x {n} tokens, {} heads\n\n| decoding | identical to plain greedy | mean accepted length | decode tok/s | speedup |\n|---|---|---|---|---|",
        prompts.len(),
        heads.len()
    );
    println!("| plain greedy | - | 1.00 | {base_tps:.1} | 1.00x |");
    for &nodes in trees {
        let runs = medusa(&greedy, nodes, None)?;
        let same = runs.iter().zip(&base).filter(|(a, b)| a.tokens == b.tokens).count();
        let mut s = SpecStats::default();
        for r in &runs {
            s.draft_n += r.stats.draft_n;
            s.draft_n_accepted += r.stats.draft_n_accepted;
            s.draft_steps += r.stats.draft_steps;
        }
        let t = tps(&runs);
        println!(
            "| Medusa tree of {nodes} | {same}/{} | {:.2} | {t:.1} | {:.2}x |",
            runs.len(),
            s.mean_accepted_length(),
            t / base_tps
        );
    }

    // Sampling: plain vs typical acceptance.
    let sampled = GenerateOptions::new(
        n,
        SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        },
        Vec::new(),
    );
    let ps = plain(&sampled)?;
    let nodes = trees.iter().copied().max().unwrap_or(16);
    let ty = medusa(&sampled, nodes, Some(typical))?;
    let mut s = SpecStats::default();
    for r in &ty {
        s.draft_n_accepted += r.stats.draft_n_accepted;
        s.draft_steps += r.stats.draft_steps;
    }
    println!(
        "\nSampling at temperature {temperature} (seed {seed}; the processor chain's defaults), typical acceptance ε = {}, δ = {}, tree of {nodes}:\n\n| decoding | perplexity of the output under the model | mean accepted length | decode tok/s |\n|---|---|---|---|",
        typical.epsilon, typical.delta
    );
    println!("| plain greedy | {base_ppl:.2} | 1.00 | {base_tps:.1} |");
    println!("| plain sampling | {:.2} | 1.00 | {:.1} |", ppl(&ps)?, tps(&ps));
    println!(
        "| Medusa + typical acceptance | {:.2} | {:.2} | {:.1} |",
        ppl(&ty)?,
        s.mean_accepted_length(),
        tps(&ty)
    );

    // Semi- and non-autoregressive.
    println!(
        "\nSemi-autoregressive (greedy base token + K heads' top-1, unverified):\n\n| K | tokens per forward pass | decode tok/s | perplexity under the model | agreement with plain greedy | mean shared prefix (tokens) |\n|---|---|---|---|---|---|"
    );
    let agree = |runs: &[Run]| {
        let (mut same, mut all, mut prefix) = (0usize, 0usize, 0usize);
        for (r, b) in runs.iter().zip(&base) {
            same += r.tokens.iter().zip(&b.tokens).filter(|(x, y)| x == y).count();
            all += r.tokens.len();
            prefix += r.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x == y).count();
        }
        (same as f64 / all.max(1) as f64, prefix as f64 / runs.len() as f64)
    };
    for k in 0..=heads.len() {
        let runs: Vec<Run> = prompts
            .iter()
            .map(|p| {
                let mut st = model.new_state(ctx);
                let (g, passes) = generate_semi_ar((&model, tok, &mut st), p, &greedy, &heads, k, &mut |_| {})?;
                Ok(from_gen(g, passes + 1, SpecStats::default()))
            })
            .collect::<Result<_>>()?;
        let per_pass = runs.iter().map(|r| r.tokens.len()).sum::<usize>() as f64
            / runs.iter().map(|r| r.passes).sum::<usize>() as f64;
        let (a, pre) = agree(&runs);
        println!(
            "| {k} | {per_pass:.2} | {:.1} | {:.2} | {:.1} % | {pre:.1} |",
            tps(&runs),
            ppl(&runs)?,
            100.0 * a
        );
    }
    // Non-autoregressive: one pass, heads + 1 tokens, against plain greedy's first heads + 1.
    let k = heads.len();
    let short = GenerateOptions::new(k + 1, SamplingParams::greedy(), Vec::new());
    let (mut same, mut all) = (0, 0);
    for (p, b) in prompts.iter().zip(&base) {
        let mut st = model.new_state(ctx);
        let (g, passes) = generate_semi_ar((&model, tok, &mut st), p, &short, &heads, k, &mut |_| {})?;
        assert_eq!(passes, 0);
        same += g.tokens.iter().zip(&b.tokens).filter(|(x, y)| x == y).count();
        all += g.tokens.len();
    }
    println!(
        "\nNon-autoregressive (one pass, {} tokens): {:.1} % of the tokens are plain greedy's.",
        k + 1,
        100.0 * same as f64 / all.max(1) as f64
    );
    Ok(())
}
