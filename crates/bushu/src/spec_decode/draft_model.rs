//! Draft-model speculation (Leviathan et al. 2023; Chen et al. 2023; llama.cpp's `--model-draft`): a
//! second, smaller model with the same vocabulary drafts `k` tokens autoregressively with its own KV
//! cache. Its cache follows the sequence: before drafting it catches up on the tokens it has not seen
//! (the target's last token), and after verification it is rewound to the accepted length, so a
//! rejected draft leaves no trace. Drafting stops early when the draft's top probability falls below
//! `p_min` (llama.cpp's `--draft-p-min`): the next draft would likely be rejected. Unlike llama.cpp,
//! the unsure token itself is still proposed ([`Proposal::unsure`]): its draft pass is already paid
//! for, and verifying one more row costs a fraction of a pass.
//!
//! With a [`DraftTree`] (greedy decoding) the draft hedges where it is unsure: a position whose top
//! probability is below `p_branch` also gets the draft's next best token as a sibling leaf, and where
//! drafting stops for lack of confidence its two best tokens both become leaves — at most `extra` such
//! additional nodes per step. The target verifies the whole tree in one pass
//! ([`super::verify::verify_tree`]). Leaves cost verification rows but no draft pass.

use super::proposer::{push, top_two, DraftSampler, Proposal, Proposer};
use crate::model::llama::State;
use crate::model::{Logits, Model};
use crate::sampling::{Context, SamplingParams};
use crate::tokenizer::{Tokenizer, VocabDifference};
use anyhow::{bail, Result};

/// Errors unless the draft can speak for the target: the same number of logits (`target.0`,
/// `draft.0`: the models' vocabulary sizes) and the same tokenizer (every token's id, text and bytes).
pub fn check_same_vocabulary(target: (usize, &Tokenizer), draft: (usize, &Tokenizer)) -> Result<()> {
    match vocabulary_mismatch(target, draft) {
        None => Ok(()),
        Some(VocabMismatch::Logits { ours: tv, theirs: dv }) => bail!("the draft model's vocabulary has {dv} tokens, the target's {tv}: speculative decoding needs one shared vocabulary"),
        Some(VocabMismatch::Tokenizer(VocabDifference::Size { ours, theirs })) => bail!(
            "the draft model's tokenizer has {theirs} tokens, the target's {ours}: speculative decoding needs one shared vocabulary"
        ),
        Some(VocabMismatch::Tokenizer(VocabDifference::Token { id, ours, theirs })) => bail!(
            "the draft model's tokenizer differs from the target's (token {id}: {theirs:?} vs {ours:?}): speculative decoding needs one shared vocabulary"
        ),
    }
}

/// How two models' vocabularies differ ([`vocabulary_mismatch`]).
#[derive(Clone, Debug, PartialEq)]
pub enum VocabMismatch {
    /// Different numbers of logits.
    Logits { ours: usize, theirs: usize },
    /// Different tokenizers.
    Tokenizer(VocabDifference),
}

impl std::fmt::Display for VocabMismatch {
    /// "`ours`" is the first model, "`theirs`" the second.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VocabMismatch::Logits { ours, theirs } => write!(f, "{ours} logits vs {theirs}"),
            VocabMismatch::Tokenizer(VocabDifference::Size { ours, theirs }) => {
                write!(f, "tokenizers of {ours} tokens vs {theirs}")
            }
            VocabMismatch::Tokenizer(VocabDifference::Token { id, ours, theirs }) => {
                write!(f, "token {id} is {ours:?} vs {theirs:?}")
            }
        }
    }
}

/// How the vocabulary of `b` differs from that of `a` (each: the model's vocabulary size and its
/// tokenizer), or `None` when they are one vocabulary: the same number of logits and every token's
/// id, text and bytes the same. The check of draft models ([`check_same_vocabulary`]) and of cascades.
pub fn vocabulary_mismatch(a: (usize, &Tokenizer), b: (usize, &Tokenizer)) -> Option<VocabMismatch> {
    if a.0 != b.0 {
        return Some(VocabMismatch::Logits { ours: a.0, theirs: b.0 });
    }
    a.1.vocab_difference(b.1).map(VocabMismatch::Tokenizer)
}

/// Opens the draft model at `path` for `target` (checked with [`check_same_vocabulary`]), re-encodes
/// its matrices as `spec.draft_quant` ([`crate::quant::requant`]) and builds it with `options`;
/// `spec.draft_vocab` restricts its classifier ([`Model::head_rows`]). One loader for `run` and `serve`.
pub fn load_draft(
    path: &std::path::Path,
    target: &crate::model::ModelFile,
    options: &crate::model::ModelOptions,
    spec: &super::SpecOptions,
) -> Result<Model> {
    use anyhow::Context;
    let mut f = crate::model::load(path).with_context(|| format!("cannot open the draft model {}", path.display()))?;
    check_same_vocabulary(
        (target.config.vocab_size, &target.tokenizer),
        (f.config.vocab_size, &f.tokenizer),
    )?;
    if let Some(dtype) = spec.draft_quant {
        crate::quant::requant::requantize(&mut f.tensors, dtype)?;
    }
    let mut m = options.build(&f)?;
    m.head_rows = spec.draft_vocab;
    Ok(m)
}

