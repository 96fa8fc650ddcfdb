//! Top-p (nucleus): keep the smallest set of most probable tokens whose probability mass reaches `p`
//! (lecture §1).

use super::{Candidates, Context, LogitProcessor};

pub struct TopP(pub f32);

impl LogitProcessor for TopP {
    fn process(&mut self, c: &mut Candidates, _: &Context) {
        c.sort();
        let probs = c.probs();
        let mut acc = 0.0f64;
        let mut keep = probs.len();
        for (i, &p) in probs.iter().enumerate() {
            acc += p as f64;
            // A small tolerance so that masses that reach p up to f32 rounding count as reaching it.
            if acc >= self.0 as f64 - 1e-6 {
                keep = i + 1;
                break;
            }
        }
        c.items.truncate(keep.max(1));
    }
}
