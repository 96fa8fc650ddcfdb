//! Which tokens of which sequences go through the model next (lecture §5: continuous batching with a
//! dynamic split).
//!
//! Every step has a token budget. Running sequences come first, in the order they were admitted: a
//! decoding sequence takes one token, a sequence still in its prefill takes as much of its prompt as
//! the budget leaves (chunked prefill), so long prompts never stall the decodes. Then, budget and batch
//! size permitting, waiting sequences are admitted — each step, not only when the batch drains — after
//! a prefix-cache lookup that may skip most of their prompt. When a sequence needs a block and none is
//! free, the most recently admitted running sequence is preempted: its blocks are freed and it goes
//! back to the head of the queue, to be recomputed (cheaply, if its blocks are still in the cache).
//!
//! A decoding sequence with drafts ([`Sequence::draft`]) runs them in the same chunk as its last token:
//! the scheduler reserves their positions (blocks included, when they fit without preempting anyone),
//! and [`Scheduler::update`] keeps the positions of the drafts the sampled tokens confirm and rewinds
//! the rest ([`BlockManager::rewind`]).

use super::block_manager::BlockManager;
use super::sequence::{FinishReason, SeqId, SeqStatus, Sequence};
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences running at once.
    pub max_batch: usize,
    /// Tokens per step (decodes + prefill chunks).
    pub max_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub prefix_caching: bool,
    /// Longest sequence (prompt + generated), at most the cache's capacity.
    pub max_model_len: usize,
}

/// Tokens of one sequence to run this step: positions `pos0 .. pos0 + n`, the last `draft` of them
/// the sequence's drafts (beyond its tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seq: SeqId,
    pub pos0: usize,
    pub n: usize,
    /// The chunk reaches the end of the sequence: sample a token from the logits of its last token
    /// before the drafts, then one more per draft confirmed.
    pub sample: bool,
    pub draft: usize,
}

