//! The step loop: schedule → batched forward → sample → update, over and over. Requests come in and
//! are cancelled between steps; each step reports the tokens it produced — one per sequence, or more
//! when a drafter's guesses ([`Engine::propose`]) are confirmed.
//!
//! Drafts are verified by sampling: the pass gives the logits of the last token and of every draft,
//! the sequence's sampler picks a token from each row in turn, and a draft is kept while it is the
//! token picked. Every emitted token is thus picked by the same sampler, from the same logits (bit for
//! bit) and with the same random draws as without drafts: the output does not depend on the drafts,
//! only the number of steps does. (For a deterministic drafter this is exactly speculative sampling:
//! a draft `d` survives with probability `p(d)`, and a rejection's token follows `p` without `d`.)
//!
//! Structured output's fast-forward uses the same path ([`Engine::fast_forward`]): a decoding sequence
//! whose grammar forces tokens after it gets them as its drafts ([`crate::structured`]), so that they
//! run in this step's pass instead of one step each; they are verified like any draft, and counted
//! apart ([`Engine::forced`], [`Output::forced`]).
//!
//! A grammar's work does not serialize the step: the forced tokens of the step's sequences are
//! computed in parallel (rayon), and so are the masks of every row the step will sample — each
//! constrained sequence's sampler prepares them ([`crate::sampling::Sampler::prepare_grammar`]) on the
//! pool while the batched forward pass runs (`rayon::join`), so that sampling finds them computed.
//!
//! Drafts may form a tree ([`Engine::propose_tree`]): the walk then goes from the last token's row to
//! the child drafted as the token sampled, and so on; the accepted branch's rows are moved to
//! consecutive positions ([`PagedCache::keep_rows`]) before the rest is rewound.

use super::metrics::Gauges;
use super::model_runner::{ModelRunner, PagedCache, SeqInput};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{FinishReason, Request, SeqId, SeqStatus, Sequence};
use crate::model::{Logits, Model};
use crate::sampling::top_logprobs;
use crate::spec_decode::serving::{Speculator, Verified};
use crate::spec_decode::MAX_FORCED;
use anyhow::{bail, Context, Result};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences running at once.
    pub max_batch: usize,
    /// Tokens per step: the decode tokens plus prefill chunks.
    pub max_batched_tokens: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks in the cache.
    pub num_blocks: usize,
    pub prefix_caching: bool,
    /// Longest sequence (prompt + generated).
    pub max_model_len: usize,
    /// KV cache bytes per position (all layers, keys and values) of the model's `--kv-type`.
    pub kv_bytes_per_position: usize,
}

/// Positions budgeted per sequence when the KV cache is sized by default (ollama's default context).
pub const DEFAULT_SEQUENCE_BUDGET: usize = 4096;

/// What a server asks of its KV cache; [`EngineConfig::sized`] turns it into a cache that fits.
#[derive(Clone, Debug)]
pub struct KvSizing {
    pub max_batch: usize,
    /// Longest sequence asked for (`--ctx`; default: the model's trained context).
    pub ctx: Option<usize>,
    /// Bytes asked for (`--kv-memory`; default: from `max_batch`, the context and the memory available).
    pub kv_memory: Option<usize>,
    /// Bytes of memory available ([`crate::model::memory::available_bytes`]); `None`: unknown.
    pub available: Option<u64>,
    /// Size of the model's files (their pages compete with the cache for memory).
    pub model_bytes: u64,
}

/// A sized cache, how it was chosen, and what the user should know about it.
#[derive(Clone, Debug)]
pub struct KvPlan {
    pub cfg: EngineConfig,
    /// How the size was chosen, e.g. `16 sequences x 2048 positions`.
    pub basis: String,
    /// Lines worth a warning: a context beyond the trained one, a context lowered to fit.
    pub notes: Vec<String>,
}

impl EngineConfig {
    /// Sizes the cache for `model`: `kv_memory` bytes if given, else room for `max_batch` sequences of
    /// `ctx` positions; `ctx` defaults to the model's context length. No memory check: tests and
    /// benchmarks with known small sizes; servers use [`EngineConfig::sized`].
    pub fn for_model(model: &Model, max_batch: usize, ctx: Option<usize>, kv_memory: Option<usize>) -> EngineConfig {
        let sizing = KvSizing {
            max_batch,
            ctx: Some(ctx.unwrap_or(model.config.max_ctx).clamp(1, model.config.max_ctx)),
            kv_memory,
            available: None,
            model_bytes: 0,
        };
        match EngineConfig::sized(model, &sizing) {
            Ok(plan) => plan.cfg,
            // Too small for one block: one block, as before sizes were checked.
            Err(_) => EngineConfig::with_blocks(model, max_batch, 1, 16),
        }
    }

