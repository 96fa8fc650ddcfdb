//! Top-k: keep only the `k` most probable tokens (lecture §1).

use super::{Candidates, Context, LogitProcessor};

pub struct TopK(pub usize);

impl LogitProcessor for TopK {
    fn process(&mut self, c: &mut Candidates, _: &Context) {
        if self.0 >= c.items.len() {
            return;
        }
        c.sort();
        c.items.truncate(self.0.max(1));
    }
}
