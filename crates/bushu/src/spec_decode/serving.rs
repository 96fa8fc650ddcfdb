//! Speculative decoding inside the serving engine (`bushu serve --lookup | --draft-model M |
//! --self-speculate L`): before each engine step, every running sequence that is decoding gets drafts
//! (unless more sequences decode than [`Speculator::max_batch`]),
//! and the step verifies them with its last token in the same batched pass ([`crate::engine::Engine`]
//! samples each row with the sequence's own sampler and keeps a draft while it is the token sampled, so
//! the output is the one plain decoding gives — token for token, whatever the drafts).
//!
//! The drafts of all sequences are made together, as the engine makes its tokens:
//!
//! - **prompt lookup**: the n-gram match of [`super::lookup`] over each sequence, no model;
//! - **draft model**: a second model with its own paged KV cache of the same geometry as the target's,
//!   addressed through the *same* block tables (a sequence's position `p` has the draft's keys and
//!   values in the same slot of the draft cache as the target's in the target cache). Each round is one
//!   batched draft pass: the first feeds each sequence the tokens the draft has not seen (its whole
//!   prompt the first time, then the tokens since its last proposal: one or two, more after steps without
//!   drafts), the next ones feed the previous round's drafts. The draft's cache is only ever read by the draft, so positions it holds
//!   stale values for (after a preemption, or a prefix-cache block it never filled) can cost acceptance,
//!   never correctness; a sequence's draft position is reset when it is preempted;
//! - **self-speculation**: the target's own first `L` layers, final norm and classifier, in batched
//!   early-exit passes over the target's cache; the verification pass then rewrites those positions
//!   with every layer;
//! - **lookup, then the draft model** ([`super::combined`]): the sequences whose n-gram match is long
//!   enough take it, the others draft with the draft model (which catches up on the tokens it skipped
//!   the next time it drafts for the sequence).
//!
//! Drafts are the draft's most likely tokens (for a greedy target exactly what it would pick; for a
//! sampling target, a guess the engine's sampling either confirms or not — the output distribution is
//! the target's either way). Drafting stops early for a sequence after a draft whose top probability
//! is below `p_min` (that draft is still verified). Each sequence has its own adaptive draft length ([`super::adaptive`]), switched off
//! when its drafts keep being rejected. Counters follow vLLM's `spec_decode_*` metrics.

use super::adaptive::{DraftLength, DraftLengthParams};
use super::lookup::PromptLookup;
use super::proposer::top_probability;
use super::SpecStats;
use crate::engine::model_runner::{ModelRunner, SeqInput};
use crate::engine::scheduler::Scheduler;
use crate::engine::sequence::{SeqId, SeqStatus};
use crate::model::{Logits, Model};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Where drafts come from.
pub enum Method {
    Lookup(PromptLookup),
    /// A draft model in its own paged cache (the target's block geometry).
    DraftModel(Box<ModelRunner>),
    /// The target's first `layers` layers.
    SelfSpeculate {
        layers: usize,
    },
    /// Prompt lookup when it has a match of [`super::combined::min_match`] tokens, else the draft model.
    LookupThenDraft(PromptLookup, Box<ModelRunner>),
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Lookup(_) => "lookup",
            Method::DraftModel(_) => "draft model",
            Method::SelfSpeculate { .. } => "self-speculation",
            Method::LookupThenDraft(..) => "lookup + draft model",
        }
    }
}

/// Cumulative counters over every sequence (vLLM's `spec_decode_num_drafts`, `_num_draft_tokens`,
/// `_num_accepted_tokens`, `_num_accepted_tokens_per_pos`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecCounters {
    /// Verifications with at least one draft.
    pub num_drafts: u64,
    pub num_draft_tokens: u64,
    pub num_accepted_tokens: u64,
    /// `[i]`: drafts at position `i` (0-based) of a proposal that were accepted.
    pub num_accepted_tokens_per_pos: Vec<u64>,
}

/// One sequence's speculation.
struct SeqSpec {
    length: DraftLength,
    /// Draft model: positions whose keys and values the draft cache holds for this sequence's tokens.
    draft_computed: usize,
    /// The sequence's preemption count when `draft_computed` was last set.
    preemptions: u32,
    /// Drafts of the last proposal that the draft model was fed (their positions are in its cache).
    fed: usize,
    /// Whether the last proposal ended with a draft below `p_min` (proposed, not counted by the length).
    unsure: bool,
    stats: SpecStats,
}

