//! Speculative decoding as a [`Decoder`] of the ordinary generation loop ([`run_decoder`]): the loop
//! still takes one token at a time (and owns EOS, stop strings, the token limit, the context), while
//! the decoder hands out the tokens of its last verification step from a queue and runs the next step
//! only when the queue is empty. Tokens a step produced after a stop condition are simply not used.
//!
//! Under a structured-output grammar the decoder also fast-forwards (see [`crate::structured`]): when
//! the grammar forces tokens after the sequence, they are the step's drafts instead of the proposer's,
//! verified with [`Rule::Sample`] (the output stays plain decoding's, token for token); the proposer is
//! not asked at that step (a draft model catches up on the tokens it has not seen at its next proposal).
//! [`generate_fast_forward`] is this decoder without a proposer: plain decoding plus fast-forward.
//!
//! The sequence's invariant between steps: the target's cache holds the sequence but its last token,
//! whose logits a step computes first (row 0 of the verification pass), and the sampler's history holds
//! the generation's prompt and every token since. The sequence may start with tokens the cache held
//! before the prompt (the earlier turns of a chat, [`SpecDecoder::after`]): the proposers see them (a
//! lookup finds its n-grams there, a draft model reuses its own cache of them), the sampler does not,
//! exactly as in plain decoding.

use super::adaptive::{DraftLength, DraftLengthParams};
use super::proposer::{Proposal, Proposer};
use super::verify::{verify, verify_tree, verify_tree_typical, verify_with, Rule};
use super::SpecStats;
use crate::generate::{check_prompt, run_decoder, Decoder, GenerateOptions, Generation, Strategy};
use crate::model::llama::State;
use crate::model::{Logits, Model};
use crate::sampling::{Context, Sampler};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};

/// Speculative decoding with one target model and one proposer.
pub struct SpecDecoder<'a> {
    model: &'a Model,
    state: &'a mut State,
    sampler: Sampler,
    /// `None`: no speculation (fast-forward only).
    proposer: Option<&'a mut dyn Proposer>,
    length: DraftLength,
    /// At most this many grammar-forced tokens per pass (0: no fast-forward).
    forced_max: usize,
    prompt_len: usize,
    max_tokens: usize,
    /// Tokens handed out by `choose` so far.
    emitted: usize,
    /// The last step's tokens, handed out from `next` on, and the raw logits each was chosen from.
    queue: Vec<u32>,
    next: usize,
    rows: Vec<f32>,
    /// The whole sequence: the tokens cached before the prompt, the prompt, every token since (those
    /// of the queue included).
    seq: Vec<u32>,
    /// Positions the cache held before the prompt.
    start: usize,
    /// The last step asked the proposer for drafts (a plain step — a pause, a probe, forced tokens —
    /// did not).
    asked: bool,
    pub stats: SpecStats,
}