/// How a draft model grows a token tree rather than a chain (`--draft-tree N`, `--draft-tree-p P`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DraftTree {
    /// Nodes beyond the chain, at most, per step.
    pub extra: usize,
    /// A drafted position whose top probability is below this gets a sibling.
    pub p_branch: f32,
}

/// A draft model and its cache.
pub struct DraftModel<'a> {
    model: &'a Model,
    state: State,
    /// The tokens in `state`'s cache, in order.
    cached: Vec<u32>,
    /// The sequence length the last proposal followed.
    base: usize,
    sampler: DraftSampler,
    tree: Option<DraftTree>,
}

impl<'a> DraftModel<'a> {
    /// `model` drafting for a target sampling with `params`, in a cache of `ctx` positions.
    pub fn new(model: &'a Model, ctx: usize, params: &SamplingParams, p_min: f32) -> Result<DraftModel<'a>> {
        Ok(DraftModel {
            model,
            state: model.new_state(ctx),
            cached: Vec::new(),
            base: 0,
            sampler: DraftSampler::new(params, p_min)?,
            tree: None,
        })
    }

    /// Drafts token trees (`tree`) rather than chains when the target decodes greedily; an error for a
    /// sampling target (tree verification is greedy).
    pub fn with_tree(mut self, tree: DraftTree) -> Result<Self> {
        if self.sampler.samples() {
            bail!("--draft-tree verifies greedy decoding only (--temperature 0)");
        }
        if !(0.0..=1.0).contains(&tree.p_branch) {
            bail!("--draft-tree-p must be in [0, 1] (got {})", tree.p_branch);
        }
        self.tree = (tree.extra > 0).then_some(tree);
        Ok(self)
    }

    /// Rewinds the cache to its longest prefix shared with `tokens`.
    fn sync(&mut self, tokens: &[u32]) {
        let common = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        self.cached.truncate(common);
        self.state.rewind(common);
    }
}

impl Proposer for DraftModel<'_> {
    fn name(&self) -> &'static str {
        "draft model"
    }

    fn propose(&mut self, seq: &Context, k: usize, _target: &Model, _state: &mut State) -> Result<Proposal> {
        let tokens = seq.tokens;
        self.base = tokens.len();
        self.sync(tokens);
        // Room for the tokens it has not seen and k - 1 drafts fed back.
        let room = self.state.cache.capacity() - self.state.pos();
        let new = &tokens[self.cached.len()..];
        if new.is_empty() || new.len() + k.saturating_sub(1) > room {
            return Ok(Proposal::default());
        }
        self.sampler.start(seq);
        let mut out = Proposal::default();
        let mut logits = self.model.forward(&mut self.state, new, Logits::Last)?;
        self.cached.extend_from_slice(new);
        // A step brings the last draft and the target's next token at most; more were paused steps'.
        out.caught_up = new.len() > 2;
        // A tree: nodes left beyond the chain, and the parent of the next chain node.
        let mut extra = self.tree.map_or(0, |t| t.extra);
        let mut parent = None;
        let mut chain = 0;
        loop {
            let top = self.tree.and_then(|_| top_two(logits));
            let (t, q, sure) = self.sampler.pick(logits);
            if let (false, Some(_), Some((a, b, _))) = (sure, self.tree, top) {
                // Unsure: a tree hedges with the draft's two best tokens as leaves.
                if extra > 0 {
                    for x in [a, b] {
                        out.tokens.push(x);
                        out.parent.push(parent);
                    }
                    break;
                }
            }
            push(&mut out, t, q);
            chain += 1;
            if !sure {
                // Proposed all the same (its pass is paid for), and the last one.
                out.unsure = 1;
                if self.tree.is_some() {
                    out.parent.push(parent);
                }
                break;
            }
            if let Some(tree) = self.tree {
                out.parent.push(parent);
                let me = out.len() - 1;
                if let Some((a, b, p)) = top {
                    if extra > 0 && p < tree.p_branch {
                        out.tokens.push(if a != t { a } else { b });
                        out.parent.push(parent);
                        extra -= 1;
                    }
                }
                parent = Some(me);
            }
            if chain == k {
                break;
            }
            logits = self.model.forward(&mut self.state, &[t], Logits::Last)?;
            self.cached.push(t);
        }
        Ok(out)
    }

    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.sync(prompt);
        let new = &prompt[self.cached.len()..];
        if !new.is_empty() && new.len() <= self.state.cache.capacity() - self.state.pos() {
            self.model.forward(&mut self.state, new, Logits::Last)?;
            self.cached.extend_from_slice(new);
        }
        // Every packed copy of the draft is made now, with the prompt, as the target's are by its
        // prefill: the last row's logits pack the classifier (its copy is made on its first product,
        // which a prefill without logits never runs: the first drafting step packed it, 0.4 s for
        // Qwen2.5-Coder 0.5B's on 2 cores, counted against decoding's speed), and a background
        // packer, which starts after this first pass, is joined.
        self.model.weights.wait_packed();
        Ok(())
    }

    fn accepted(&mut self, n: usize) {
        // The cache holds the sequence, then drafts; keep the sequence and the accepted ones.
        let keep = (self.base + n).min(self.cached.len());
        self.cached.truncate(keep);
        self.state.rewind(keep);
    }
}
