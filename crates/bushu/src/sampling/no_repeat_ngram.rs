//! N-gram blocking (HF `no_repeat_ngram_size`): a token that would complete an n-gram already present
//! in the sequence (prompt included) is banned, so no n-gram ever occurs twice.

use super::{Candidates, Context, LogitProcessor};

pub struct NoRepeatNgram(pub usize);

/// The tokens that would repeat an `n`-gram of `tokens` if appended.
pub fn banned_tokens(tokens: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || tokens.len() + 1 < n {
        return Vec::new();
    }
    // The last n-1 tokens are the prefix the next token would complete.
    let prefix = &tokens[tokens.len() + 1 - n..];
    let mut out: Vec<u32> = tokens
        .windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl LogitProcessor for NoRepeatNgram {
    fn process(&mut self, c: &mut Candidates, ctx: &Context) {
        for id in banned_tokens(ctx.tokens, self.0) {
            c.update(id, |_| f32::NEG_INFINITY);
        }
    }
}
