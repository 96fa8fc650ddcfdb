//! Repetition penalty (Keskar et al. 2019, CTRL): each distinct token already in the window gets its
//! logit divided by θ when positive and multiplied by θ when negative — with θ > 1 always lower.
//! HF `RepetitionPenaltyLogitsProcessor`; llama.cpp `penalty_repeat` (same formula).

use super::{Candidates, Context, LogitProcessor, PenaltyWindow};
use std::collections::HashSet;

pub struct RepetitionPenalty {
    pub theta: f32,
    pub window: PenaltyWindow,
}

impl RepetitionPenalty {
    pub fn new(theta: f32, window: PenaltyWindow) -> Self {
        RepetitionPenalty { theta, window }
    }
}

/// The CTRL formula on one logit.
pub fn penalize(logit: f32, theta: f32) -> f32 {
    if logit < 0.0 {
        logit * theta
    } else {
        logit / theta
    }
}

impl LogitProcessor for RepetitionPenalty {
    fn process(&mut self, c: &mut Candidates, ctx: &Context) {
        let seen: HashSet<u32> = self.window.slice(ctx).iter().copied().collect();
        for id in seen {
            c.update(id, |l| penalize(l, self.theta));
        }
        c.sorted = false;
    }
}
