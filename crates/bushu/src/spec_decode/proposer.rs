//! What a proposer is: something that, given the sequence so far, drafts up to `k` next tokens (and,
//! when it samples them, the distribution `q` each was drawn from), and is then told how many the
//! target accepted so it can rewind whatever state it keeps.
//!
//! Also the draft sampling the model-based proposers ([`super::draft_model`], [`super::self_spec`])
//! share: greedy (the target decodes greedily) or a draw from the draft's own processed distribution
//! `q` (the target samples; rejection sampling needs `q`), stopping when the draft is unsure.

use crate::model::llama::State;
use crate::model::Model;
use crate::sampling::{Context, Sampler, SamplingParams};
use anyhow::Result;

/// Drafted tokens, to be verified in order: a chain, or a token tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Proposal {
    pub tokens: Vec<u32>,
    /// `q[i]`: the distribution `tokens[i]` was drawn from (one probability per vocabulary token).
    /// `None`: the proposer is deterministic — `q` is the one-hot of each token.
    pub q: Option<Vec<Vec<f32>>>,
    /// Empty: the tokens are a chain. Else a token tree (greedy verification only): `parent[i]` is the
    /// index of token `i`'s parent among the tokens (always an earlier one), `None` for a token that
    /// follows the sequence's last token directly.
    pub parent: Vec<Option<usize>>,
    /// How many of the last drafts the proposer was unsure of (below `--draft-p-min`; 0 or 1): such a
    /// draft ends the chain but is still proposed — its draft pass is paid for, and one more
    /// verification row costs a fraction of a pass. The draft length adapts to the sure drafts only.
    pub unsure: usize,
    /// The proposer read more of the sequence before drafting than one step brings (a draft model
    /// resuming after plain steps reads them all first; one that skipped steps its partner proposer
    /// drafted, too): after plain steps that drafting time is a one-off, not a drafting cost
    /// ([`super::adaptive::DraftLength::costs`]; the decoder decides).
    pub caught_up: bool,
}

impl Proposal {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The distribution of draft `i`, `None` for a one-hot.
    pub fn q(&self, i: usize) -> Option<&[f32]> {
        self.q.as_ref().map(|q| q[i].as_slice())
    }

    /// Keeps the first `n` drafts (of a tree, a tree too: parents come before their children).
    pub fn truncate(&mut self, n: usize) {
        if n < self.tokens.len() {
            self.unsure = 0;
        }
        self.tokens.truncate(n);
        if let Some(q) = &mut self.q {
            q.truncate(n);
        }
        self.parent.truncate(n);
    }

    /// Whether the drafts form a tree (not a chain).
    pub fn is_tree(&self) -> bool {
        !self.parent.is_empty()
    }

