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