/// The engine's drafter.
pub struct Speculator {
    method: Method,
    length: DraftLengthParams,
    p_min: f32,
    seqs: HashMap<SeqId, SeqSpec>,
    pub counters: SpecCounters,
    /// No drafts in a step where more than this many sequences decode (0: any number; vLLM's
    /// `speculative_disable_by_batch_size`): a batch of many sequences is a pass of many rows already,
    /// compute-bound on a few cores, where drafted rows cost about what plain rows do (bench/
    /// serve-speculative.sh, docs/SPECULATIVE.md). The sequences' draft lengths keep their state.
    pub max_batch: usize,
    /// Lookup then draft model: the proposals each made, (lookup, draft model).
    pub combined_sources: (u64, u64),
}

/// What one step's verification did for one sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub drafted: usize,
    pub accepted: usize,
}

impl Speculator {
    /// A drafter for `target` (checks the method against it: the layer count of self-speculation,
    /// the draft model's vocabulary size and cache geometry).
    pub fn new(method: Method, length: DraftLengthParams, p_min: f32, target: &ModelRunner) -> Result<Speculator> {
        length.validate()?;
        if !(0.0..=1.0).contains(&p_min) {
            bail!("--draft-p-min must be in [0, 1] (got {p_min})");
        }
        let c = &target.model.config;
        match &method {
            Method::SelfSpeculate { layers } if *layers == 0 || *layers >= c.n_layers => bail!(
                "--self-speculate must be between 1 and {} (the model has {} layers), got {layers}",
                c.n_layers.max(2) - 1,
                c.n_layers
            ),
            Method::DraftModel(d) | Method::LookupThenDraft(_, d) => {
                if d.model.config.vocab_size != c.vocab_size {
                    bail!(
                        "the draft model's vocabulary has {} tokens, the target's {}: speculative decoding needs one shared vocabulary",
                        d.model.config.vocab_size,
                        c.vocab_size
                    );
                }
                if d.cache.block_size != target.cache.block_size || d.cache.num_blocks != target.cache.num_blocks {
                    bail!("the draft model's cache must have the target's blocks");
                }
            }
            _ => {}
        }
        Ok(Speculator {
            method,
            length,
            p_min,
            seqs: HashMap::new(),
            counters: SpecCounters::default(),
            max_batch: 0,
            combined_sources: (0, 0),
        })
    }