    /// The length of its longest branch (a chain's length).
    pub fn depth(&self) -> usize {
        if !self.is_tree() {
            return self.tokens.len();
        }
        let mut depth = Vec::with_capacity(self.parent.len());
        for p in &self.parent {
            depth.push(p.map_or(1, |p| depth[p] + 1));
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

/// Drafts tokens for speculative decoding.
pub trait Proposer {
    /// A short name for messages (`lookup`, `draft model`, `self-speculation`).
    fn name(&self) -> &'static str;

    /// Up to `k` (≥ 1) draft tokens to follow `seq` (prompt, then every token generated so far; its last
    /// token is not in the target's cache yet). `target` and `state` are the target model and its cache,
    /// holding `seq` minus its last token; a proposer that runs the target (self-speculation) must leave
    /// `state` at that length. May return fewer tokens, or none.
    fn propose(&mut self, seq: &Context, k: usize, target: &Model, state: &mut State) -> Result<Proposal>;

    /// The prompt is being prefilled: a proposer with its own cache fills it now (counted as prompt
    /// processing, as llama.cpp's speculative example does), not at its first proposal.
    fn prefill(&mut self, _prompt: &[u32]) -> Result<()> {
        Ok(())
    }

    /// The target accepted the first `n` tokens of the last proposal (the rest were rejected): rewind
    /// any state to the sequence plus those `n`.
    fn accepted(&mut self, n: usize);

    /// After every target pass (the prefill, each verification): the target's final-norm hidden state
    /// of the row whose logits chose the sequence's last token (Medusa's heads draft from it).
    fn hidden(&mut self, _h: &[f32]) {}

    /// How a token tree of this proposer is verified when the target samples: `None`, it is not (trees
    /// are verified greedily only); `Some`, by typical acceptance (lossy, [`super::medusa`]).
    fn typical(&self) -> Option<super::medusa::Typical> {
        None
    }
}

/// How a draft model chooses its tokens: greedily when the target decodes greedily, else by drawing
/// from its own processed distribution `q` (the same processor chain as the target's, its own seeded
/// generator), which it reports for rejection sampling. Stops the draft when the draft model's top
/// probability (softmax of its raw logits) falls below `p_min`.
pub struct DraftSampler {
    sampler: Sampler,
    p_min: f32,
}

impl DraftSampler {
    /// The draft's sampler for a target sampling with `params`.
    pub fn new(params: &SamplingParams, p_min: f32) -> Result<DraftSampler> {
        // Its own stream of draws: the target's generator must see only the target's draws.
        let own = SamplingParams {
            seed: params.seed ^ 0x5DEE_CE66_D1CE_5EED,
            ..params.clone()
        };
        Ok(DraftSampler {
            sampler: Sampler::new(&own)?,
            p_min,
        })
    }

    /// Whether drafts carry a distribution (sampling) or are one-hot (greedy).
    pub fn samples(&self) -> bool {
        !self.sampler.is_greedy()
    }

    /// Sets the history the processors see to `seq`.
    pub fn start(&mut self, seq: &Context) {
        self.sampler.set_prompt(&seq.tokens[..seq.prompt_len]);
        for &t in &seq.tokens[seq.prompt_len..] {
            self.sampler.accept(t);
        }
    }

    /// The next draft token from the draft's `logits` (recorded in the history), its `q` when
    /// sampling, and whether the draft is sure of it: its top probability is at least `p_min`. Drafting
    /// stops after a token it is unsure of, which is still proposed ([`Proposal::unsure`]).
    pub fn pick(&mut self, logits: &[f32]) -> (u32, Option<Vec<f32>>, bool) {
        let sure = self.p_min <= 0.0 || top_probability(logits) >= self.p_min;
        if self.sampler.is_greedy() {
            return (self.sampler.sample(logits), None, sure);
        }
        let q = self.sampler.distribution(logits);
        let t = self.sampler.sample_from(&q);
        self.sampler.accept(t);
        (t, Some(q), sure)
    }
}

/// The two most likely tokens of `logits` and the probability of the first (`softmax`); `None` for
/// fewer than two finite logits.
pub fn top_two(logits: &[f32]) -> Option<(u32, u32, f32)> {
    let (mut a, mut b) = (None::<usize>, None::<usize>);
    for (i, &l) in logits.iter().enumerate() {
        if l == f32::NEG_INFINITY {
            continue;
        }
        match a {
            Some(x) if l <= logits[x] => {
                if b.is_none_or(|y| l > logits[y]) {
                    b = Some(i);
                }
            }
            _ => {
                b = a;
                a = Some(i);
            }
        }
    }
    Some((a? as u32, b? as u32, top_probability(logits)))
}

/// The largest probability of `softmax(logits)`.
pub fn top_probability(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return 0.0;
    }
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (1.0 / sum) as f32
}

/// Appends a pick to a proposal being built.
pub(super) fn push(p: &mut Proposal, token: u32, q: Option<Vec<f32>>) {
    p.tokens.push(token);
    if let Some(q) = q {
        p.q.get_or_insert_with(Vec::new).push(q);
    }
}
