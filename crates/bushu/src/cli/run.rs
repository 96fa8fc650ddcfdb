//! `bushu run`: generate from a prompt, streaming text, or one JSON object with `--json`.
//! Decoding strategy: sampling/greedy (default), `--beams N`, `--penalty-alpha` (contrastive search),
//! `--amateur PATH` (contrastive decoding, greedy/sampled or with `--beams`).

use super::ModelArgs;
use crate::generate::contrastive::{generate_contrastive, CdParams};
use crate::generate::{generate, GenerateOptions, Generation, Strategy};
use crate::sampling::beam::{BeamParams, EarlyStopping};
use crate::sampling::{PenaltyWindow, SamplingParams};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

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
    /// Keep the K most likely tokens (0: all). Also contrastive search's candidate count.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: all).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep tokens with probability at least P times the most likely one's (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CTRL repetition penalty (1: off): seen tokens' logits divided (if > 0) or multiplied (if < 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Subtract this from the logit of every token already seen (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Subtract this times its count from the logit of every token already seen (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// The penalties look at the last N tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub penalty_last_n: usize,
    /// The penalties ignore the prompt's tokens.
    #[arg(long)]
    pub penalty_skip_prompt: bool,
    /// Never repeat an n-gram of this many tokens.
    #[arg(long, allow_negative_numbers = true)]
    pub no_repeat_ngram: Option<i64>,
    /// Add BIAS to token ID's logit (`ID=BIAS`, BIAS may be -inf); repeatable.
    #[arg(long, value_name = "ID=BIAS", allow_negative_numbers = true)]
    pub logit_bias: Vec<String>,
    /// Stop when the text contains STRING (never included in the output); repeatable.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Beam search with N beams (1: no beam search).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub beams: i64,
    /// With --beams, return the N best sequences (with --json).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub num_return: i64,
    /// With --beams, the exponent of the length dividing sequence scores (> 0 favours longer).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// With --beams: true (stop when N sequences are done), false (HF heuristic), never.
    #[arg(long, default_value = "false")]
    pub early_stopping: String,
    /// Contrastive decoding against this smaller model (same tokenizer).
    #[arg(long)]
    pub amateur: Option<PathBuf>,
    /// Contrastive decoding plausibility threshold: keep tokens with p ≥ ALPHA · max p.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub cd_alpha: f32,
    /// Contrastive decoding: temperature of the amateur's distribution.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub cd_amateur_temperature: f32,
    /// Contrastive search (Su et al. 2022) with this degeneration penalty α, among --top-k tokens.
    #[arg(long, allow_negative_numbers = true)]
    pub penalty_alpha: Option<f32>,
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

/// Parses `ID=BIAS`.
pub fn parse_logit_bias(s: &str) -> Result<(u32, f32)> {
    let (id, b) = s
        .split_once('=')
        .with_context(|| format!("--logit-bias wants ID=BIAS (got {s:?})"))?;
    let id: u32 = id
        .trim()
        .parse()
        .with_context(|| format!("--logit-bias: {id:?} is not a token id"))?;
    let b: f32 = b
        .trim()
        .parse()
        .with_context(|| format!("--logit-bias: {b:?} is not a number"))?;
    Ok((id, b))
}

