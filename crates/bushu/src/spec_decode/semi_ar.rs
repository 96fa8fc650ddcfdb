//! Semi-autoregressive decoding with Medusa heads (lecture §6; issue 20) — **lossy**: every forward
//! pass emits a group of `K + 1` tokens — the target's own next token (sampled or greedy, as plain
//! decoding) and the top-1 guesses of the first `K` heads for the tokens after it — WITHOUT verifying
//! the guesses; the next pass runs the whole group (causally, one pass) and emits the next group from
//! its last row. Groups follow one another (semi-autoregressive: groups of tokens at once, groups in
//! sequence). `K = 0` is plain decoding exactly (same passes, same draws). The non-autoregressive
//! extreme is one group from the prompt's pass: `bushu run --non-ar` (at most `heads + 1` tokens).
//!
//! The heads' tokens are recorded in the sampler's history (penalties see them); their `logits` (for
//! `--logprobs`) are the head's own, the distribution each was chosen from. docs/ADAPTIVE.md has the
//! measured quality/compute curve.

use super::medusa::MedusaHeads;
use crate::generate::{check_prompt, run_decoder, Decoder, GenerateOptions, Generation, Strategy};
use crate::model::llama::State;
use crate::model::{Logits, Model};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};

/// The semi-autoregressive decoder: groups of `1 + k` tokens per pass.
pub struct SemiArDecoder<'a> {
    model: &'a Model,
    state: &'a mut State,
    heads: &'a MedusaHeads,
    k: usize,
    sampler: Sampler,
    /// The current group, the raw logits each token was chosen from, and how many were handed out.
    queue: Vec<u32>,
    rows: Vec<f32>,
    next: usize,
    head_logits: Vec<f32>,
    /// Forward passes after the prefill.
    pub passes: usize,
}

impl<'a> SemiArDecoder<'a> {
    /// `k` (≤ the number of heads) head tokens after the target's own per pass.
    pub fn new(
        model: &'a Model,
        state: &'a mut State,
        heads: &'a MedusaHeads,
        k: usize,
        opts: &GenerateOptions,
    ) -> Result<SemiArDecoder<'a>> {
        if k > heads.len() {
            bail!("--semi-ar {k}: the heads file has {} heads", heads.len());
        }
        Ok(SemiArDecoder {
            model,
            state,
            heads,
            k,
            sampler: Sampler::new(&opts.sampling)?,
            queue: Vec::new(),
            rows: Vec::new(),
            next: 0,
            head_logits: Vec::new(),
            passes: 0,
        })
    }

    /// The group after the last pass, whose last row's logits are `logits` (its hidden state in the state).
    fn group(&mut self, logits: Vec<f32>) {
        self.queue.clear();
        self.queue.push(self.sampler.sample(&logits));
        self.rows = logits;
        if self.k > 0 {
            let h = self.state.hidden().to_vec();
            self.heads.logits(self.model, &h, self.k, &mut self.head_logits);
            let vocab = self.model.config.vocab_size;
            for row in self.head_logits.chunks_exact(vocab) {
                let t = argmax(row);
                self.sampler.accept(t);
                self.queue.push(t);
            }
            self.rows.extend_from_slice(&self.head_logits);
        }
        self.next = 0;
    }
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

impl Decoder for SemiArDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.sampler.set_prompt(prompt);
        let logits = self.model.forward(self.state, prompt, Logits::Last)?.to_vec();
        self.group(logits);
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        let vocab = self.model.config.vocab_size;
        &self.rows[self.next * vocab..(self.next + 1) * vocab]
    }
    fn choose(&mut self) -> Result<u32> {
        let t = self.queue[self.next];
        self.next += 1;
        Ok(t)
    }
    fn feed(&mut self, _token: u32) -> Result<()> {
        if self.next == self.queue.len() {
            let group = std::mem::take(&mut self.queue);
            let logits = self.model.forward(self.state, &group, Logits::Last)?.to_vec();
            self.passes += 1;
            self.group(logits);
        }
        Ok(())
    }
    fn room(&self) -> usize {
        // The handed-out tokens of the group are not in the cache yet; the last one is plain decoding's
        // token in flight.
        (self.state.cache.capacity() + 1).saturating_sub(self.state.pos() + self.next)
    }
}

/// Generates from `prompt` semi-autoregressively with `k` of `heads` (see the module documentation;
/// lossy for `k > 0`). Returns the generation and the number of forward passes after the prefill.
pub fn generate_semi_ar(
    (model, tokenizer, state): (&Model, &Tokenizer, &mut State),
    prompt: &[u32],
    opts: &GenerateOptions,
    heads: &MedusaHeads,
    k: usize,
    on_text: &mut dyn FnMut(&str),
) -> Result<(Generation, usize)> {
    opts.validate()?;
    if opts.strategy != Strategy::Sample {
        bail!("semi-autoregressive decoding works with sampling or greedy decoding only, not beam search or contrastive search");
    }
    if opts.sampling.grammar.is_some() {
        bail!("semi-autoregressive decoding emits unverified guesses: it cannot follow a grammar (structured output)");
    }
    check_prompt(state, prompt)?;
    opts.sampling.validate_for_vocab(model.config.vocab_size)?;
    let mut dec = SemiArDecoder::new(model, state, heads, k, opts)?;
    let g = run_decoder(&mut dec, tokenizer, prompt, opts, on_text)?;
    Ok((g, dec.passes))
}
