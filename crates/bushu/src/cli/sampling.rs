//! The sampling flags `bushu run` and `bushu chat` share, their one conversion to [`SamplingParams`],
//! and how library errors about a parameter are said in terms of the flag that sets it.

use crate::generate::ContextTooSmall;
use crate::model::GenerationDefaults;
use crate::sampling::{InvalidParam, PenaltyWindow, SamplingParams};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

/// The processor chain's flags. Temperature, top-k, top-p and min-p left unset take the model's own
/// values ([`GenerationDefaults`]: GGUF `general.sampling.*`, `generation_config.json`), else bushu's
/// defaults: temperature 0.8 (llama.cpp's) for `run`, 0 (greedy) for `chat`, top-k 40, top-p 0.95, min-p 0.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (`--temp` as in llama.cpp) [default: the model's, else 0.8 for
    /// run, 0 for chat].
    #[arg(long, visible_alias = "temp", allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens (0: all). Also contrastive search's candidate count [default: the
    /// model's, else 40].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P (1: all) [default: the model's, else 0.95].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Keep tokens with probability at least P times the most likely one's (0: off) [default: the model's,
    /// else 0].
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Random seed.
    #[arg(short = 's', long, default_value_t = 0)]
    pub seed: u64,
    /// CTRL repetition penalty (1: off): seen tokens' logits divided (if > 0) or multiplied (if < 0).
    #[arg(
        long,
        visible_alias = "repeat-penalty",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repetition_penalty: f32,
    /// Subtract this from the logit of every token already seen (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Subtract this times its count from the logit of every token already seen (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// The penalties look at the last N tokens only (0: all).
    #[arg(long, visible_alias = "repeat-last-n", default_value_t = 0)]
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
}

/// Which command's default temperature applies when neither a flag nor the model gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `run`: llama.cpp's 0.8.
    Run,
    /// `chat`: greedy, so that an answer is the exact model's, the same every time.
    Chat,
}

impl SamplingArgs {
    /// Temperature, top-k, top-p, min-p: the flag's, else the model's, else the command's default.
    pub fn resolved(&self, model: &GenerationDefaults, command: Command) -> (f32, usize, f32, f32) {
        let temperature = match command {
            Command::Run => GenerationDefaults::TEMPERATURE,
            Command::Chat => 0.0,
        };
        (
            self.temperature.or(model.temperature).unwrap_or(temperature),
            self.top_k.or(model.top_k).unwrap_or(40),
            self.top_p.or(model.top_p).unwrap_or(0.95),
            self.min_p.or(model.min_p).unwrap_or(0.0),
        )
    }

    /// The sampling parameters these flags describe for `command` on a model shipping `model`'s values,
    /// validated (errors name the flags).
    pub fn params(&self, model: &GenerationDefaults, command: Command) -> Result<SamplingParams> {
        let (temperature, top_k, top_p, min_p) = self.resolved(model, command);
        let no_repeat_ngram = match self.no_repeat_ngram {
            Some(n) if n <= 0 => bail!("--no-repeat-ngram must be at least 1 (got {n})"),
            Some(n) => n as usize,
            None => 0,
        };
        let p = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_window: PenaltyWindow {
                last_n: self.penalty_last_n,
                include_prompt: !self.penalty_skip_prompt,
            },
            no_repeat_ngram,
            logit_bias: self
                .logit_bias
                .iter()
                .map(|s| parse_logit_bias(s))
                .collect::<Result<_>>()?,
            grammar: None,
        };
        p.validate().map_err(|e| flag_error(e, &[]))?;
        Ok(p)
    }
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

/// Says a library error in the command line's terms: an [`InvalidParam`] names the flag that sets the
/// parameter (`top_p` → `--top-p`; `flags` lists the parameters whose flag is spelled otherwise, e.g.
/// `("num_beams", "--beams")`), and a [`ContextTooSmall`] says how to enlarge the context. Other errors
/// pass unchanged.
pub fn flag_error(e: anyhow::Error, flags: &[(&str, &str)]) -> anyhow::Error {
    if let Some(p) = e.downcast_ref::<InvalidParam>() {
        let flag = match flags.iter().find(|f| f.0 == p.name) {
            Some(f) => f.1.to_string(),
            None => format!("--{}", p.name.replace('_', "-")),
        };
        return anyhow!("{flag} {}", p.problem);
    }
    if let Some(c) = e.downcast_ref::<ContextTooSmall>() {
        return anyhow!("{c} (use --ctx to enlarge it)");
    }
    e
}