pub struct Scheduler {
    pub cfg: SchedulerConfig,
    pub blocks: BlockManager,
    pub seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    pub preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        assert!(cfg.max_batch > 0 && cfg.max_batched_tokens > 0);
        let blocks = BlockManager::new(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
        Scheduler {
            cfg,
            blocks,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
        }
    }

    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Picks this step's chunks (and admits, preempts as needed).
    pub fn schedule(&mut self) -> Vec<Chunk> {
        let mut budget = self.cfg.max_batched_tokens;
        let mut out = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = self.seqs.get_mut(&id).expect("running sequence");
            let n = seq.num_uncomputed().min(budget);
            // Drafts ride along with a decode's token, if the budget and the free blocks allow.
            let mut draft = 0;
            if seq.num_uncomputed() == 1 {
                draft = seq.draft.len().min(budget - 1);
                if !self.blocks.can_grow(seq, seq.num_computed + n + draft) {
                    draft = 0;
                }
            }
            let positions = seq.num_computed + n;
            if self.blocks.grow(seq, positions + draft) {
                out.push(Chunk {
                    seq: id,
                    pos0: seq.num_computed,
                    n: n + draft,
                    sample: positions == seq.len(),
                    draft,
                });
                budget -= n + draft;
                i += 1;
                continue;
            }
            // Out of blocks: preempt from the back (the latest admitted) until this one fits.
            preempted = true;
            let victim = *self.running.last().expect("non-empty");
            if victim == id && i == 0 {
                // Alone and still too long for the whole cache: it cannot go on.
                self.running.remove(0);
                self.finish(id, FinishReason::Length);
                continue;
            }
            self.running.pop();
            self.preempt(victim);
        }
        if preempted {
            return out;
        }
        while budget > 0 && self.running.len() < self.cfg.max_batch {
            let Some(&id) = self.waiting.front() else { break };
            let seq = self.seqs.get_mut(&id).expect("waiting sequence");
            let bs = self.blocks.block_size;
            // At least the last token is computed, to have logits to sample from.
            let hits = self.blocks.lookup(&seq.tokens, (seq.len() - 1) / bs);
            let cached = hits.len() * bs;
            let n = (seq.len() - cached).min(budget);
            if self.blocks.admission_cost(&hits, cached + n) > self.blocks.num_free() {
                break;
            }
            self.waiting.pop_front();
            self.blocks.take_hits(seq, &hits);
            assert!(self.blocks.grow(seq, cached + n), "admission was costed");
            seq.status = SeqStatus::Running;
            out.push(Chunk {
                seq: id,
                pos0: cached,
                n,
                sample: cached + n == seq.len(),
                draft: 0,
            });
            budget -= n;
            self.running.push(id);
        }
        out
    }

    /// Frees the blocks of a running sequence and queues it first, to be recomputed.
    fn preempt(&mut self, id: SeqId) {
        let seq = self.seqs.get_mut(&id).expect("preempted sequence");
        self.blocks.free(seq);
        seq.status = SeqStatus::Waiting;
        seq.preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(id);
    }

    /// After the model ran `chunks`: advances them, appends the sampled tokens (`sampled[k]` for the
    /// k-th chunk with `sample`: the drafts confirmed, in order, then one more), keeps the positions of
    /// the confirmed drafts and rewinds the rejected ones, registers full blocks and finishes sequences
    /// (a sequence ends at its first stop token or at its length limit; the tokens sampled after are
    /// dropped). Returns the finished ones.
    pub fn update(&mut self, chunks: &[Chunk], sampled: &[Vec<u32>], eos: &[u32]) -> Vec<(SeqId, FinishReason)> {
        let mut done = Vec::new();
        let mut s = sampled.iter();
        for c in chunks {
            let seq = self.seqs.get_mut(&c.seq).expect("scheduled sequence");
            seq.num_computed = c.pos0 + c.n - c.draft;
            if c.sample {
                let toks = s.next().expect("sampled tokens per sampling chunk");
                // Confirmed drafts are computed positions: the token sampled from each row matched it.
                seq.num_computed += toks.len().saturating_sub(1).min(c.draft);
                seq.draft.clear();
                seq.draft_parent.clear();
                for &t in toks {
                    seq.tokens.push(t);
                    let reason = if !seq.ignore_eos && (eos.contains(&t) || seq.stop_ids.contains(&t)) {
                        Some(FinishReason::Stop)
                    } else if seq.num_generated() >= seq.max_tokens || seq.len() >= self.cfg.max_model_len {
                        Some(FinishReason::Length)
                    } else {
                        None
                    };
                    if let Some(r) = reason {
                        done.push((c.seq, r));
                        break;
                    }
                }
            }
            if c.draft > 0 {
                // Blocks reserved for rejected drafts go back; only accepted positions get committed.
                let kept = seq.num_computed.min(seq.len());
                self.blocks.rewind(seq, kept);
            }
            self.blocks.commit(seq);
        }
        for &(id, r) in &done {
            self.running.retain(|&x| x != id);
            self.finish(id, r);
        }
        done
    }

    /// Marks a sequence finished and frees its blocks (it stays in `seqs` until [`Scheduler::remove`]).
    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.blocks.free(seq);
            seq.status = SeqStatus::Finished;
            seq.finish = Some(reason);
        }
    }

    /// Cancels a sequence wherever it is; its blocks are freed at once.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.get(&id) else { return false };
        if seq.status == SeqStatus::Finished {
            return false;
        }
        self.waiting.retain(|&x| x != id);
        self.running.retain(|&x| x != id);
        self.finish(id, FinishReason::Abort);
        true
    }

    /// Forgets a finished sequence.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        self.seqs.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sequence::Request;

    fn sched(max_batch: usize, budget: usize, num_blocks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            max_batch,
            max_batched_tokens: budget,
            block_size: 4,
            num_blocks,
            prefix_caching: true,
            max_model_len: 1024,
        })
    }

    fn add(s: &mut Scheduler, id: u64, prompt_len: usize, max_tokens: usize) {
        let prompt = (0..prompt_len as u32).map(|t| t + 100 * id as u32).collect();
        s.add(Sequence::new(id, Request::greedy(prompt, max_tokens)).unwrap());
    }

    /// Runs a step with a fixed sampled token.
    fn step(s: &mut Scheduler) -> Vec<Chunk> {
        let chunks = s.schedule();
        let sampled: Vec<Vec<u32>> = chunks.iter().filter(|c| c.sample).map(|_| vec![7]).collect();
        s.update(&chunks, &sampled, &[]);
        chunks
    }

    #[test]
    fn chunked_prefill_mixes_with_decodes() {
        let mut s = sched(4, 8, 64);
        add(&mut s, 1, 3, 10);
        let c = step(&mut s);
        assert_eq!(
            c,
            vec![Chunk {
                seq: 1,
                pos0: 0,
                n: 3,
                sample: true,
                draft: 0
            }]
        );
        add(&mut s, 2, 20, 10);
        // Seq 1 decodes one token; seq 2 gets the 7 tokens left of the budget.
        let c = step(&mut s);
        assert_eq!(
            c[0],
            Chunk {
                seq: 1,
                pos0: 3,
                n: 1,
                sample: true,
                draft: 0
            }
        );
        assert_eq!(
            c[1],
            Chunk {
                seq: 2,
                pos0: 0,
                n: 7,
                sample: false,
                draft: 0
            }
        );
        let c = step(&mut s);
        assert_eq!(
            c[1],
            Chunk {
                seq: 2,
                pos0: 7,
                n: 7,
                sample: false,
                draft: 0
            }
        );
        let c = step(&mut s);
        assert_eq!(
            c[1],
            Chunk {
                seq: 2,
                pos0: 14,
                n: 6,
                sample: true,
                draft: 0
            }
        );
    }

    #[test]
    fn admits_every_step_up_to_max_batch() {
        let mut s = sched(2, 100, 64);
        for id in 1..=3 {
            add(&mut s, id, 5, 2);
        }
        let c = step(&mut s);
        assert_eq!(c.len(), 2);
        assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
        step(&mut s); // both finish (2 tokens each)
        assert_eq!(s.num_running(), 0);
        let c = step(&mut s);
        assert_eq!(
            c,
            vec![Chunk {
                seq: 3,
                pos0: 0,
                n: 5,
                sample: true,
                draft: 0
            }]
        );
    }

    #[test]
    fn preempts_latest_and_recovers() {
        // 4 blocks of 4: two sequences of 7 prompt tokens fill them once they decode past 8.
        let mut s = sched(4, 64, 4);
        add(&mut s, 1, 7, 6);
        add(&mut s, 2, 7, 6);
        step(&mut s);
        assert_eq!(s.num_running(), 2);
        let mut steps = 0;
        while !s.is_idle() && steps < 50 {
            step(&mut s);
            steps += 1;
        }
        assert!(s.preemptions > 0);
        for id in [1, 2] {
            let seq = &s.seqs[&id];
            assert_eq!(seq.finish, Some(FinishReason::Length));
            assert_eq!(seq.num_generated(), 6);
        }
        assert_eq!(s.blocks.num_free(), 4);
    }

    #[test]
    fn prefix_cache_skips_shared_blocks() {
        let mut s = sched(4, 100, 64);
        add(&mut s, 1, 10, 1);
        step(&mut s);
        let prompt: Vec<u32> = (0..10).map(|t| t + 100).collect();
        s.add(Sequence::new(5, Request::greedy(prompt, 1)).unwrap());
        let c = step(&mut s);
        assert_eq!(
            c,
            vec![Chunk {
                seq: 5,
                pos0: 8,
                n: 2,
                sample: true,
                draft: 0
            }]
        );
    }

    /// A decode with drafts reserves their positions; the rejected ones are rewound, their blocks
    /// given back; drafts that do not fit the free blocks are left out rather than preempt anyone.
    #[test]
    fn drafts_reserve_then_rewind() {
        let mut s = sched(4, 100, 5);
        add(&mut s, 1, 7, 10);
        step(&mut s);
        let seq = s.seqs.get_mut(&1).unwrap();
        seq.draft = vec![1, 2, 3, 4, 5, 6];
        let c = s.schedule();
        let want = Chunk {
            seq: 1,
            pos0: 7,
            n: 7,
            sample: true,
            draft: 6,
        };
        assert_eq!(c, vec![want]);
        assert_eq!(s.seqs[&1].block_table.len(), 4, "positions 0..14 reserved");
        // Draft 1 confirmed, then another token: 2 tokens, 9 positions computed.
        s.update(&c, &[vec![1, 9]], &[]);
        let seq = &s.seqs[&1];
        assert_eq!((seq.num_computed, seq.len(), seq.block_table.len()), (9, 10, 3));
        assert!(seq.draft.is_empty());
        assert_eq!(s.blocks.num_free(), 2);
        // 13 drafts would need 6 blocks of 4 (23 positions): they wait, the decode goes alone.
        s.seqs.get_mut(&1).unwrap().draft = (0..13).collect();
        assert_eq!(s.schedule()[0].draft, 0);
    }

    #[test]
    fn abort_frees_blocks() {
        let mut s = sched(4, 100, 16);
        add(&mut s, 1, 10, 100);
        step(&mut s);
        assert!(s.blocks.num_free() < 16);
        assert!(s.abort(1));
        assert_eq!(s.blocks.num_free(), 16);
        assert!(s.is_idle());
        assert_eq!(s.seqs[&1].finish, Some(FinishReason::Abort));
    }
}
