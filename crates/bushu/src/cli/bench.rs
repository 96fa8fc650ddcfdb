//! `bushu bench`: prompt processing and generation speed, llama-bench style.
//!
//! `pp<N>`: one forward pass over `N` random tokens from an empty cache; `tg<N>`: `N` one-token forward
//! passes from an empty cache. Each test runs once to warm up, then `-r` times; tokens/s are reported as
//! mean ± sample standard deviation. `--json` prints a list of objects with llama-bench's keys
//! (`n_prompt`, `n_gen`, `n_threads`, `avg_ts`, `stddev_ts`, `samples_ts`) plus `model_bytes` (file size)
//! and `bandwidth_gbs` (weight bytes read per token times tokens/s: every matrix once per forward pass,
//! the embedding table one row per token), and `load_ms`: from opening the file to the logits of a
//! first one-token pass (mapping, checks, first touch of every page; small models also pack their
//! weights for the fast kernels, big ones pack in the background), the "load to first token" of a
//! cached file. The speed tests start once the weights are packed.
//!
//! `-f FILE`: the `tg` test generates greedily after that prompt (its prefill not timed; tokens/s over
//! the decode steps, no EOS so always `-n` tokens) rather than running random tokens — what speculative
//! decoding needs, since drafts of random tokens are not meaningful. With `--draft-model`, `--lookup`
//! or `--self-speculate` (the flags of `bushu run`; they need `-f`) that generation is speculative, and
//! the row adds a `speculative` object (proposer, `draft_n`, `draft_n_accepted`, acceptance rate, mean
//! accepted length) and whether the output equals plain greedy decoding's.

use super::spec::SpecArgs;
use super::ModelArgs;
use crate::generate::{generate, GenerateOptions};
use crate::model::llama::Logits;
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::spec_decode::{generate_speculative, SpecOptions, SpecStats, Speculation};
use anyhow::{bail, Result};
use clap::Args;
use kernels::Simd;
use std::time::Instant;

mod batched;
mod verify;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens of the prompt-processing test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: usize,
    /// Parallel sequences, llama-batched-bench style: `pp` prefills B prompts of `-p` tokens in one
    /// batched step, `tg` runs `-n` steps of one token per sequence over the paged KV cache the server
    /// uses (tokens/s over all sequences: batched-bench's S_PP and S_TG).
    #[arg(short = 'b', long = "batch", default_value_t = 1)]
    pub batch: usize,
    /// Speculative decoding's verification cost: one pass over K tokens (each size in this list) with
    /// logits for every row, after --depth cached positions; reports t(K) / t(1). Replaces -p / -n.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub verify: Vec<usize>,
    /// With --verify: cached positions before the verified tokens.
    #[arg(long, default_value_t = 256)]
    pub depth: usize,
    /// The tg test generates greedily after the prompt in this file (not random tokens); needed by
    /// speculative decoding.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Print JSON (a list of objects, one per test).
    #[arg(long)]
    pub json: bool,
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Weight bytes one forward pass reads: every matrix, plus one embedding row per token.
fn bytes_per_pass(model: &Model, tokens: usize) -> f64 {
    let embd = &model.weights.token_embd;
    let row = embd.nbytes / embd.shape.get(1).copied().unwrap_or(1).max(1);
    (model.weights.bytes_per_token() + tokens * row) as f64
}