impl<'a> SpecDecoder<'a> {
    /// A decoder drafting with `proposer` (`None`: no speculation), fast-forwarding when
    /// `opts.fast_forward` and the sampling carries a grammar.
    pub fn new(
        model: &'a Model,
        state: &'a mut State,
        proposer: Option<&'a mut dyn Proposer>,
        opts: &GenerateOptions,
        length: DraftLengthParams,
    ) -> Result<SpecDecoder<'a>> {
        let forced_max = match opts.fast_forward && opts.sampling.grammar.is_some() {
            true => MAX_FORCED,
            false => 0,
        };
        Ok(SpecDecoder {
            model,
            state,
            sampler: Sampler::new(&opts.sampling)?,
            proposer,
            length: DraftLength::new(length)?,
            forced_max,
            prompt_len: 0,
            max_tokens: opts.max_tokens,
            emitted: 0,
            queue: Vec::new(),
            next: 0,
            rows: Vec::new(),
            seq: Vec::new(),
            start: 0,
            asked: false,
            stats: SpecStats::default(),
        })
    }

    /// Generation continues after `cached`, the tokens the target's cache holds (a conversation so
    /// far): the proposers draft from them too.
    pub fn after(mut self, cached: &[u32]) -> Self {
        self.seq = cached.to_vec();
        self
    }

    /// The cache length plain decoding leaves after generating `generated` tokens (every one but the
    /// last run through the model): the cache is rewound to it, forgetting verified tokens a stop
    /// condition left unused, so a conversation goes on from the cache plain decoding would have.
    pub fn settle(&mut self, generated: usize) {
        let plain = self.start + self.prompt_len + generated.saturating_sub(1);
        if self.state.pos() > plain {
            self.state.rewind(plain);
        }
    }

    /// Hands the proposer the final-norm hidden state of row `row` of the last target pass (the row
    /// that chose the sequence's last token).
    fn show_hidden(&mut self, row: usize) {
        let dim = self.model.config.dim;
        if let Some(p) = self.proposer.as_deref_mut() {
            if let Some(h) = self.state.hidden().get(row * dim..(row + 1) * dim) {
                p.hidden(h);
            }
        }
    }

    /// One draft-and-verify step after the sequence so far.
    fn step(&mut self) -> Result<()> {
        let t0 = std::time::Instant::now();
        let pos0 = self.state.pos();
        debug_assert_eq!(pos0 + 1, self.seq.len());
        let last = *self.seq.last().expect("a sequence");
        // Room for the verification pass (last token + drafts) and no drafts beyond the token limit.
        let room = self.state.cache.capacity() - pos0 - 1;
        let left = self.max_tokens.saturating_sub(self.emitted).saturating_sub(1);
        let forced = match self.forced_max.min(room).min(left) {
            0 => Vec::new(),
            n => self.sampler.forced_tokens(n),
        };
        if !forced.is_empty() {
            let proposal = Proposal {
                tokens: forced,
                ..Proposal::default()
            };
            let step = verify_with(
                self.model,
                self.state,
                &mut self.sampler,
                last,
                &proposal,
                &mut self.rows,
                Rule::Sample,
            )?;
            self.stats.forced_n += proposal.len();
            self.stats.forced_n_accepted += step.accepted;
            self.stats.forced_steps += 1;
            self.asked = false;
            self.stats.target_passes += 1;
            self.show_hidden(step.last_row);
            self.seq.extend_from_slice(&step.tokens);
            self.queue = step.tokens;
            self.next = 0;
            return Ok(());
        }
        let k = match self.proposer {
            Some(_) => self.length.k().min(room).min(left),
            None => 0,
        };
        let mut proposal = Proposal::default();
        let drafting = std::time::Instant::now();
        if let (true, Some(proposer)) = (k > 0, self.proposer.as_deref_mut()) {
            let seq = Context {
                tokens: &self.seq,
                prompt_len: self.start + self.prompt_len,
            };
            proposal = proposer.propose(&seq, k, self.model, self.state)?;
            if self.state.pos() != pos0 {
                bail!(
                    "the {} proposer left the target's cache at {} positions, not {pos0}",
                    proposer.name(),
                    self.state.pos()
                );
            }
            // A chain of at most k drafts; a tree of depth at most k, and as many nodes as there is room.
            proposal.truncate(if proposal.is_tree() { room } else { k });
            if !self.length.enough(proposal.depth()) {
                proposal = Proposal::default();
                proposer.accepted(0);
            }
        }
        let draft_secs = drafting.elapsed().as_secs_f64();
        let verifying = std::time::Instant::now();
        let typical = self.proposer.as_deref().and_then(|p| p.typical());
        let step = if let (true, false, Some(rule)) = (proposal.is_tree(), self.sampler.is_greedy(), typical) {
            verify_tree_typical(
                self.model,
                self.state,
                &mut self.sampler,
                last,
                &proposal,
                &mut self.rows,
                rule,
            )?
        } else if proposal.is_tree() {
            verify_tree(
                self.model,
                self.state,
                &mut self.sampler,
                last,
                &proposal,
                &mut self.rows,
            )?
        } else {
            verify(
                self.model,
                self.state,
                &mut self.sampler,
                last,
                &proposal,
                &mut self.rows,
            )?
        };
        if !proposal.is_empty() {
            if let Some(p) = self.proposer.as_deref_mut() {
                p.accepted(step.accepted);
            }
            // The length adapts to the tree's depth (its chain), whose nodes are drafted one by one, and
            // to the drafts the proposer was sure of.
            let depth = proposal.depth() - proposal.unsure;
            self.length.update(depth, step.accepted.min(depth));
            self.length.observe(proposal.depth(), step.accepted);
            let verify_secs = verifying.elapsed().as_secs_f64();
            // A draft model catching up after plain steps (a pause, a probe) is a one-off, not a cost
            // of drafting; catching up after the other half of a combined proposer drafted (lookup)
            // recurs, and is one.
            let drafting = (!proposal.caught_up || self.asked).then_some(draft_secs);
            self.length
                .costs(drafting, proposal.len(), verify_secs, proposal.len() + 1);
            self.stats.draft_n += proposal.len();
            self.stats.draft_n_accepted += step.accepted;
            self.stats.draft_steps += 1;
            if proposal.is_tree() {
                self.stats.tree_steps += 1;
                self.stats.tree_second_choices += usize::from(step.off_first);
            }
        }
        self.stats.target_passes += 1;
        // A step that asked the proposer is a speculative one, drafts or not (its draft passes count).
        self.length.timed(k > 0, t0.elapsed().as_secs_f64(), step.tokens.len());
        self.asked = k > 0;
        self.stats.switched_off = self.length.is_off();
        self.stats.pauses = self.length.pauses();
        self.show_hidden(step.last_row);
        self.seq.extend_from_slice(&step.tokens);
        self.queue = step.tokens;
        self.next = 0;
        Ok(())
    }
}