    /// The config of a cache of `num_blocks` blocks and sequences of at most `max_model_len`.
    fn with_blocks(model: &Model, max_batch: usize, num_blocks: usize, max_model_len: usize) -> EngineConfig {
        let block_size = 16;
        EngineConfig {
            max_batch,
            max_batched_tokens: 256,
            block_size,
            num_blocks,
            prefix_caching: true,
            max_model_len: max_model_len.min(num_blocks * block_size),
            kv_bytes_per_position: PagedCache::bytes_per_position(model),
        }
    }

    /// Sizes the cache for `model` from what was asked and what the machine has, before anything is
    /// allocated: `--kv-memory` if given (refused beyond the memory available), else `max_batch`
    /// sequences of the context or of [`DEFAULT_SEQUENCE_BUDGET`] positions if less (at least one
    /// whole context), capped at half of the memory available beyond the model's files. The
    /// longest sequence is the context, or what the cache holds if less. Every product is computed
    /// without overflow; a cache that cannot hold one block is an error naming the numbers and the flag.
    pub fn sized(model: &Model, s: &KvSizing) -> Result<KvPlan> {
        use crate::model::memory::{ensure_fits_in, fmt_bytes, product};
        let c = &model.config;
        let block_size = 16;
        let per_pos = PagedCache::bytes_per_position(model);
        let trained = c.max_ctx;
        let mut notes = Vec::new();
        let ctx = match s.ctx {
            Some(0) => bail!("--ctx must be at least 1"),
            Some(n) => n,
            None => trained,
        };
        if ctx > trained {
            notes.extend(c.beyond_training(ctx));
        }
        // Paged blocks are shared: a pool of `max_batch` full contexts is rarely filled (SmolLM2's 8192
        // positions x 16 sequences would be 5.6 GiB of f32), so by default each sequence is budgeted
        // ollama's default context of 4096 positions (vLLM's CPU backend reserves 4 GiB), the pool
        // still holding one sequence of the full context; longer ones take blocks others do not use,
        // and the scheduler preempts when the pool runs out.
        let per_seq_budget = ctx.min(DEFAULT_SEQUENCE_BUDGET);
        let pool = (s.max_batch.saturating_mul(per_seq_budget)).max(ctx);
        let wanted = product(1, pool, per_pos);
        let (bytes, basis) = match s.kv_memory {
            Some(b) => {
                ensure_fits_in(
                    b as u128,
                    s.available,
                    "the KV cache asked for by --kv-memory",
                    "give a smaller --kv-memory",
                )?;
                (b as u128, format!("--kv-memory {}", fmt_bytes(b as u128)))
            }
            None => {
                let per_seq = if per_seq_budget < ctx {
                    format!(
                        "{} sequences x {per_seq_budget} positions, at least one context of {ctx}",
                        s.max_batch
                    )
                } else {
                    format!("{} sequences x {ctx} positions", s.max_batch)
                };
                match s.available.map(|a| a.saturating_sub(s.model_bytes) as u128 / 2) {
                    Some(cap) if wanted > cap => (
                        cap,
                        format!(
                            "half of the {} of memory available beside the model's {} ({per_seq} would need {})",
                            fmt_bytes(s.available.unwrap_or(0) as u128),
                            fmt_bytes(s.model_bytes as u128),
                            fmt_bytes(wanted)
                        ),
                    ),
                    _ => (wanted, per_seq),
                }
            }
        };
        let blocks = bytes / (per_pos as u128 * block_size as u128);
        if blocks == 0 {
            bail!(
                "a KV cache of {} holds fewer than {block_size} positions of {} each ({}); give a larger --kv-memory or free memory",
                fmt_bytes(bytes),
                fmt_bytes(per_pos as u128),
                basis
            );
        }
        // `bytes` fits in usize (checked against usize::MAX or made from usizes), so the count does too.
        let num_blocks = usize::try_from(blocks).context("KV block count")?;
        let cfg = EngineConfig::with_blocks(model, s.max_batch, num_blocks, ctx);
        if cfg.max_model_len < ctx {
            notes.push(format!(
                "the longest sequence is {} positions, what the KV cache of {} holds, not the context's {ctx}; give a larger --kv-memory or a smaller --ctx",
                cfg.max_model_len,
                fmt_bytes(cfg.kv_bytes() as u128)
            ));
        }
        Ok(KvPlan { cfg, basis, notes })
    }

