//! `bushu tradeoff --method semi-ar --medusa HEADS.gguf`: semi-autoregressive decoding with Medusa heads
//! ([`crate::spec_decode::semi_ar`], lossy); the knob is `K`, the head tokens emitted unverified after the
//! model's own token in each forward pass (0 to the number of heads; `K = 0` is plain decoding).
//!
//! - **Compute** is counted in forward passes, not multiply-adds: a pass over a group of `K + 1` tokens
//!   does the same multiply-adds per token as `K + 1` plain steps (what it saves is reading the weights
//!   `K` more times, the cost of memory-bound decoding). The column is forward passes per generated
//!   token of the greedy continuations, the prompt's pass counting as the first token's — `1 /
//!   tokens_per_pass` of `bushu run --medusa H --semi-ar K --json` — as a fraction of plain decoding's
//!   one pass per token. The teacher-forced scoring's passes are not counted (they would be fewer too).
//! - **Tokens/s** counts the tokens emitted by the passes after the prompt's (the first group, `K + 1`
//!   tokens, comes with the prompt's pass) over those passes' time: for `K = 0` what plain decoding's
//!   tokens/s counts.
//! - **KL, teacher-forced**: the text is fed in the groups decoding would feed (the prompt, then `K + 1`
//!   tokens per pass); the distribution the method gives a token is the model's own for the first
//!   token after a pass and head `i`'s (top-1 of which decoding would emit) for the `i + 1`-th after it,
//!   so the KL measures how far the unverified guesses' distributions are from the model's. For `K = 0`
//!   every pass is one token: the model itself.
//! - **Greedy continuations** run [`SemiArDecoder`], the decoder `bushu run --semi-ar` runs.

use super::{Compute, Method};
use crate::generate::{Decoder, GenerateOptions};
use crate::model::llama::State;
use crate::model::{Logits, Model};
use crate::sampling::SamplingParams;
use crate::spec_decode::medusa::MedusaHeads;
use crate::spec_decode::semi_ar::SemiArDecoder;
use anyhow::{bail, Result};
use std::time::Instant;

pub struct SemiArMethod<'m> {
    model: &'m Model,
    heads: MedusaHeads,
}

impl<'m> SemiArMethod<'m> {
    /// Semi-AR decoding of `model` with `heads` (loaded for it: [`MedusaHeads::load`]).
    pub fn new(model: &'m Model, heads: MedusaHeads) -> Result<SemiArMethod<'m>> {
        if heads.dim != model.config.dim {
            bail!(
                "the Medusa heads are {} wide, the model {}",
                heads.dim,
                model.config.dim
            );
        }
        Ok(SemiArMethod { model, heads })
    }

    fn k(&self, v: f64) -> Result<usize> {
        self.check_point(v)?;
        Ok(v as usize)
    }
}

impl Method for SemiArMethod<'_> {
    fn name(&self) -> &'static str {
        "semi-ar"
    }

    fn knob(&self) -> &'static str {
        "K (head tokens per pass)"
    }

    fn compute_header(&self) -> &'static str {
        "forward passes per token (fraction of plain)"
    }

    fn compute_axis(&self) -> &'static str {
        "forward passes per generated token (fraction of plain decoding's)"
    }

    fn default_points(&self) -> Vec<f64> {
        (0..=self.heads.len()).map(|k| k as f64).collect()
    }

    fn check_point(&self, v: f64) -> Result<()> {
        let h = self.heads.len();
        if !v.is_finite() || v < 0.0 || v.fract() != 0.0 {
            bail!("--points: K is a whole number of head tokens per pass (0 to {h}), got {v}");
        }
        if v > h as f64 {
            bail!("--points: K = {v} but the heads file has {h} heads (K is 0 to {h})");
        }
        Ok(())
    }

    fn score(&mut self, v: f64, tokens: &[u32], from: usize, row: &mut dyn FnMut(usize, &[f32])) -> Result<Compute> {
        let k = self.k(v)?;
        let (model, vocab) = (self.model, self.model.config.vocab_size);
        let mut state = model.new_state(tokens.len());
        // `preds`: the distributions of tokens `q + 1 ..= q + 1 + k` after the pass whose last row is `q`:
        // the model's own, then the heads'.
        let mut preds = Vec::new();
        let mut head_logits = Vec::new();
        let mut pass = |state: &mut State, group: &[u32], preds: &mut Vec<f32>| -> Result<()> {
            let logits = model.forward(state, group, Logits::Last)?;
            preds.clear();
            preds.extend_from_slice(logits);
            if k > 0 {
                let h = state.hidden().to_vec();
                self.heads.logits(model, &h, k, &mut head_logits);
                preds.extend_from_slice(&head_logits);
            }
            Ok(())
        };
        pass(&mut state, &tokens[..from], &mut preds)?;
        let mut q = from - 1;
        let t0 = Instant::now();
        for i in from..tokens.len() - 1 {
            // Row `i` is the distribution of token `i + 1`.
            if i + 1 > q + 1 + k {
                pass(&mut state, &tokens[q + 1..=q + 1 + k], &mut preds)?;
                q += k + 1;
            }
            let j = i - q;
            row(i, &preds[j * vocab..(j + 1) * vocab]);
        }
        // Compute is that of the greedy continuations (module documentation).
        Ok(Compute {
            seconds: t0.elapsed().as_secs_f64(),
            ..Compute::default()
        })
    }

    fn generate(&mut self, v: f64, prompt: &[u32], n: usize) -> Result<(Vec<u32>, Compute)> {
        let k = self.k(v)?;
        let opts = GenerateOptions::new(n, SamplingParams::greedy(), Vec::new());
        let mut state = self.model.new_state(prompt.len() + n);
        let mut dec = SemiArDecoder::new(self.model, &mut state, &self.heads, k, &opts)?;
        dec.prefill(prompt)?;
        let t0 = Instant::now();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let t = dec.choose()?;
            out.push(t);
            if out.len() == n {
                break;
            }
            if dec.room() == 0 {
                bail!("semi-AR: the context is full after {} tokens", out.len());
            }
            dec.feed(t)?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let passes = dec.passes + 1;
        Ok((
            out,
            Compute {
                tokens: n.saturating_sub(k + 1),
                macs: passes as f64,
                full_macs: n as f64,
                layers: 0.0,
                seconds,
            },
        ))
    }

    fn notes(&mut self, _held: &super::Heldout) -> Result<String> {
        Ok(format!(
            "Semi-autoregressive decoding with {} Medusa heads (lossy: the heads' tokens are emitted unverified). \
             Compute is forward passes per generated token of the greedy continuations, the prompt's pass \
             counting as the first token's (1 / tokens per pass; plain decoding: 1); a pass over a group \
             does the multiply-adds of as many plain steps, it reads the weights once. Tokens/s counts the \
             tokens after the first group over the passes after the prompt's. KL is teacher-forced with the \
             text fed in groups of K + 1: a token's distribution is the model's own right after a pass and \
             a head's for the later tokens of the group.\n",
            self.heads.len()
        ))
    }
}
