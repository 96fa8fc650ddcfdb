//! Frequency penalty (OpenAI): `logit - α·count(token in the window)` — the more a token was used, the
//! lower it goes. Not in HF `generate`; llama.cpp `penalty_freq`.

use super::{Candidates, Context, LogitProcessor, PenaltyWindow};
use std::collections::HashMap;

pub struct FrequencyPenalty {
    pub alpha: f32,
    pub window: PenaltyWindow,
}

impl FrequencyPenalty {
    pub fn new(alpha: f32, window: PenaltyWindow) -> Self {
        FrequencyPenalty { alpha, window }
    }
}

impl LogitProcessor for FrequencyPenalty {
    fn process(&mut self, c: &mut Candidates, ctx: &Context) {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in self.window.slice(ctx) {
            *counts.entry(t).or_default() += 1;
        }
        for (id, n) in counts {
            c.update(id, |l| l - self.alpha * n as f32);
        }
        c.sorted = false;
    }
}
