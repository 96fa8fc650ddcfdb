//! Min-p (Nguyen et al. 2024): keep the tokens whose probability is at least `p_min` times the top
//! token's — a cut that adapts to how confident the model is. HF `MinPLogitsWarper`.

use super::{Candidates, Context, LogitProcessor};

pub struct MinP(pub f32);

impl LogitProcessor for MinP {
    fn process(&mut self, c: &mut Candidates, _: &Context) {
        if c.items.is_empty() {
            return;
        }
        // p_i >= p_min * p_max  ⇔  l_i - l_max >= ln(p_min).
        let max = c.items.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let cut = max + self.0.ln();
        c.items.retain(|x| x.1 >= cut);
    }
}
