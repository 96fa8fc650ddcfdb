//! The knobs of the processor chain, as the CLI and the server take them, with their validation.

use crate::structured::Grammar;
use anyhow::Result;
use std::fmt;
use std::sync::Arc;

/// A parameter outside its range. The library names the parameter as its field (`top_p`) and says what
/// is wrong; the layers above know how their users spell it (`--top-p` on the command line, the JSON
/// field in the server) and render it their way, which is why this is a type and not a string.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidParam {
    /// The parameter, as the library's field name (`top_p`, `num_beams`).
    pub name: &'static str,
    /// What is wrong, worded to follow the name: `must be in (0, 1] (got 0)`.
    pub problem: String,
}

impl InvalidParam {
    /// An [`InvalidParam`] as an `anyhow` error (what the validations return).
    pub fn error(name: &'static str, problem: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(InvalidParam {
            name,
            problem: problem.into(),
        })
    }
}

impl fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.problem)
    }
}

impl std::error::Error for InvalidParam {}

/// Which past tokens the repetition, presence and frequency penalties look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PenaltyWindow {
    /// Only the last `last_n` tokens (0: all of them).
    pub last_n: usize,
    /// Whether the prompt's tokens count (HF: yes, its `input_ids` include the prompt; llama.cpp: yes,
    /// within its `repeat_last_n` = 64 window).
    pub include_prompt: bool,
}

impl Default for PenaltyWindow {
    fn default() -> Self {
        PenaltyWindow {
            last_n: 0,
            include_prompt: true,
        }
    }
}

impl PenaltyWindow {
    /// The tokens of `ctx` inside the window.
    pub fn slice<'a>(&self, ctx: &super::Context<'a>) -> &'a [u32] {
        let t = ctx.tokens;
        let mut start = if self.include_prompt {
            0
        } else {
            ctx.prompt_len.min(t.len())
        };
        if self.last_n > 0 {
            start = start.max(t.len().saturating_sub(self.last_n));
        }
        &t[start..]
    }
}

/// Sampling parameters. The defaults keep plain temperature/top-k/top-p sampling: every other
/// processor starts disabled.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k.
    pub top_k: usize,
    /// 1 means no top-p.
    pub top_p: f32,
    /// 0 means no min-p.
    pub min_p: f32,
    pub seed: u64,
    /// CTRL repetition penalty θ (1: off): a seen token's logit is divided by θ if positive, multiplied
    /// if negative.
    pub repetition_penalty: f32,
    /// `logit - α·[token seen]` (0: off).
    pub presence_penalty: f32,
    /// `logit - α·count(token)` (0: off).
    pub frequency_penalty: f32,
    /// The tokens the three penalties above look at.
    pub penalty_window: PenaltyWindow,
    /// Never repeat an n-gram of this size (0: off).
    pub no_repeat_ngram: usize,
    /// Added to the logit of each listed token (`-inf` bans it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Structured output: only the tokens this grammar allows (`crate::structured`).
    pub grammar: Option<Arc<Grammar>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_window: PenaltyWindow::default(),
            no_repeat_ngram: 0,
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no processor at all.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(InvalidParam::error(
                "temperature",
                format!("must be a finite number >= 0 (got {})", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InvalidParam::error(
                "top_p",
                format!("must be in (0, 1] (got {})", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(InvalidParam::error(
                "min_p",
                format!("must be in [0, 1] (got {})", self.min_p),
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            let got = self.repetition_penalty;
            return Err(InvalidParam::error(
                "repetition_penalty",
                format!("must be a finite number > 0 (got {got})"),
            ));
        }
        if !self.presence_penalty.is_finite() {
            let got = self.presence_penalty;
            return Err(InvalidParam::error(
                "presence_penalty",
                format!("must be a finite number (got {got})"),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            let got = self.frequency_penalty;
            return Err(InvalidParam::error(
                "frequency_penalty",
                format!("must be a finite number (got {got})"),
            ));
        }
        for &(id, b) in &self.logit_bias {
            if b.is_nan() || b == f32::INFINITY {
                return Err(InvalidParam::error(
                    "logit_bias",
                    format!("must be a number or -inf (got {b} for token {id})"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the token ids against a vocabulary size.
    pub fn validate_for_vocab(&self, vocab: usize) -> Result<()> {
        if let Some(&(id, _)) = self.logit_bias.iter().find(|b| b.0 as usize >= vocab) {
            return Err(InvalidParam::error(
                "logit_bias",
                format!("names token {id}, outside the vocabulary of {vocab} tokens"),
            ));
        }
        if let Some(g) = &self.grammar {
            if g.n_vocab() < vocab {
                return Err(InvalidParam::error(
                    "grammar",
                    format!(
                        "was compiled for {} tokens, but the model has {vocab}: compile it for this model",
                        g.n_vocab()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}