/// Deterministic pseudo-random token ids below `vocab`.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x2545f4914f6cdd1du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.n_prompt == 0 && a.n_gen == 0 {
        bail!("nothing to run: -p and -n are both 0");
    }
    let spec = a.spec.options()?;
    if a.spec.medusa.is_some() {
        bail!("--medusa is for bushu run and chat (their --json reports the drafts and the speed)");
    }
    let speculating = spec.method != Speculation::Off;
    if speculating || a.file.is_some() {
        let what = if speculating { "speculative decoding" } else { "--file" };
        if a.batch > 1 {
            bail!("{what} in bench measures one sequence: it cannot be combined with -b");
        }
        if !a.verify.is_empty() {
            bail!("{what} and --verify cannot be combined");
        }
    }
    let prompt_text = match &a.file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read the prompt file {}: {e}", f.display()))?),
        None if speculating => bail!(
            "speculative decoding in bench measures tg after a prompt: give one with --file FILE (drafts of random tokens are not meaningful)"
        ),
        None => None,
    };
    let t_load = Instant::now();
    let (file, _) = a.model.open()?;
    let model = a.model.build(&file)?;
    let draft = super::spec::load_draft_for(&spec, &file, &model, &a.model)?;
    let real_prompt = match &prompt_text {
        Some(t) => {
            let p = file.tokenizer.encode(t, true)?;
            if p.is_empty() {
                bail!("the prompt file is empty");
            }
            Some(p)
        }
        None => None,
    };
    if !a.verify.is_empty() {
        model.weights.wait_packed();
        let prompt = tokens(
            a.depth + a.verify.iter().max().copied().unwrap_or(1),
            model.config.vocab_size,
        );
        let costs = verify::verify_costs(&model, &prompt, a.depth, &a.verify, a.repetitions)?;
        let t1 = costs.iter().find(|c| c.0 == 1).map(|c| c.1);
        let rows: Vec<_> = costs
            .iter()
            .map(|&(k, ms, std)| {
                serde_json::json!({"test": format!("verify{k}@d{}", a.depth), "k": k, "depth": a.depth,
                    "n_threads": kernels::pool::threads(), "avg_ms": ms, "stddev_ms": std,
                    "t_k_over_t_1": t1.map(|t1| ms / t1)})
            })
            .collect();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!("| k | ms per pass | t(k) / t(1) |\n| ---: | ---: | ---: |");
            for r in &rows {
                let ratio = r["t_k_over_t_1"].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
                println!(
                    "| {} | {:.2} ± {:.2} | {ratio} |",
                    r["k"],
                    r["avg_ms"].as_f64().unwrap_or(0.0),
                    r["stddev_ms"].as_f64().unwrap_or(0.0)
                );
            }
        }
        return Ok(());
    }
    model.forward(&mut model.new_state(1), &[0], Logits::Last)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    // The speed tests run on the packed weights.
    model.weights.wait_packed();
    // One sequence: the pp and tg tests each start from an empty cache; batched: the tg steps follow
    // the prompts, as in llama-batched-bench.
    let ctx = match (a.batch, &real_prompt) {
        // The prompt, the generated tokens, and room for the last verification pass's drafts.
        (1, Some(p)) => a.n_prompt.max(p.len() + a.n_gen + spec.length.max + 1),
        (1, None) => a.n_prompt.max(a.n_gen).max(1),
        _ => a.n_prompt + a.n_gen,
    };
    if ctx > model.config.max_ctx {
        bail!("context {ctx} exceeds the model's {}", model.config.max_ctx);
    }
    {
        let c = &model.config;
        let per_pos = a.model.kv_type.bytes_per_position(c.n_layers, c.kv_dim(), c.head_dim);
        crate::model::memory::ensure_fits(
            crate::model::memory::product(a.batch, ctx, per_pos),
            &format!("the KV cache of -b {} sequences of {ctx} positions", a.batch),
            "give a smaller -b, -p or -n",
        )?;
    }
    let (arch, vocab) = (model.config.arch.clone(), model.config.vocab_size);
    let mut subject = match a.batch {
        1 => Subject::One(model.new_state(ctx), model),
        b => Subject::Many(batched::runner(model, b, ctx)),
    };
    let threads = kernels::pool::threads();
    let name = a
        .model
        .model
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned());
    let params: usize = file.tensors.values().map(|t| t.numel()).sum();
    let prompt = tokens(a.n_prompt.max(a.n_gen), vocab);

    let mut results = Vec::new();
    for (test, n) in [("pp", a.n_prompt), ("tg", a.n_gen)] {
        if n == 0 {
            continue;
        }
        let (pp, reps) = (test == "pp", a.repetitions);
        let mut spec_row = None;
        let samples = match (&mut subject, &real_prompt) {
            (Subject::One(st, model), Some(p)) if !pp => {
                let tok = &file.tokenizer;
                let r = prompt_samples((model, tok, st), p, n, reps, &spec, draft.as_ref())?;
                spec_row = Some((r.1, r.2, p.len()));
                r.0
            }
            (Subject::One(st, model), _) => single_samples(model, st, &prompt, pp, n, reps)?,
            (Subject::Many(r), _) => batched::samples(r, a.batch, a.n_prompt, a.n_gen, pp, reps)?,
        };
        let model = subject.model();
        let (avg, std) = mean_std(&samples);
        // Tokens per forward pass: the prompts of every sequence, or one token of each.
        let per_pass = if pp { n * a.batch } else { a.batch };
        let per_token = bytes_per_pass(model, per_pass) / per_pass as f64;
        let label = match a.batch {
            1 => format!("{test}{n}"),
            b => format!("{test}{n} x{b}"),
        };
        let mut row = serde_json::json!({
            "model_filename": name,
            "model_type": format!("{arch} {}", dominant_type(&file)),
            "model_bytes": file.file_bytes,
            "model_n_params": params,
            "n_threads": threads,
            "n_prompt": if test == "pp" { n } else { 0 },
            "n_gen": if test == "tg" { n } else { 0 },
            "n_batch": a.batch,
            "test": label,
            "simd": Simd::active().name(),
            "precision": format!("{:?}", model.precision).to_lowercase(),
            "avg_ts": avg,
            "stddev_ts": std,
            "samples_ts": samples,
            "bandwidth_gbs": per_token * avg / 1e9,
            "load_ms": load_ms,
        });
        if let Some((stats, same, prompt_tokens)) = spec_row {
            row["prompt_tokens"] = serde_json::json!(prompt_tokens);
            if let Some((name, s)) = stats {
                row["test"] = serde_json::json!(format!("{label} spec"));
                row["speculative"] = serde_json::json!({
                    "proposer": name,
                    "draft_n": s.draft_n,
                    "draft_n_accepted": s.draft_n_accepted,
                    "acceptance_rate": s.acceptance_rate(),
                    "mean_accepted_length": s.mean_accepted_length(),
                    "target_passes": s.target_passes,
                    "switched_off": s.switched_off,
                    "pauses": s.pauses,
                    "tree_steps": s.tree_steps,
                    "tree_second_choices": s.tree_second_choices,
                    "same_output_as_plain": same,
                });
            }
        }
        results.push(row);
    }

    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!("| model | size | params | simd | threads | test | t/s | GB/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for r in &results {
        println!(
            "| {} | {:.2} GiB | {:.2} B | {} | {} | {} | {:.2} ± {:.2} | {:.1} |",
            r["model_type"].as_str().unwrap_or(""),
            file.file_bytes as f64 / (1u64 << 30) as f64,
            params as f64 / 1e9,
            r["simd"].as_str().unwrap_or(""),
            threads,
            r["test"].as_str().unwrap_or(""),
            r["avg_ts"].as_f64().unwrap_or(0.0),
            r["stddev_ts"].as_f64().unwrap_or(0.0),
            r["bandwidth_gbs"].as_f64().unwrap_or(0.0),
        );
    }
    println!("load to first token: {load_ms:.0} ms");
    for r in &results {
        if let Some(s) = r.get("speculative") {
            println!(
                "{}: {} after a {}-token prompt: {} drafted, {} accepted ({:.0} %), mean accepted length {:.2}, output {} plain greedy",
                r["test"].as_str().unwrap_or(""),
                s["proposer"].as_str().unwrap_or(""),
                r["prompt_tokens"],
                s["draft_n"],
                s["draft_n_accepted"],
                100.0 * s["acceptance_rate"].as_f64().unwrap_or(0.0),
                s["mean_accepted_length"].as_f64().unwrap_or(0.0),
                if s["same_output_as_plain"].as_bool() == Some(true) { "equal to" } else { "DIFFERENT from" }
            );
        }
    }
    Ok(())
}

