//! Presence penalty (OpenAI): `logit - α·[token occurs in the window]` — a flat cost for any reuse.
//! Not in HF `generate`; llama.cpp `penalty_present`.

use super::{Candidates, Context, LogitProcessor, PenaltyWindow};
use std::collections::HashSet;

pub struct PresencePenalty {
    pub alpha: f32,
    pub window: PenaltyWindow,
}

impl PresencePenalty {
    pub fn new(alpha: f32, window: PenaltyWindow) -> Self {
        PresencePenalty { alpha, window }
    }
}

impl LogitProcessor for PresencePenalty {
    fn process(&mut self, c: &mut Candidates, ctx: &Context) {
        let seen: HashSet<u32> = self.window.slice(ctx).iter().copied().collect();
        for id in seen {
            c.update(id, |l| l - self.alpha);
        }
        c.sorted = false;
    }
}
