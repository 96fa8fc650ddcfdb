//! `bushu perplexity`: llama-perplexity's measurement (see [`crate::perplexity`]), optionally with the KL
//! divergence from a base model.

use super::ModelArgs;
use crate::model::load;
use crate::perplexity::{evaluate, tokenize_text, PplOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to evaluate.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(short, long, visible_alias = "ctx-size", default_value_t = 512)]
    pub ctx: usize,
    /// Tokens per forward pass within a chunk (default: the whole chunk).
    #[arg(short, long)]
    pub batch: Option<usize>,
    /// Evaluate only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// A base model (usually the F16 one): report the mean KL divergence from its next-token
    /// distributions and how often both models' top tokens agree. The base runs without
    /// `--int8-outlier-threshold` and with an f32 KV cache, so KL measures those options too.
    #[arg(long)]
    pub kl_base: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let (file, _) = a.model.open()?;
    let opts = a.model.options();
    let model = opts.build(&file).map_err(|e| super::sampling::flag_error(e, &[]))?;
    let base = match &a.kl_base {
        Some(p) => {
            let bf = load(p).with_context(|| format!("base model {}", p.display()))?;
            Some(opts.base().build(&bf)?)
        }
        None => None,
    };
    let text = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let Ok(text) = String::from_utf8(text) else {
        bail!("{} is not UTF-8 text", a.file.display());
    };
    let tok = &file.tokenizer;
    let tokens = tokenize_text(tok, &text)?;
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let opts = PplOptions {
        ctx: a.ctx,
        batch: a.batch.unwrap_or(a.ctx),
        max_chunks: a.chunks,
    };
    let t = Instant::now();
    let quiet = a.json;
    let r = evaluate(&model, base.as_ref(), &tokens, bos, opts, |i, n, ppl| {
        if !quiet {
            eprint!("[{}]{ppl:.4},", i + 1);
            if i + 1 == n {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    })
    .map_err(|e| super::sampling::flag_error(e, &[]))?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let mut j = json!({
            "perplexity": r.perplexity,
            "uncertainty": r.uncertainty,
            "nll_mean": r.nll_mean,
            "ctx": a.ctx,
            "chunks": r.chunks,
            "scored_tokens": r.count,
            "tokens": r.tokens,
            "seconds": secs,
        });
        if let Some(k) = r.kl {
            j["kl_mean"] = json!(k.kl_mean);
            j["kl_err"] = json!(k.kl_err);
            j["kl_max"] = json!(k.kl_max);
            j["top1_agreement"] = json!(k.top1_agreement);
            j["base_perplexity"] = json!(k.base_perplexity);
        }
        println!("{j}");
    } else {
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks of {}, {} tokens scored, {secs:.1} s)",
            r.perplexity, r.uncertainty, r.chunks, a.ctx, r.count
        );
        if let Some(k) = r.kl {
            println!("Base PPL:  {:.4}", k.base_perplexity);
            println!("Mean KLD:  {:.6} +/- {:.6}  (max {:.4})", k.kl_mean, k.kl_err, k.kl_max);
            println!("Same top:  {:.3} %", 100.0 * k.top1_agreement);
        }
    }
    Ok(())
}
