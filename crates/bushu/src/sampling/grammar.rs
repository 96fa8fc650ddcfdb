//! Grammar masking: the tokens a structured-output [`crate::structured::Grammar`] does not allow next get
//! `-inf` (vLLM's and llama.cpp's grammar bitmask; llguidance computes the mask). First in the chain, so
//! that penalties, temperature and top-k/top-p work among the allowed tokens only.
//!
//! The processor keeps the sequence's [`GrammarState`], which follows the generated tokens of the
//! [`Context`] on each call (rolling back what a rewind removed): the mask is a function of the history
//! alone, as the [`super::LogitProcessor`] contract asks.

use super::{Candidates, Context, LogitProcessor};
use crate::structured::{Grammar, GrammarState};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct GrammarMask {
    state: GrammarState,
    /// Time spent computing masks, and how many (for measurements).
    pub mask_time: Duration,
    pub masks: usize,
}

impl GrammarMask {
    pub fn new(g: &Arc<Grammar>) -> GrammarMask {
        GrammarMask {
            state: g.state(),
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }
}

impl LogitProcessor for GrammarMask {
    fn process(&mut self, c: &mut Candidates, ctx: &Context) {
        let t0 = Instant::now();
        let generated = &ctx.tokens[ctx.prompt_len.min(ctx.tokens.len())..];
        let mask = self.state.mask(generated);
        for item in c.items.iter_mut() {
            if !mask.is_allowed(item.0) {
                item.1 = f32::NEG_INFINITY;
            }
        }
        c.sorted = false;
        self.mask_time += t0.elapsed();
        self.masks += 1;
    }
}