    pub fn name(&self) -> &'static str {
        self.method.name()
    }

    /// Bytes of the draft model's KV cache (`None` without a draft model).
    pub fn draft_cache_bytes(&self) -> Option<usize> {
        match &self.method {
            Method::DraftModel(r) | Method::LookupThenDraft(_, r) => Some(r.cache.bytes()),
            _ => None,
        }
    }

    /// Drafts for every running sequence that is decoding (its prompt done, one token to run) — none in
    /// a step where more than [`Speculator::max_batch`] decode —, set as
    /// its [`crate::engine::sequence::Sequence::draft`]. Model-based drafts get their positions' blocks
    /// first (the ones verification would take); a sequence without free blocks for them goes without.
    pub fn draft(&mut self, sched: &mut Scheduler, target: &mut ModelRunner) -> Result<()> {
        self.seqs.retain(|id, _| sched.seqs.contains_key(id));
        let max_len = sched.cfg.max_model_len;
        let decoding =
            |s: &crate::engine::sequence::Sequence| s.status == SeqStatus::Running && s.num_uncomputed() == 1;
        if self.max_batch > 0 && sched.seqs.values().filter(|s| decoding(s)).count() > self.max_batch {
            return Ok(());
        }
        // (sequence, drafts to ask for)
        let mut todo: Vec<(SeqId, usize)> = Vec::new();
        for (&id, seq) in &sched.seqs {
            if !decoding(seq) || !seq.draft.is_empty() {
                continue;
            }
            let s = match self.seqs.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(SeqSpec {
                    length: DraftLength::new(self.length)?,
                    draft_computed: 0,
                    preemptions: seq.preemptions,
                    fed: 0,
                    unsure: false,
                    stats: SpecStats::default(),
                }),
            };
            // As Engine::propose: every kept draft is one more token, and one more follows them.
            let room = max_len
                .saturating_sub(seq.len())
                .min(seq.max_tokens.saturating_sub(seq.num_generated()))
                .saturating_sub(1);
            let k = s.length.k().min(room);
            if k > 0 {
                todo.push((id, k));
            }
        }
        // A fixed order (the map's is not): drafts do not depend on it, but batches read better.
        todo.sort_unstable();
        match &mut self.method {
            Method::Lookup(l) => {
                for &(id, k) in &todo {
                    let seq = sched.seqs.get_mut(&id).expect("listed");
                    let d = l.lookup(&seq.tokens, k);
                    if self.seqs[&id].length.enough(d.len()) {
                        seq.draft = d;
                    }
                }
                Ok(())
            }
            Method::DraftModel(runner) => draft_with(runner, &mut self.seqs, sched, &todo, self.p_min, self.length.min),
            Method::LookupThenDraft(l, runner) => {
                let min = super::combined::min_match(l.ngram_max());
                let mut rest = Vec::new();
                for &(id, k) in &todo {
                    let seq = sched.seqs.get_mut(&id).expect("listed");
                    match l.lookup_match(&seq.tokens, k) {
                        Some((n, d)) if n >= min && self.seqs[&id].length.enough(d.len()) => {
                            seq.draft = d;
                            // Not fed to the draft model: nothing of it in its cache.
                            let s = self.seqs.get_mut(&id).expect("listed");
                            s.fed = 0;
                            s.unsure = false;
                            self.combined_sources.0 += 1;
                        }
                        _ => rest.push((id, k)),
                    }
                }
                draft_with(runner, &mut self.seqs, sched, &rest, self.p_min, self.length.min)?;
                let drafted = rest.iter().filter(|(id, _)| !sched.seqs[id].draft.is_empty()).count();
                self.combined_sources.1 += drafted as u64;
                Ok(())
            }
            Method::SelfSpeculate { layers } => {
                let plan = reserve(sched, &todo, |_, seq_len, _| seq_len - 1);
                let done = rounds(target, Some(*layers), sched, &plan, self.p_min, self.length.min)?;
                for (&(id, _, _), (_, unsure)) in plan.iter().zip(done) {
                    self.seqs.get_mut(&id).expect("listed").unsure = unsure;
                }
                Ok(())
            }
        }
    }

    /// The step verified `v.drafted` drafts of sequence `id` and kept `v.accepted`.
    pub fn verified(&mut self, id: SeqId, v: Verified) {
        let unsure = self.seqs.get_mut(&id).is_some_and(|s| std::mem::take(&mut s.unsure));
        if v.drafted == 0 {
            return;
        }
        let c = &mut self.counters;
        c.num_drafts += 1;
        c.num_draft_tokens += v.drafted as u64;
        c.num_accepted_tokens += v.accepted as u64;
        if c.num_accepted_tokens_per_pos.len() < v.drafted {
            c.num_accepted_tokens_per_pos.resize(v.drafted, 0);
        }
        c.num_accepted_tokens_per_pos[..v.accepted]
            .iter_mut()
            .for_each(|n| *n += 1);
        if let Some(s) = self.seqs.get_mut(&id) {
            let sure = v.drafted - usize::from(unsure);
            s.length.update(sure, v.accepted.min(sure));
            // The accepted drafts the draft model was fed are positions its cache holds.
            s.draft_computed += v.accepted.min(s.fed);
            s.fed = 0;
            s.stats.draft_n += v.drafted;
            s.stats.draft_n_accepted += v.accepted;
            s.stats.draft_steps += 1;
            s.stats.switched_off = s.length.is_off();
        }
    }

    /// What speculation did for sequence `id` so far.
    pub fn stats(&self, id: SeqId) -> Option<SpecStats> {
        self.seqs.get(&id).map(|s| s.stats)
    }
}

/// Drafts with the draft model in `runner` for the sequences of `todo` (`(sequence, drafts to ask for)`).
fn draft_with(
    runner: &mut ModelRunner,
    seqs: &mut HashMap<SeqId, SeqSpec>,
    sched: &mut Scheduler,
    todo: &[(SeqId, usize)],
    p_min: f32,
    min: usize,
) -> Result<()> {
    let plan = reserve(sched, todo, |id, seq_len, preemptions| {
        let s = seqs.get_mut(&id).expect("listed");
        if s.preemptions != preemptions {
            s.preemptions = preemptions;
            s.draft_computed = 0;
        }
        // The tokens it has not seen, through the sequence's last one.
        let from = s.draft_computed.min(seq_len - 1);
        s.draft_computed = seq_len;
        from
    });
    let done = rounds(runner, None, sched, &plan, p_min, min)?;
    for (&(id, _, _), (fed, unsure)) in plan.iter().zip(done) {
        let s = seqs.get_mut(&id).expect("listed");
        s.fed = fed;
        s.unsure = unsure;
    }
    Ok(())
}

