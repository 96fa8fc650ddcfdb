//! `eval-medusa`: the measurements of docs/DISTILLATION.md, docs/SPECULATIVE.md and docs/ADAPTIVE.md for a
//! model and its Medusa heads, in one process over a file of prompts (one per line), each continued for
//! `n` tokens (no EOS, so every run is `n` tokens long):
//!
//! - plain greedy decoding (the reference: tokens, decode tokens/s);
//! - Medusa tree verification at each node budget and heads' vocabulary ([`crate::medusa`]'s FR-Spec
//!   restriction): identical output (checked), mean accepted length, decode tokens/s, speedup over plain
//!   greedy. The runs are interleaved — for each prompt, plain greedy and then every configuration —
//!   so that a shared machine's load changes affect them alike; the speedup is the ratio of the summed
//!   tokens over the summed decode times of the same prompts, and the geometric mean of the per-prompt
//!   ratios is given beside it;
//! - sampling at a temperature: plain, and Medusa with typical acceptance — the perplexity of each output
//!   under the base model (the quality cost of typical acceptance), with plain greedy's for reference;
//! - semi-autoregressive decoding for K = 0..heads and the one-pass non-autoregressive mode: tokens per
//!   forward pass, decode tokens/s, perplexity of the output under the base model, and greedy agreement
//!   with plain decoding (the fraction of positions holding plain greedy's token, and the mean length of
//!   the prefix shared with it).
//!
//! With `chat` each prompt line is a user message rendered with the model's chat template, and the
//! runs stop at its end-of-turn tokens (the same place for plain and Medusa greedy: the same tokens).
//!
//! The perplexity of a continuation is `exp` of the mean negative log-likelihood of its tokens given
//! the prompt and the tokens before them, from one causal pass of the base model.

use crate::medusa::{encode_prompt, hidden_states};
use anyhow::{bail, Context, Result};
use bushu::chat::session::template_for;
use bushu::generate::{generate, GenerateOptions, Generation};
use bushu::model::{load, Logits, Model, ModelFile};
use bushu::sampling::SamplingParams;
use bushu::spec_decode::medusa::{top_k_probs, TOP_K};
use bushu::spec_decode::semi_ar::generate_semi_ar;
use bushu::spec_decode::{generate_speculative, DraftLengthParams, Medusa, MedusaHeads, SpecStats, Typical};
use std::path::PathBuf;

