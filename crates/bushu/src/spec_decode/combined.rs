//! Draft model and prompt lookup together (`--draft-model M --lookup`): each step takes the n-gram
//! match when there is a good one and asks the draft model otherwise.
//!
//! Why "lookup first" rather than "the longer (or more confident) of the two": choosing between them
//! needs both proposals, so the draft model would run its `k` passes at every step, and a lookup draft
//! is worth taking precisely because it costs nothing. Where the text copies its input (an edit of a
//! given file, quoting, a refrain) a match of two or more tokens is there and its continuation is
//! usually long and right — longer runs than a small draft model keeps up; where nothing recurs, the
//! draft model drafts as it would alone. A match of a single token is not taken (unless
//! `--lookup-ngram 1` asks for nothing longer): some token of ordinary text has almost always occurred
//! before, and what followed it then is mostly wrong, so one-token matches would crowd out the draft
//! model's better guesses.
//!
//! The draft model's cache simply skips the steps lookup drafted: at its next proposal it catches up on
//! every token it has not seen in one pass ([`DraftModel`] syncs its cache with the sequence).

use super::draft_model::DraftModel;
use super::lookup::PromptLookup;
use super::proposer::{Proposal, Proposer};
use crate::model::llama::State;
use crate::model::Model;
use crate::sampling::Context;
use anyhow::Result;

/// The shortest n-gram match the combined proposer takes from lookup (of a lookup allowing `ngram_max`).
pub fn min_match(ngram_max: usize) -> usize {
    ngram_max.min(2)
}

/// Prompt lookup first, the draft model when lookup has no match of [`min_match`] tokens.
pub struct LookupThenDraft<'a> {
    lookup: PromptLookup,
    draft: DraftModel<'a>,
    /// Whether the draft model made the last proposal (it is told what was accepted).
    drafted: bool,
    /// Steps each proposer drafted: (lookup, draft model).
    pub steps: (usize, usize),
}

impl<'a> LookupThenDraft<'a> {
    pub fn new(lookup: PromptLookup, draft: DraftModel<'a>) -> LookupThenDraft<'a> {
        LookupThenDraft {
            lookup,
            draft,
            drafted: false,
            steps: (0, 0),
        }
    }
}

impl Proposer for LookupThenDraft<'_> {
    fn name(&self) -> &'static str {
        "lookup + draft model"
    }

    fn propose(&mut self, seq: &Context, k: usize, target: &Model, state: &mut State) -> Result<Proposal> {
        if let Some((n, tokens)) = self.lookup.lookup_match(seq.tokens, k) {
            if n >= min_match(self.lookup.ngram_max()) && !tokens.is_empty() {
                self.drafted = false;
                self.steps.0 += 1;
                return Ok(Proposal {
                    tokens,
                    ..Proposal::default()
                });
            }
        }
        self.drafted = true;
        self.steps.1 += 1;
        self.draft.propose(seq, k, target, state)
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.draft.prefill(prompt)
    }

    fn accepted(&mut self, n: usize) {
        if self.drafted {
            self.draft.accepted(n);
        }
    }
}
