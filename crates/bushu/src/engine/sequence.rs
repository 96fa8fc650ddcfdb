//! A sequence: one stream of tokens being generated (a request's choice), with what the engine knows
//! about it — how many of its positions are in the KV cache, which blocks hold them, how to sample.

pub use crate::generate::FinishReason;
use crate::sampling::{Sampler, SamplingParams};
use anyhow::Result;
use std::time::Instant;

pub type SeqId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued (new, or preempted: its blocks were freed and it will be recomputed).
    Waiting,
    /// Admitted: holds blocks, gets tokens scheduled every step.
    Running,
    Finished,
}

/// What a request asks of one sequence.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Extra token ids that end the sequence (the model's EOS ids are added unless `ignore_eos`).
    pub stop_ids: Vec<u32>,
    /// Return the sampled token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
}

impl Request {
    /// A greedy request (tests, benchmarks).
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
        Request {
            prompt,
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            max_tokens,
            ignore_eos: false,
            stop_ids: Vec::new(),
            logprobs: None,
        }
    }
}

pub struct Sequence {
    pub id: SeqId,
    /// Prompt, then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Positions whose keys and values are in the cache (the first `num_computed` tokens).
    pub num_computed: usize,
    /// Prompt tokens found in the prefix cache the last time it was admitted.
    pub num_cached: usize,
    /// Cache blocks holding positions `i * block_size ..`, in order.
    pub block_table: Vec<u32>,
    /// Prefix hashes of the full blocks already registered with the block manager.
    pub block_hashes: Vec<u64>,
    /// Tokens a drafter guessed come next ([`crate::engine::Engine::propose`]): the next decode step
    /// runs them with the last token and keeps those its own sampling confirms.
    pub draft: Vec<u32>,
    /// Empty for a chain of drafts; else draft `i`'s parent draft, `None` for one that follows
    /// `tokens` directly ([`crate::engine::Engine::propose_tree`]).
    pub draft_parent: Vec<Option<usize>>,
    /// The drafts are the tokens the grammar forces (fast-forward), not a drafter's guesses.
    pub draft_forced: bool,
    pub status: SeqStatus,
    pub finish: Option<FinishReason>,
    pub sampler: Sampler,
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub stop_ids: Vec<u32>,
    pub logprobs: Option<usize>,
    pub arrival: Instant,
    /// Times this sequence was preempted.
    pub preemptions: u32,
}

impl Sequence {
    pub fn new(id: SeqId, req: Request) -> Result<Sequence> {
        let mut sampler = Sampler::new(&req.sampling)?;
        sampler.set_prompt(&req.prompt);
        Ok(Sequence {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            num_computed: 0,
            num_cached: 0,
            block_table: Vec::new(),
            block_hashes: Vec::new(),
            draft: Vec::new(),
            draft_parent: Vec::new(),
            draft_forced: false,
            status: SeqStatus::Waiting,
            finish: None,
            sampler,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            stop_ids: req.stop_ids,
            logprobs: req.logprobs,
            arrival: Instant::now(),
            preemptions: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next one can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Still in its (possibly chunked, possibly recomputed) prefill.
    pub fn is_prefill(&self) -> bool {
        self.num_uncomputed() > 1
    }
}