/// A speculative run's proposer and what it did (`None`: plain decoding).
type Drafted = Option<(&'static str, SpecStats)>;

/// Tokens/s of `reps` greedy generations (after a warm-up) of `n` tokens after `prompt` from an empty
/// cache, speculative when `spec` asks for it (a fresh proposer each time: a draft model's cache starts
/// empty too); prefill excluded. With speculation, also what it did and whether the output equals
/// plain greedy decoding's (one plain generation more, untimed).
fn prompt_samples(
    (model, tok, st): (&Model, &crate::tokenizer::Tokenizer, &mut crate::model::llama::State),
    prompt: &[u32],
    n: usize,
    reps: usize,
    spec: &SpecOptions,
    draft: Option<&Model>,
) -> Result<(Vec<f64>, Drafted, bool)> {
    // No EOS: every run is n tokens long.
    let opts = GenerateOptions::new(n, SamplingParams::greedy(), Vec::new());
    let ctx = st.cache.capacity();
    let mut run = || -> Result<(Vec<u32>, f64, Drafted)> {
        st.cache.truncate(0);
        match super::spec::proposer(spec, draft, None, model, ctx, &opts.sampling)? {
            Some(mut p) => {
                let (g, s) =
                    generate_speculative((model, tok, st), prompt, &opts, p.as_mut(), spec.length, &mut |_| {})?;
                Ok((g.tokens, g.timings.decode_tokens_per_s, Some((p.name(), s))))
            }
            None => {
                let g = generate(model, tok, st, prompt, &opts, &mut |_| {})?;
                Ok((g.tokens, g.timings.decode_tokens_per_s, None))
            }
        }
    };
    let (tokens, _, stats) = run()?; // warm-up
    let samples = (0..reps).map(|_| run().map(|r| r.1)).collect::<Result<Vec<f64>>>()?;
    let same = match stats {
        Some(_) => {
            st.cache.truncate(0);
            generate(model, tok, st, prompt, &opts, &mut |_| {})?.tokens == tokens
        }
        None => true,
    };
    Ok((samples, stats, same))
}

/// What the tests run on: one sequence's state and the model, or the serving engine's batched runner.
enum Subject {
    One(crate::model::llama::State, Model),
    Many(crate::engine::model_runner::ModelRunner),
}

impl Subject {
    fn model(&self) -> &Model {
        match self {
            Subject::One(_, m) => m,
            Subject::Many(r) => &r.model,
        }
    }
}

/// Tokens/s of `reps` runs (after a warm-up) of one sequence: a `n`-token prompt in one pass, or `n`
/// one-token passes.
fn single_samples(
    model: &Model,
    st: &mut crate::model::llama::State,
    prompt: &[u32],
    pp: bool,
    n: usize,
    reps: usize,
) -> Result<Vec<f64>> {
    let mut run = || -> Result<f64> {
        st.cache.truncate(0);
        let t = Instant::now();
        if pp {
            model.forward(st, &prompt[..n], Logits::Last)?;
        } else {
            for &tok in &prompt[..n] {
                model.forward(st, &[tok], Logits::Last)?;
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    run()?; // warm-up
    (0..reps).map(|_| run()).collect()
}

/// The type of most bytes of the layers' weights (for the model column). The embedding and the
/// classifier are left out, as are the norms: llama-quantize keeps those at other types (a Q4_0 file of a
/// small model with a large vocabulary has most of its bytes in a Q8_0 or Q6_K embedding), and llama-bench
/// names the file by its layers' type.
fn dominant_type(file: &crate::model::ModelFile) -> String {
    let outside = |name: &str| {
        ["embd", "embed", "lm_head", "norm"].iter().any(|w| name.contains(w)) || name.starts_with("output.")
    };
    let mut by: std::collections::HashMap<kernels::DType, usize> = Default::default();
    for (name, t) in &file.tensors {
        if !outside(name) {
            *by.entry(t.dtype).or_default() += t.nbytes;
        }
    }
    if by.is_empty() {
        for t in file.tensors.values() {
            *by.entry(t.dtype).or_default() += t.nbytes;
        }
    }
    by.into_iter()
        .max_by_key(|e| e.1)
        .map(|e| e.0.name().to_owned())
        .unwrap_or_default()
}
