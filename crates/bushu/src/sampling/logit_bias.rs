//! Logit bias: a fixed amount added to chosen tokens' logits (`-inf` bans a token). HF
//! `SequenceBiasLogitsProcessor` with one-token sequences, OpenAI `logit_bias`, llama.cpp
//! `--logit-bias`.

use super::{Candidates, Context, LogitProcessor};

pub struct LogitBias(pub Vec<(u32, f32)>);

impl LogitBias {
    pub fn new(bias: &[(u32, f32)]) -> Self {
        LogitBias(bias.to_vec())
    }
}

impl LogitProcessor for LogitBias {
    fn process(&mut self, c: &mut Candidates, _: &Context) {
        for &(id, b) in &self.0 {
            c.update(id, |l| l + b);
        }
        c.sorted = false;
    }
}