/// For each sequence to draft for, the blocks its drafted positions take (the first positions
/// verification takes): `(sequence, drafts to ask for, first position to feed)`, where `first` is what
/// `start(id, length, preemptions)` says. Sequences without the blocks are left out.
fn reserve(
    sched: &mut Scheduler,
    todo: &[(SeqId, usize)],
    mut start: impl FnMut(SeqId, usize, u32) -> usize,
) -> Vec<(SeqId, usize, usize)> {
    let mut plan = Vec::new();
    for &(id, k) in todo {
        let seq = sched.seqs.get_mut(&id).expect("listed");
        // The last token and k - 1 drafts are fed: positions up to len + k - 2.
        if !sched.blocks.grow(seq, seq.len() + k - 1) {
            continue;
        }
        let first = start(id, seq.len(), seq.preemptions);
        plan.push((id, k, first));
    }
    plan
}

/// Batched draft rounds with `runner` (the draft model, or the target exiting after `exit` layers):
/// round 0 feeds each planned sequence its tokens from `first` on, each later round the previous
/// round's drafts; a sequence stops at `k` drafts or after a draft whose top probability is below
/// `p_min` (proposed all the same). Sets each sequence's drafts (if at least `min`); returns, per
/// planned sequence, how many drafts it was fed and whether its drafts end with an unsure one.
fn rounds(
    runner: &mut ModelRunner,
    exit: Option<usize>,
    sched: &mut Scheduler,
    plan: &[(SeqId, usize, usize)],
    p_min: f32,
    min: usize,
) -> Result<Vec<(usize, bool)>> {
    let mut drafts: Vec<Vec<u32>> = vec![Vec::new(); plan.len()];
    let mut unsure = vec![false; plan.len()];
    // Passes after the first each feed one draft.
    let mut passes = vec![0usize; plan.len()];
    let mut active: Vec<usize> = (0..plan.len()).collect();
    let vocab = runner.model.config.vocab_size;
    let mut round = 0;
    while !active.is_empty() {
        let next = {
            let inputs: Vec<SeqInput> = active
                .iter()
                .map(|&i| {
                    let (id, _, first) = plan[i];
                    let seq = &sched.seqs[&id];
                    let (tokens, pos0) = match round {
                        0 => (&seq.tokens[first..], first),
                        _ => (&drafts[i][round - 1..round], seq.len() - 1 + round),
                    };
                    SeqInput::causal(tokens, pos0, &seq.block_table, Logits::Last)
                })
                .collect();
            let logits = match exit {
                Some(layers) => runner.forward_layers(&inputs, layers)?,
                None => runner.forward(&inputs)?,
            };
            let mut next = Vec::with_capacity(active.len());
            for (row, &i) in logits.chunks_exact(vocab).zip(&active) {
                passes[i] += 1;
                // An unsure draft is proposed all the same (its pass is paid for) and ends the chain.
                let sure = p_min <= 0.0 || top_probability(row) >= p_min;
                drafts[i].push(argmax(row));
                unsure[i] = !sure;
                if sure && drafts[i].len() < plan[i].1 {
                    next.push(i);
                }
            }
            next
        };
        active = next;
        round += 1;
    }
    for (&(id, _, _), d) in plan.iter().zip(drafts) {
        if d.len() >= min.max(1) {
            sched.seqs.get_mut(&id).expect("planned").draft = d;
        }
    }
    Ok(passes
        .iter()
        .zip(unsure)
        .map(|(p, u)| (p.saturating_sub(1), u))
        .collect())
}

/// Index of the largest value (the first of equals, as greedy sampling picks).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Checks a draft model against the target it drafts for and builds its runner with the target's
/// cache geometry.
pub fn draft_runner(draft: Model, target: &ModelRunner) -> Result<Box<ModelRunner>> {
    if draft.config.vocab_size != target.model.config.vocab_size {
        bail!(
            "the draft model's vocabulary has {} tokens, the target's {}: speculative decoding needs one shared vocabulary",
            draft.config.vocab_size,
            target.model.config.vocab_size
        );
    }
    Ok(Box::new(ModelRunner::new(
        draft,
        target.cache.block_size,
        target.cache.num_blocks,
    )))
}
