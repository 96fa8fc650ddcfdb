//! Temperature: `P(u_j) = exp(l_j / t) / Σ exp(l_j' / t)` — dividing the logits by `t` before the
//! softmax; lower `t` sharpens the distribution (lecture §1).

use super::{Candidates, Context, LogitProcessor};

pub struct Temperature(pub f32);

impl LogitProcessor for Temperature {
    fn process(&mut self, c: &mut Candidates, _: &Context) {
        let inv = 1.0 / self.0;
        c.items.iter_mut().for_each(|x| x.1 *= inv);
    }
}