/// The generation options the flags describe (everything checkable before loading a model).
pub fn options(a: &RunArgs, eos_ids: Vec<u32>) -> Result<GenerateOptions> {
    let no_repeat_ngram = match a.no_repeat_ngram {
        Some(n) if n <= 0 => bail!("--no-repeat-ngram must be at least 1 (got {n})"),
        Some(n) => n as usize,
        None => 0,
    };
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        seed: a.seed,
        repetition_penalty: a.repetition_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        penalty_window: PenaltyWindow {
            last_n: a.penalty_last_n,
            include_prompt: !a.penalty_skip_prompt,
        },
        no_repeat_ngram,
        logit_bias: a
            .logit_bias
            .iter()
            .map(|s| parse_logit_bias(s))
            .collect::<Result<_>>()?,
    };
    if a.beams < 1 {
        bail!("--beams must be at least 1 (got {})", a.beams);
    }
    if a.num_return < 1 || a.num_return > a.beams {
        bail!(
            "--num-return must be between 1 and --beams ({}), got {}",
            a.beams,
            a.num_return
        );
    }
    let strategy = if let Some(alpha) = a.penalty_alpha {
        if a.beams > 1 {
            bail!("--penalty-alpha (contrastive search) and --beams cannot be combined");
        }
        if a.amateur.is_some() {
            bail!("--penalty-alpha (contrastive search) and --amateur (contrastive decoding) cannot be combined");
        }
        Strategy::ContrastiveSearch {
            penalty_alpha: alpha,
            top_k: a.top_k,
        }
    } else if a.beams > 1 {
        Strategy::Beam(BeamParams {
            num_beams: a.beams as usize,
            num_return: a.num_return as usize,
            length_penalty: a.length_penalty,
            early_stopping: a
                .early_stopping
                .parse::<EarlyStopping>()
                .map_err(|e| anyhow::anyhow!("--early-stopping: {e}"))?,
        })
    } else {
        Strategy::Sample
    };
    let opts = GenerateOptions {
        max_tokens: a.n,
        sampling,
        logprobs: a.logprobs,
        eos_ids,
        stop: a.stop.clone(),
        strategy,
    };
    opts.validate()?;
    if a.amateur.is_some() {
        CdParams {
            alpha: a.cd_alpha,
            amateur_temperature: a.cd_amateur_temperature,
        }
        .validate()?;
    }
    Ok(opts)
}

pub fn run(a: RunArgs) -> Result<()> {
    let mut opts = options(&a, Vec::new())?;
    let (file, load_ms) = a.model.open()?;
    opts.eos_ids = file.eos_ids.clone();
    let ctx = context_size(a.ctx, file.config.max_ctx)?;
    let model = a.model.build(&file)?;
    let tok = &file.tokenizer;
    let prompt = tok.encode(&a.prompt, !a.no_bos)?;
    let mut state = model.new_state(ctx);
    let amateur = match &a.amateur {
        Some(path) => {
            let f = crate::model::load(path).with_context(|| format!("cannot open the amateur {}", path.display()))?;
            let m = a.model.build(&f)?;
            Some((f, m))
        }
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    let mut on_text = |s: &str| {
        if !a.json {
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        }
    };
    let g: Generation = match &amateur {
        Some((af, am)) => {
            let mut astate = am.new_state(ctx);
            let cd = CdParams {
                alpha: a.cd_alpha,
                amateur_temperature: a.cd_amateur_temperature,
            };
            generate_contrastive(
                (&model, tok, &mut state),
                (am, &af.tokenizer, &mut astate),
                &prompt,
                &opts,
                cd,
                &mut on_text,
            )?
        }
        None => generate(&model, tok, &mut state, &prompt, &opts, &mut on_text)?,
    };
    drop(stdout);
    if a.json {
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
            "kv_cache": {"type": state.cache.kv_type().name(), "bytes": state.cache.bytes(), "positions": ctx},
        });
        if a.logprobs.is_some() && !g.logprobs.is_empty() {
            out["logprobs"] = serde_json::to_value(&g.logprobs)?;
        }
        if !g.sequences.is_empty() {
            out["sequences"] = serde_json::to_value(&g.sequences)?;
        }
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s, finish: {}]",
            prompt.len(),
            g.timings.prefill_tokens_per_s,
            g.tokens.len(),
            g.timings.decode_tokens_per_s,
            serde_json::to_value(g.finish_reason)?.as_str().unwrap_or("?")
        );
        for (i, s) in g.sequences.iter().enumerate().skip(1) {
            eprintln!("[sequence {} score {:.4}] {}", i + 1, s.score, s.text);
        }
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