    /// Bytes of the whole KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.num_blocks * self.block_size * self.kv_bytes_per_position
    }
}

/// Log-probability of a sampled token, and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct Logprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What one step did for one sequence.
#[derive(Clone, Debug)]
pub struct Output {
    pub seq: SeqId,
    /// The tokens this step produced, in order: usually one, more when drafts were confirmed, none
    /// when the sequence ended without one.
    pub tokens: Vec<u32>,
    /// One per token, when the request asked for log-probabilities.
    pub logprobs: Vec<Logprobs>,
    pub finish: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache (set with the first token).
    pub cached_tokens: usize,
    /// Drafts this step verified for the sequence and how many it kept.
    pub verified: Verified,
    /// Grammar-forced tokens (fast-forward) this step fed for the sequence and how many it kept.
    pub forced: Verified,
}

/// Fast-forward over every sequence: steps that fed grammar-forced tokens, the tokens, those kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForcedCounters {
    pub steps: u64,
    pub tokens: u64,
    pub accepted: u64,
}

pub struct Engine {
    pub sched: Scheduler,
    pub runner: ModelRunner,
    pub cfg: EngineConfig,
    eos: Vec<u32>,
    next_id: SeqId,
    steps: u64,
    /// Speculative decoding: drafts for every decoding sequence before each step.
    pub spec: Option<Speculator>,
    /// Structured output: feed the tokens a sequence's grammar forces in one step (default); the
    /// outputs are the same without, in more steps.
    pub fast_forward: bool,
    pub forced: ForcedCounters,
}

impl Engine {
    pub fn new(model: Model, eos: Vec<u32>, cfg: EngineConfig) -> Engine {
        let runner = ModelRunner::new(model, cfg.block_size, cfg.num_blocks);
        let sched = Scheduler::new(SchedulerConfig {
            max_batch: cfg.max_batch,
            max_batched_tokens: cfg.max_batched_tokens,
            block_size: cfg.block_size,
            num_blocks: cfg.num_blocks,
            prefix_caching: cfg.prefix_caching,
            max_model_len: cfg.max_model_len,
        });
        Engine {
            sched,
            runner,
            cfg,
            eos,
            next_id: 1,
            steps: 0,
            spec: None,
            fast_forward: true,
            forced: ForcedCounters::default(),
        }
    }

