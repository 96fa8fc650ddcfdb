//! Grammar masking: the tokens a structured-output [`crate::structured::Grammar`] does not allow next are
//! removed (vLLM's and llama.cpp's grammar bitmask; llguidance computes the mask). First in the chain, so
//! that penalties, temperature and top-k/top-p work among the allowed tokens only.
//!
//! The mask keeps the sequence's [`GrammarState`], which follows the generated tokens of the
//! [`Context`] on each call (rolling back what a rewind removed): the mask is a function of the history
//! alone, as the [`super::LogitProcessor`] contract asks.
//!
//! Rather than copying the whole vocabulary into the candidates and then banning what the grammar
//! forbids, the candidates are filled with the allowed tokens only, walking the mask's set bits (in id
//! order, so the candidates are exactly those a full fill and a ban would leave, in the same order): a
//! mask of a few tokens costs a few pushes, not a pass over 152k logits, and so does the rest of the chain.

use super::{Candidates, Context};
use crate::structured::{Grammar, GrammarState};
use llguidance::toktrie::SimpleVob;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct GrammarMask {
    state: GrammarState,
    /// Time spent computing masks and filling candidates, and how many (for measurements).
    pub mask_time: Duration,
    pub masks: usize,
    /// Time spent in [`GrammarMask::prepare`] (off the sampling path: overlapped with the pass).
    pub prepare_time: Duration,
}

impl GrammarMask {
    pub fn new(g: &Arc<Grammar>) -> GrammarMask {
        GrammarMask {
            state: g.state(),
            mask_time: Duration::ZERO,
            masks: 0,
            prepare_time: Duration::ZERO,
        }
    }

    /// At most `max` tokens the grammar forces after `generated` ([`GrammarState::forced`]).
    pub fn forced(&mut self, generated: &[u32], max: usize) -> Vec<u32> {
        self.state.forced(generated, max)
    }

    /// Computes ahead the masks after `generated` and after each of `drafts` in turn
    /// ([`GrammarState::prepare`]), for the next [`GrammarMask::fill`]s.
    pub fn prepare(&mut self, generated: &[u32], drafts: &[u32]) {
        let t0 = Instant::now();
        self.state.prepare(generated, drafts);
        self.prepare_time += t0.elapsed();
    }

    /// Greedy decoding under the grammar alone: the allowed token with the highest logit (the smallest
    /// id among equals, as a sort of the candidates would give), read from the mask's bits and the
    /// logits without building candidates; `None` when the mask allows no token of `logits`.
    pub fn argmax(&mut self, logits: &[f32], ctx: &Context) -> Option<u32> {
        let t0 = Instant::now();
        let generated = &ctx.tokens[ctx.prompt_len.min(ctx.tokens.len())..];
        let mask = self.state.mask(generated);
        let best = masked_argmax(&mask, logits);
        self.mask_time += t0.elapsed();
        self.masks += 1;
        best
    }

    /// Fills `c` with the tokens the grammar allows after `ctx`'s generated tokens and their `logits`,
    /// in id order.
    pub fn fill(&mut self, c: &mut Candidates, logits: &[f32], ctx: &Context) {
        let t0 = Instant::now();
        let generated = &ctx.tokens[ctx.prompt_len.min(ctx.tokens.len())..];
        let mask = self.state.mask(generated);
        c.items.clear();
        mask.iter_set_entries(|i| {
            if let Some(&l) = logits.get(i) {
                c.items.push((i as u32, l));
            }
        });
        c.sorted = false;
        self.mask_time += t0.elapsed();
        self.masks += 1;
    }
}

/// The token of `logits` with the highest logit among those `mask` allows (the smallest id among
/// equals), walking the mask's words and their set bits; `None` when it allows none of them.
pub fn masked_argmax(mask: &SimpleVob, logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (w, &bits) in mask.as_slice().iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let i = w * 32 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(&l) = logits.get(i) else { break };
            if best.is_none_or(|(_, b)| l.total_cmp(&b).is_gt()) {
                best = Some((i, l));
            }
        }
    }
    best.map(|(i, _)| i as u32)
}