impl Decoder for SpecDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.start = self.state.pos();
        if self.seq.len() != self.start {
            bail!(
                "speculative decoding after {} tokens, but the cache holds {}",
                self.seq.len(),
                self.start
            );
        }
        self.sampler.set_prompt(prompt);
        self.prompt_len = prompt.len();
        self.seq.extend_from_slice(prompt);
        if let Some(p) = self.proposer.as_deref_mut() {
            p.prefill(&self.seq)?;
        }
        let logits = self.model.forward(self.state, prompt, Logits::Last)?;
        self.rows.clear();
        self.rows.extend_from_slice(logits);
        // The first token comes from the prefill's logits, as in plain decoding.
        self.queue = vec![self.sampler.sample(&self.rows)];
        self.seq.push(self.queue[0]);
        self.show_hidden(0);
        self.next = 0;
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        let vocab = self.model.config.vocab_size;
        &self.rows[self.next * vocab..(self.next + 1) * vocab]
    }
    fn choose(&mut self) -> Result<u32> {
        let t = self.queue[self.next];
        self.next += 1;
        self.emitted += 1;
        Ok(t)
    }
    fn feed(&mut self, _token: u32) -> Result<()> {
        if self.next == self.queue.len() {
            self.step()?;
        }
        Ok(())
    }
    fn room(&self) -> usize {
        // As if every handed-out token but the last were in the cache (plain decoding's count): the
        // cache itself may be ahead, holding tokens of the queue not handed out yet.
        let fed = self.start + self.prompt_len + self.emitted.saturating_sub(1);
        self.state.cache.capacity().saturating_sub(fed)
    }
}

/// Generates from `prompt` with speculative decoding (`opts.strategy` must be sampling or greedy):
/// the output has exactly the distribution of plain decoding with `opts` — token for token the same
/// when greedy. `proposer` drafts, `length` sets the draft length. Returns the generation and what speculation did.
pub fn generate_speculative(
    (model, tokenizer, state): (&Model, &Tokenizer, &mut State),
    prompt: &[u32],
    opts: &GenerateOptions,
    proposer: &mut dyn Proposer,
    length: DraftLengthParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<(Generation, SpecStats)> {
    opts.validate()?;
    if opts.strategy != Strategy::Sample {
        bail!(
            "speculative decoding works with sampling or greedy decoding only, not beam search or contrastive search"
        );
    }
    check_prompt(state, prompt)?;
    opts.sampling.validate_for_vocab(model.config.vocab_size)?;
    let mut dec = SpecDecoder::new(model, state, Some(proposer), opts, length)?;
    let g = run_decoder(&mut dec, tokenizer, prompt, opts, on_text)?;
    Ok((g, dec.stats))
}

/// At most this many grammar-forced tokens are fed in one pass.
pub const MAX_FORCED: usize = 32;

/// Plain decoding (sampling or greedy, `opts.strategy` must be [`Strategy::Sample`]) with
/// fast-forward under `opts.sampling.grammar` (see the module documentation): the tokens of plain
/// decoding, in fewer passes. Returns the generation and the passes' counts (`forced_*`,
/// `target_passes`).
pub fn generate_fast_forward(
    (model, tokenizer, state): (&Model, &Tokenizer, &mut State),
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<(Generation, SpecStats)> {
    opts.validate()?;
    if opts.strategy != Strategy::Sample {
        bail!("fast-forward works with sampling or greedy decoding only, not beam search or contrastive search");
    }
    check_prompt(state, prompt)?;
    opts.sampling.validate_for_vocab(model.config.vocab_size)?;
    let mut dec = SpecDecoder::new(model, state, None, opts, DraftLengthParams::default())?;
    let g = run_decoder(&mut dec, tokenizer, prompt, opts, on_text)?;
    Ok((g, dec.stats))
}