    /// Checks a request against the context; returns the error text the client should see.
    pub fn check(&self, req: &Request) -> Result<()> {
        let max = self.cfg.max_model_len;
        if req.prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if req.prompt.len() >= max {
            bail!(
                "This model's maximum context length is {max} tokens. However, you requested {} tokens in the prompt, which leaves no room for the completion.",
                req.prompt.len()
            );
        }
        let vocab = self.runner.model.config.vocab_size;
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {t} is outside the vocabulary of {vocab} tokens");
        }
        req.sampling.validate()?;
        Ok(())
    }

    /// Queues a request; it joins the batch at the next step with room for it.
    pub fn add(&mut self, req: Request) -> Result<SeqId> {
        self.check(&req)?;
        let id = self.next_id;
        self.next_id += 1;
        self.sched.add(Sequence::new(id, req)?);
        Ok(id)
    }

    /// Proposes `draft` as the tokens that follow sequence `id` so far: its next decode step verifies
    /// them in the same pass (replacing an earlier proposal). Drafts past the sequence's length limits
    /// are dropped, since they could not be kept.
    pub fn propose(&mut self, id: SeqId, draft: &[u32]) -> Result<()> {
        self.propose_tree(id, draft, &[])
    }

    /// [`Engine::propose`] for a tree of drafts: `parent[i]` is the index of draft `i`'s parent
    /// draft (an earlier one), `None` if it follows the sequence's tokens directly; an empty `parent`
    /// is a chain. Near the length limits only the first drafts are kept (a tree's prefix is a tree).
    pub fn propose_tree(&mut self, id: SeqId, draft: &[u32], parent: &[Option<usize>]) -> Result<()> {
        let vocab = self.runner.model.config.vocab_size;
        if let Some(&t) = draft.iter().find(|&&t| t as usize >= vocab) {
            bail!("draft token id {t} is outside the vocabulary of {vocab} tokens");
        }
        if !parent.is_empty() && parent.len() != draft.len() {
            bail!("a tree of {} parents over {} drafts", parent.len(), draft.len());
        }
        if let Some((i, p)) = parent.iter().enumerate().find(|&(i, p)| p.is_some_and(|p| p >= i)) {
            bail!("draft {i} names draft {p:?} as its parent, not an earlier one");
        }
        let max_len = self.cfg.max_model_len;
        let Some(seq) = self.sched.seqs.get_mut(&id).filter(|s| s.status != SeqStatus::Finished) else {
            bail!("no running sequence {id}");
        };
        // Each confirmed draft is one more token and one more computed position, and the step adds
        // one more token after them.
        let room = max_len
            .saturating_sub(seq.len())
            .min(seq.max_tokens.saturating_sub(seq.num_generated()))
            .saturating_sub(1);
        let keep = draft.len().min(room);
        seq.draft.clear();
        seq.draft_forced = false;
        seq.draft.extend_from_slice(&draft[..keep]);
        seq.draft_parent.clear();
        seq.draft_parent.extend_from_slice(&parent[..parent.len().min(keep)]);
        Ok(())
    }

    /// Cancels a sequence and frees its blocks.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let found = self.sched.abort(id);
        self.sched.remove(id);
        found
    }

    pub fn has_work(&self) -> bool {
        !self.sched.is_idle()
    }

    pub fn gauges(&self) -> Gauges {
        let b = &self.sched.blocks;
        Gauges {
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            kv_blocks_total: b.num_blocks(),
            kv_blocks_free: b.num_free(),
            kv_blocks_cached: b.num_cached_free(),
            prefix_lookup_tokens: b.lookup_tokens,
            prefix_hit_tokens: b.hit_tokens,
            preemptions: self.sched.preemptions,
            steps: self.steps,
        }
    }

    /// Fast-forward: each decoding sequence whose grammar forces tokens after it gets them as its
    /// drafts (at most [`MAX_FORCED`], within its length limits), ahead of the speculative drafter, which
    /// leaves sequences with drafts alone. Forced drafts a step could not run are recomputed.
    fn forced_drafts(&mut self) {
        use rayon::prelude::*;
        let max_len = self.cfg.max_model_len;
        let mut todo: Vec<&mut Sequence> = Vec::new();
        for seq in self.sched.seqs.values_mut() {
            if seq.draft_forced {
                seq.draft.clear();
                seq.draft_forced = false;
            }
            if seq.status == SeqStatus::Running
                && seq.num_uncomputed() == 1
                && seq.draft.is_empty()
                && seq.sampler.has_grammar()
            {
                todo.push(seq);
            }
        }
        // Each sequence's grammar is its own: computed in parallel.
        let one = |seq: &mut &mut Sequence| {
            // As in `propose_tree`: each kept draft is one more token, and one more follows them.
            let room = max_len
                .saturating_sub(seq.len())
                .min(seq.max_tokens.saturating_sub(seq.num_generated()))
                .saturating_sub(1);
            let forced = seq.sampler.forced_tokens(room.min(MAX_FORCED));
            if !forced.is_empty() {
                seq.draft = forced;
                seq.draft_parent.clear();
                seq.draft_forced = true;
            }
        };
        match todo.len() {
            0 => {}
            1 => one(&mut todo[0]),
            _ => todo.par_iter_mut().for_each(one),
        }
    }

    /// One step of the loop. Finished sequences are reported once and forgotten.
    pub fn step(&mut self) -> Result<Vec<Output>> {
        if self.fast_forward {
            self.forced_drafts();
        }
        if let Some(spec) = &mut self.spec {
            spec.draft(&mut self.sched, &mut self.runner)?;
        }
        let chunks = self.sched.schedule();
        let mut outputs = Vec::new();
        // Sequences the scheduler had to end (too long for the whole cache).
        let ended: Vec<SeqId> = self
            .sched
            .seqs
            .values()
            .filter(|s| s.status == SeqStatus::Finished)
            .map(|s| s.id)
            .collect();
        for id in ended {
            let seq = self.sched.remove(id).expect("listed");
            outputs.push(Output {
                seq: id,
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: seq.finish,
                cached_tokens: 0,
                verified: Verified::default(),
                forced: Verified::default(),
            });
        }
        if chunks.is_empty() {
            return Ok(outputs);
        }
        self.steps += 1;
        let seqs = &mut self.sched.seqs;
        // A chunk with drafts runs the sequence's uncomputed token and the drafts after it.
        let joined: Vec<Option<Vec<u32>>> = chunks
            .iter()
            .map(|c| {
                let s = &seqs[&c.seq];
                (c.draft > 0).then(|| {
                    let mut t = s.tokens[c.pos0..c.pos0 + c.n - c.draft].to_vec();
                    t.extend_from_slice(&s.draft[..c.draft]);
                    t
                })
            })
            .collect();
        // A tree of drafts over the chunk: the last token is its root, row 0.
        let trees: Vec<Option<Vec<Option<usize>>>> = chunks
            .iter()
            .map(|c| {
                let s = &seqs[&c.seq];
                (c.draft > 0 && !s.draft_parent.is_empty()).then(|| {
                    let drafts = (0..c.draft).map(|i| Some(draft_parent_row(&s.draft_parent, i)));
                    std::iter::once(None).chain(drafts).collect()
                })
            })
            .collect();
        // Logits of the rows from the last token before the drafts to the end: slices of one list
        // (empty, and not allocated, without drafts).
        let max_n = chunks.iter().filter(|c| c.draft > 0).map(|c| c.n).max().unwrap_or(0);
        let row_ids: Vec<usize> = (0..max_n).collect();
        // Each scheduled sequence's borrow split in two: the tokens and block table the pass reads, and
        // — for a sequence sampled this step under a grammar — its sampler, whose masks for this
        // step's rows are computed meanwhile (structured output's masks overlap the forward pass and
        // run in parallel across sequences instead of one after the other on this thread).
        let mut views = std::collections::HashMap::with_capacity(chunks.len());
        let mut prepare: Vec<(&mut crate::sampling::Sampler, &[u32])> = Vec::new();
        for s in seqs.values_mut() {
            let Some(c) = chunks.iter().find(|c| c.seq == s.id) else {
                continue;
            };
            let Sequence {
                tokens,
                block_table,
                sampler,
                draft,
                draft_parent,
                ..
            } = s;
            views.insert(c.seq, (tokens.as_slice(), block_table.as_slice()));
            if c.sample && sampler.has_grammar() {
                // The rows of a chain of drafts follow the drafts; a tree's are prepared from its root only.
                let drafts = match draft_parent.is_empty() {
                    true => &draft[..c.draft],
                    false => &[][..],
                };
                prepare.push((sampler, drafts));
            }
        }
        let inputs: Vec<SeqInput> = chunks
            .iter()
            .zip(&joined)
            .zip(&trees)
            .map(|((c, joined), tree)| {
                let (seq_tokens, block_table) = views[&c.seq];
                let logits = match (c.sample, c.draft) {
                    (false, _) => Logits::None,
                    (true, 0) => Logits::Last,
                    (true, k) => Logits::Rows(&row_ids[c.n - k - 1..c.n]),
                };
                let tokens = match joined {
                    Some(t) => t,
                    None => &seq_tokens[c.pos0..c.pos0 + c.n],
                };
                SeqInput {
                    tree: tree.as_deref(),
                    ..SeqInput::causal(tokens, c.pos0, block_table, logits)
                }
            })
            .collect();
        let vocab = self.runner.model.config.vocab_size;
        let runner = &mut self.runner;
        let logits = if prepare.is_empty() {
            runner.forward(&inputs)?
        } else {
            let (logits, ()) = rayon::join(
                || runner.forward(&inputs),
                || {
                    use rayon::prelude::*;
                    prepare.par_iter_mut().for_each(|(s, d)| s.prepare_grammar(d))
                },
            );
            logits?
        };
        drop(inputs);
        drop(prepare);
        drop(views);
        let mut sampled = Vec::new();
        // Per sampling chunk: its output's index and the sequence's length before this step's tokens.
        let mut bases = Vec::new();
        // First logits row of the next sampling chunk.
        let mut at = 0;
        // Accepted tree branches to move: sequence, first row, rows (done once the logits are read).
        let mut keeps = Vec::new();
        for c in chunks.iter().filter(|c| c.sample) {
            let seq = seqs.get_mut(&c.seq).expect("scheduled");
            let cached_tokens = if seq.num_generated() == 0 { seq.num_cached } else { 0 };
            let mut out = Output {
                seq: c.seq,
                tokens: Vec::with_capacity(1),
                logprobs: Vec::new(),
                finish: None,
                cached_tokens,
                verified: Verified::default(),
                forced: Verified::default(),
            };
            // Row i + 1 follows draft i (row 0 the last token). From row 0, sample a token and go on
            // to the row of the draft that is this token, a child of the current row, while there is one.
            let chunk_rows = &logits[at * vocab..(at + c.draft + 1) * vocab];
            at += c.draft + 1;
            // Rows of the accepted drafts (no allocation without drafts).
            let mut accepted = Vec::new();
            let mut node = 0;
            loop {
                let row = &chunk_rows[node * vocab..(node + 1) * vocab];
                let t = seq.sampler.sample(row);
                if let Some(k) = seq.logprobs {
                    out.logprobs.push(Logprobs {
                        logprob: logprob_of(row, t),
                        top: top_logprobs(row, k),
                    });
                }
                out.tokens.push(t);
                let parent_row = |i: usize| match seq.draft_parent.is_empty() {
                    true => i,
                    false => draft_parent_row(&seq.draft_parent, i),
                };
                match (0..c.draft).find(|&i| parent_row(i) == node && seq.draft[i] == t) {
                    Some(i) => {
                        node = i + 1;
                        accepted.push(node);
                    }
                    None => break,
                }
            }
            let v = Verified {
                drafted: c.draft,
                accepted: accepted.len(),
            };
            if seq.draft_forced {
                seq.draft_forced = false;
                out.forced = v;
                if v.drafted > 0 {
                    self.forced.steps += 1;
                    self.forced.tokens += v.drafted as u64;
                    self.forced.accepted += v.accepted as u64;
                }
            } else {
                out.verified = v;
                if let Some(spec) = &mut self.spec {
                    spec.verified(c.seq, v);
                }
            }
            // A tree's accepted branch is moved to consecutive positions (a chain's already is).
            if accepted.iter().enumerate().any(|(d, &r)| r != d + 1) {
                let path: Vec<usize> = std::iter::once(0).chain(accepted).collect();
                keeps.push((c.seq, c.pos0, path));
            }
            sampled.push(out.tokens.clone());
            bases.push((outputs.len(), seq.len()));
            outputs.push(out);
        }
        for (id, pos0, path) in keeps {
            self.runner.cache.keep_rows(&seqs[&id].block_table, pos0, &path)?;
        }
        let done = self.sched.update(&chunks, &sampled, &self.eos);
        for (id, reason) in done {
            let seq = self.sched.remove(id).expect("finished sequence");
            if let Some(&(i, base)) = bases.iter().find(|&&(i, _)| outputs[i].seq == id) {
                // Tokens sampled after the one that ended the sequence are not part of it.
                let o = &mut outputs[i];
                o.tokens.truncate(seq.len() - base);
                o.logprobs.truncate(seq.len() - base);
                o.finish = Some(reason);
            }
        }
        Ok(outputs)
    }

    /// Runs requests to completion (offline use, tests, benchmarks): the generated tokens of each.
    pub fn generate(&mut self, reqs: Vec<Request>) -> Result<Vec<Vec<u32>>> {
        let mut ids = Vec::new();
        for r in reqs {
            ids.push(self.add(r)?);
        }
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
        while self.has_work() {
            for o in self.step()? {
                if let Some(i) = ids.iter().position(|&id| id == o.seq) {
                    out[i].extend_from_slice(&o.tokens);
                }
            }
        }
        Ok(out)
    }
}

/// The chunk row of draft `i`'s parent in a tree of drafts (row 0 is the last token, draft `j` row
/// `j + 1`).
fn draft_parent_row(parent: &[Option<usize>], i: usize) -> usize {
    parent[i].map_or(0, |p| p + 1)
}

/// `log_softmax(logits)[t]`.
fn logprob_of(logits: &[f32], t: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    logits[t as usize] - lse
}
