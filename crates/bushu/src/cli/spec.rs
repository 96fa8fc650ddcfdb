//! The speculative-decoding flags, one set for `run` and `serve`: which proposer (`--draft-model`,
//! `--lookup`, `--self-speculate`) and how long its drafts are (`--draft-max`, `--draft-min`,
//! `--draft-p-min`), checked before any model is loaded.

use crate::spec_decode::{DraftLengthParams, SpecOptions, Speculation};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding with this draft model (same vocabulary as the model).
    #[arg(long, value_name = "PATH")]
    pub draft_model: Option<PathBuf>,
    /// Speculative decoding: draft at most K tokens per step (the length adapts to acceptance).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub draft_max: usize,
    /// Speculative decoding: draft at least K tokens per step; shorter drafts are not verified (0: any).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub draft_min: usize,
    /// With --draft-model or --self-speculate: stop drafting when the draft's top probability is below P.
    #[arg(long, value_name = "P", default_value_t = 0.75, allow_negative_numbers = true)]
    pub draft_p_min: f32,
    /// With --draft-model: the draft's classifier computes only the first N vocabulary entries (FR-Spec;
    /// byte-level BPE numbers tokens most frequent first). 0: the whole vocabulary.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub draft_vocab: usize,
    /// Speculative decoding by prompt lookup: draft the tokens that followed the last n-gram's most recent
    /// earlier occurrence in the prompt and output.
    #[arg(long)]
    pub lookup: bool,
    /// With --lookup: match n-grams of at most N tokens (longest first).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub lookup_ngram: usize,
    /// Speculative decoding with the model's own first L layers as the draft (early exit).
    #[arg(long, value_name = "L")]
    pub self_speculate: Option<usize>,
}

impl SpecArgs {
    /// The flags, checked (everything but what needs the model: its layer count, the draft's
    /// vocabulary).
    pub fn options(&self) -> Result<SpecOptions> {
        let length = DraftLengthParams {
            max: self.draft_max,
            min: self.draft_min,
            ..DraftLengthParams::default()
        };
        length.validate()?;
        if !(0.0..=1.0).contains(&self.draft_p_min) {
            bail!("--draft-p-min must be in [0, 1] (got {})", self.draft_p_min);
        }
        if self.lookup_ngram == 0 {
            bail!("--lookup-ngram must be at least 1 (got 0)");
        }
        let modes = [self.draft_model.is_some(), self.lookup, self.self_speculate.is_some()];
        if modes.iter().filter(|&&m| m).count() > 1 {
            bail!("--draft-model, --lookup and --self-speculate cannot be combined: choose one proposer");
        }
        let method = match (&self.draft_model, self.self_speculate) {
            (Some(p), _) => Speculation::DraftModel(p.clone()),
            (_, Some(0)) => bail!("--self-speculate must be at least 1 (the number of layers drafting)"),
            (_, Some(l)) => Speculation::SelfSpeculate { layers: l },
            _ if self.lookup => Speculation::Lookup {
                ngram: self.lookup_ngram,
            },
            _ => Speculation::Off,
        };
        if self.draft_vocab > 0 && !matches!(method, Speculation::DraftModel(_)) {
            bail!("--draft-vocab restricts a draft model's classifier: it needs --draft-model");
        }
        Ok(SpecOptions {
            method,
            length,
            p_min: self.draft_p_min,
            draft_vocab: (self.draft_vocab > 0).then_some(self.draft_vocab),
        })
    }
}
