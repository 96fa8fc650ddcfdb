//! `bushu run`: generate from a prompt, streaming text, or one JSON object with `--json`.

use super::{build_model, ModelArgs};
use crate::generate::{generate, GenerateOptions};
use crate::sampling::SamplingParams;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(short, long)]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Do not add the BOS token to the prompt.
    #[arg(long)]
    pub no_bos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// With --json, report the top-K log-probabilities of each generated token.
    #[arg(long)]
    pub logprobs: Option<usize>,
}

pub fn run(a: RunArgs) -> Result<()> {
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    if a.logprobs == Some(0) {
        bail!("--logprobs must be at least 1");
    }
    let (file, load_ms) = a.model.open()?;
    let ctx = context_size(a.ctx, file.config.max_ctx)?;
    let model = build_model(&file)?;
    let tok = &file.tokenizer;
    let prompt = tok.encode(&a.prompt, !a.no_bos)?;
    let opts = GenerateOptions { max_tokens: a.n, sampling, logprobs: a.logprobs, eos_ids: file.eos_ids.clone() };
    let mut state = model.new_state(ctx);
    if a.json {
        let g = generate(&model, tok, &mut state, &prompt, &opts, &mut |_| {})?;
        let mut out = json!({
            "prompt_tokens": prompt,
            "tokens": g.tokens,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "timings": {
                "load_ms": load_ms,
                "prefill_ms": g.timings.prefill_ms,
                "decode_ms": g.timings.decode_ms,
                "prefill_tokens_per_s": g.timings.prefill_tokens_per_s,
                "decode_tokens_per_s": g.timings.decode_tokens_per_s,
            },
        });
        if a.logprobs.is_some() {
            out["logprobs"] = serde_json::to_value(&g.logprobs)?;
        }
        println!("{out}");
    } else {
        let mut stdout = std::io::stdout().lock();
        let g = generate(&model, tok, &mut state, &prompt, &opts, &mut |s| {
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        })?;
        drop(stdout);
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s, finish: {:?}]",
            prompt.len(),
            g.timings.prefill_tokens_per_s,
            g.tokens.len(),
            g.timings.decode_tokens_per_s,
            g.finish_reason
        );
    }
    Ok(())
}

/// The context size to allocate: what was asked, else the model's own capped at 4096.
pub fn context_size(asked: Option<usize>, model_max: usize) -> Result<usize> {
    match asked {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(model_max.min(4096)),
    }
}
