//! Prompt lookup decoding (transformers' `prompt_lookup_num_tokens`, llama.cpp's `lookup`): no draft
//! model — the sequence itself is the draft. The last `n` tokens are looked for earlier in the prompt
//! and output (`n` from `ngram_max` down to 1, longest match first; the most recent earlier occurrence
//! wins), and the tokens that followed that occurrence are proposed. Repetitive text — code edits,
//! quoting the prompt, summaries, refrains — gets long accepted runs; elsewhere nothing matches and the
//! step is a plain decode step. Deterministic: `q` is the one-hot of each draft.

use super::proposer::{Proposal, Proposer};
use crate::model::llama::State;
use crate::model::Model;
use crate::sampling::Context;
use anyhow::{bail, Result};

/// The prompt-lookup proposer.
#[derive(Clone, Debug)]
pub struct PromptLookup {
    ngram_max: usize,
}

impl PromptLookup {
    /// Matches n-grams of up to `ngram_max` (≥ 1) tokens.
    pub fn new(ngram_max: usize) -> Result<PromptLookup> {
        if ngram_max == 0 {
            bail!("the lookup n-gram size must be at least 1");
        }
        Ok(PromptLookup { ngram_max })
    }

    /// Up to `k` tokens that followed the most recent earlier occurrence of the longest suffix of
    /// `tokens` (at most `ngram_max` long) seen before; empty when no suffix recurs.
    pub fn lookup(&self, tokens: &[u32], k: usize) -> Vec<u32> {
        self.lookup_match(tokens, k).map(|m| m.1).unwrap_or_default()
    }

    /// [`PromptLookup::lookup`] with the length of the suffix that matched: `(n, drafts)`; `None`
    /// when no suffix recurs.
    pub fn lookup_match(&self, tokens: &[u32], k: usize) -> Option<(usize, Vec<u32>)> {
        let len = tokens.len();
        for n in (1..=self.ngram_max.min(len.saturating_sub(1))).rev() {
            let pattern = &tokens[len - n..];
            // Occurrences starting at i, ending before the suffix itself starts being compared with
            // itself (i + n < len leaves at least one following token).
            for i in (0..len - n).rev() {
                if &tokens[i..i + n] == pattern {
                    let from = i + n;
                    return Some((n, tokens[from..(from + k).min(len)].to_vec()));
                }
            }
        }
        None
    }

    /// The longest n-gram it matches.
    pub fn ngram_max(&self) -> usize {
        self.ngram_max
    }
}

impl Proposer for PromptLookup {
    fn name(&self) -> &'static str {
        "lookup"
    }

    fn propose(&mut self, seq: &Context, k: usize, _target: &Model, _state: &mut State) -> Result<Proposal> {
        Ok(Proposal {
            tokens: self.lookup(seq.tokens, k),
            ..Proposal::default()
        })
    }

    fn accepted(&mut self, _n: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_most_recent_match() {
        let l = PromptLookup::new(3).unwrap();
        // "1 2 3" recurs at the end: what followed it last time ("4 5") is proposed.
        assert_eq!(l.lookup(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 4), [4, 5, 9, 1]);
        assert_eq!(l.lookup(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 2), [4, 5]);
        // The most recent occurrence of "7" wins over the older one.
        assert_eq!(l.lookup(&[7, 1, 7, 2, 8, 7], 1), [2]);
        // A longer match beats a more recent shorter one.
        assert_eq!(l.lookup(&[5, 6, 1, 4, 6, 2, 5, 6], 1), [1]);
        // Nothing recurs.
        assert!(l.lookup(&[1, 2, 3], 4).is_empty());
        assert!(l.lookup(&[1], 4).is_empty());
        // A run of one token proposes more of it.
        assert_eq!(l.lookup(&[3, 3, 3, 3], 5), [3]);
        assert!(PromptLookup::new(0).is_err());
        assert_eq!(l.lookup_match(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 2), Some((3, vec![4, 5])));
        assert_eq!(l.lookup_match(&[7, 1, 7, 2, 8, 7], 1), Some((1, vec![2])));
        assert_eq!(l.lookup_match(&[1, 2, 3], 1), None);
    }
}