/// What `eval-medusa` measures.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub heads: PathBuf,
    pub prompts: PathBuf,
    /// Tokens generated per prompt (at most, with `chat`).
    pub n: usize,
    /// Tree node budgets.
    pub trees: Vec<usize>,
    /// Heads' vocabularies (0: the heads file's own).
    pub vocabs: Vec<usize>,
    pub temperature: f32,
    pub seed: u64,
    pub typical: Typical,
    pub chat: bool,
    /// Greedy trees only: no sampling, no semi-autoregressive rows.
    pub greedy_only: bool,
}

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
pub fn eval_medusa(eo: &EvalOptions) -> Result<()> {
    let (n, trees, temperature, seed, typical) = (eo.n, &eo.trees, eo.temperature, eo.seed, eo.typical);
    let file: ModelFile = load(&eo.model).with_context(|| format!("the model {}", eo.model.display()))?;
    let model = Model::new(&file)?;
    let heads = MedusaHeads::load(&eo.heads, &file)?;
    let text = std::fs::read_to_string(&eo.prompts).with_context(|| format!("cannot read {}", eo.prompts.display()))?;
    let (template, stops) = match eo.chat {
        true => {
            let (t, s, _) = template_for(&file)?;
            (Some(t), s)
        }
        false => (None, Vec::new()),
    };
    let prompts: Vec<Vec<u32>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| encode_prompt(&file, template.as_ref(), l))
        .collect::<Result<_>>()?;
    if prompts.is_empty() {
        bail!("no prompts in the file");
    }
    if trees.is_empty() || trees.contains(&0) {
        bail!("--trees must list node budgets of at least 1");
    }
    let variants: Vec<(usize, MedusaHeads)> = eo
        .vocabs
        .iter()
        .map(|&v| {
            let h = match v {
                0 => heads.clone(),
                v => heads.clone().with_vocab(Some(v))?,
            };
            Ok((h.rows_on(&model), h))
        })
        .collect::<Result<_>>()?;
    let tok = &file.tokenizer;
    let ctx = prompts.iter().map(Vec::len).max().unwrap_or(0) + n + 8;
    let greedy = GenerateOptions::new(n, SamplingParams::greedy(), stops.clone());
    let plain_one = |p: &[u32], o: &GenerateOptions| -> Result<Run> {
        let mut st = model.new_state(ctx);
        let g = generate(&model, tok, &mut st, p, o, &mut |_| {})?;
        Ok(from_gen(g, st.passes(), SpecStats::default()))
    };
    let plain = |o: &GenerateOptions| -> Result<Vec<Run>> { prompts.iter().map(|p| plain_one(p, o)).collect() };
    let medusa_one =
        |p: &[u32], o: &GenerateOptions, h: &MedusaHeads, nodes: usize, rule: Option<Typical>| -> Result<Run> {
            let mut st = model.new_state(ctx);
            let mut prop = Medusa::new(h, nodes, rule)?;
            let (g, s) = generate_speculative(
                (&model, tok, &mut st),
                p,
                o,
                &mut prop,
                DraftLengthParams::default(),
                &mut |_| {},
            )?;
            Ok(from_gen(g, st.passes(), s))
        };
    let medusa = |o: &GenerateOptions, nodes: usize, rule: Option<Typical>| -> Result<Vec<Run>> {
        prompts
            .iter()
            .map(|p| medusa_one(p, o, &variants[0].1, nodes, rule))
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
    // Greedy: for each prompt, plain and then every (tree, vocabulary) configuration, interleaved.
    let configs: Vec<(usize, usize)> = trees
        .iter()
        .flat_map(|&t| (0..variants.len()).map(move |v| (t, v)))
        .collect();
    // Warm-up (packed weight copies are made on first use): not measured.
    let warm = GenerateOptions::new(n.min(8), SamplingParams::greedy(), Vec::new());
    plain_one(&prompts[0], &warm)?;
    for (_, h) in &variants {
        medusa_one(&prompts[0], &warm, h, trees[0], None)?;
    }
    let mut base = Vec::new();
    let mut runs: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for p in &prompts {
        base.push(plain_one(p, &greedy)?);
        for (c, &(nodes, v)) in configs.iter().enumerate() {
            runs[c].push(medusa_one(p, &greedy, &variants[v].1, nodes, None)?);
        }
    }
    let base_tps = tps(&base);
    let base_ppl = ppl(&base)?;
    let generated = base.iter().map(|r| r.tokens.len()).sum::<usize>();
    println!(
        "{} prompts, {generated} tokens generated (at most {n} each{}), {} heads; plain greedy and every configuration run in turn for each prompt\n\n| decoding | heads' vocabulary | identical to plain greedy | mean accepted length | decode tok/s | speedup (summed) | speedup (geometric mean over prompts) |\n|---|---|---|---|---|---|---|",
        prompts.len(),
        if eo.chat { ", chat template, stopping at the end of the turn" } else { "" },
        heads.len()
    );
    println!("| plain greedy | - | - | 1.00 | {base_tps:.1} | 1.00x | 1.00x |");
    for (c, &(nodes, v)) in configs.iter().enumerate() {
        let rs = &runs[c];
        let same = rs.iter().zip(&base).filter(|(a, b)| a.tokens == b.tokens).count();
        let mut s = SpecStats::default();
        for r in rs {
            s.draft_n += r.stats.draft_n;
            s.draft_n_accepted += r.stats.draft_n_accepted;
            s.draft_steps += r.stats.draft_steps;
        }
        let t = tps(rs);
        let logs: Vec<f64> = rs
            .iter()
            .zip(&base)
            .filter(|(r, b)| r.decode_s > 0.0 && b.decode_s > 0.0 && !r.tokens.is_empty())
            .map(|(r, b)| (b.decode_s / r.decode_s * r.tokens.len() as f64 / b.tokens.len() as f64).ln())
            .collect();
        let geo = (logs.iter().sum::<f64>() / logs.len().max(1) as f64).exp();
        println!(
            "| Medusa tree of {nodes} | {} | {same}/{} | {:.2} | {t:.1} | {:.2}x | {geo:.2}x |",
            variants[v].0,
            rs.len(),
            s.mean_accepted_length(),
            t / base_tps
        );
    }
    // Each head's top-1 accuracy on the model's own greedy answers (held-out prompts): head i at the
    // answer's position t guesses token t + i + 1, as at inference.
    let k = heads.len();
    for (rows, h) in &variants {
        let (mut hits, mut all) = (vec![0usize; k], 0usize);
        let mut out = Vec::new();
        for (p, b) in prompts.iter().zip(&base) {
            let seq: Vec<u32> = p.iter().chain(&b.tokens).copied().collect();
            let hid = hidden_states(&model, &seq)?;
            let d = h.dim;
            // Positions from the one that chose the answer's first token; labels within the sequence.
            for t in p.len() - 1..seq.len().saturating_sub(k + 1) {
                h.scores(&model, &hid[t * d..(t + 1) * d], k, &mut out);
                for (i, row) in out.chunks_exact(*rows).enumerate() {
                    hits[i] += usize::from(argmax(row) == seq[t + i + 2]);
                }
                all += 1;
            }
        }
        let acc: Vec<String> = hits
            .iter()
            .map(|&x| format!("{:.1} %", 100.0 * x as f64 / all.max(1) as f64))
            .collect();
        println!(
            "\nHeads' top-1 accuracy on the model's greedy answers ({all} positions, vocabulary {rows}), heads 1..{k} (tokens t+2..t+{}): {}",
            k + 1,
            acc.join(", ")
        );
    }
    // What drafting costs per step (the heads' residual blocks, their classifier product, the top
    // candidates), next to a plain decode step (mean over the plain runs), for each vocabulary.
    let hid = hidden_states(&model, &prompts[0])?;
    let last = &hid[hid.len() - heads.dim..];
    let step_ms = 1000.0 / base_tps;
    let mut costs = Vec::new();
    let whole = heads.clone().with_vocab(None)?;
    for h in std::iter::once(&whole).chain(variants.iter().map(|(_, h)| h)) {
        let rows = h.rows_on(&model);
        let mut out = Vec::new();
        let reps = 20;
        h.scores(&model, last, k, &mut out); // warm-up
        let t = std::time::Instant::now();
        for _ in 0..reps {
            h.scores(&model, last, k, &mut out);
            for row in out.chunks_exact(rows) {
                std::hint::black_box(top_k_probs(row, TOP_K));
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        costs.push(format!("{rows} ids {ms:.2} ms ({:.0} %)", 100.0 * ms / step_ms));
    }
    println!(
        "\nDrafting cost per step ({k} heads; % of a plain decode step of {step_ms:.2} ms): {}",
        costs.join(", ")
    );
    if eo.greedy_only {
        return Ok(());
    }

    // Sampling: plain vs typical acceptance.
    let sampled = GenerateOptions::new(
        n,
        SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        },
        stops.clone(),
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
    let short = GenerateOptions::new(k + 1, SamplingParams::greedy(), stops.clone());
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

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}
