//! The paged KV cache's bookkeeping: which block holds what, who uses it, and the prefix cache.
//!
//! The cache is `num_blocks` blocks of `block_size` positions. A sequence owns a block table; a block
//! can be shared by several sequences (ref-counted) when they start with the same tokens. Every *full*
//! block, once computed, is registered under the hash of its tokens chained with the hash of the blocks
//! before it (so a hash names a whole prefix). When its last user lets go, a registered block keeps its
//! contents on an LRU list: a later request with the same prefix takes it back without recomputing, and
//! the allocator evicts the least recently freed of them only when no blank block is left.
//!
//! Speculative decoding reserves blocks for drafts and keeps fewer: [`BlockManager::rewind`] gives back
//! the blocks that hold only rejected positions. A block is registered only once every position in it
//! is computed *and accepted* ([`BlockManager::commit`] runs after the rewind, over the first
//! `num_computed` tokens), so the prefix cache never hands out rejected keys and values.

use super::sequence::Sequence;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

#[derive(Clone, Debug, Default)]
struct Block {
    ref_count: u32,
    /// Prefix hash and tokens of the full block it holds, if registered.
    hash: Option<u64>,
    tokens: Vec<u32>,
    /// Key of this block in the LRU list while it is free and registered.
    lru_tick: u64,
}

pub struct BlockManager {
    pub block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks with nothing worth keeping.
    blank: Vec<u32>,
    /// Free blocks that hold a registered prefix, least recently freed first.
    lru: BTreeMap<u64, u32>,
    tick: u64,
    by_hash: HashMap<u64, u32>,
    pub prefix_caching: bool,
    /// Prompt tokens looked up in, and found in, the prefix cache (admissions).
    pub lookup_tokens: u64,
    pub hit_tokens: u64,
}

/// Hash of a full block's tokens, chained to the hash of the prefix before it.
pub fn block_hash(prev: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> BlockManager {
        assert!(block_size > 0 && num_blocks > 0);
        BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            // Popped from the end: block 0 first.
            blank: (0..num_blocks as u32).rev().collect(),
            lru: BTreeMap::new(),
            tick: 0,
            by_hash: HashMap::new(),
            prefix_caching,
            lookup_tokens: 0,
            hit_tokens: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks no sequence uses (blank or cached-and-evictable).
    pub fn num_free(&self) -> usize {
        self.blank.len() + self.lru.len()
    }

    /// Free blocks that still hold a cached prefix.
    pub fn num_cached_free(&self) -> usize {
        self.lru.len()
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.blocks[block as usize].ref_count
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// The registered blocks that hold the longest cached prefix of `tokens`, at most `max_blocks`.
    pub fn lookup(&self, tokens: &[u32], max_blocks: usize) -> Vec<(u32, u64)> {
        let mut hits = Vec::new();
        if !self.prefix_caching {
            return hits;
        }
        let mut prev = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = block_hash(prev, chunk);
            match self.by_hash.get(&h) {
                Some(&b) if self.blocks[b as usize].tokens == chunk => hits.push((b, h)),
                _ => break,
            }
            prev = Some(h);
        }
        hits
    }

    /// Free blocks an admission would consume: new blocks for `positions` beyond the hits, plus the
    /// hit blocks that currently sit on the free list.
    pub fn admission_cost(&self, hits: &[(u32, u64)], positions: usize) -> usize {
        let fresh = self.blocks_for(positions).saturating_sub(hits.len());
        fresh
            + hits
                .iter()
                .filter(|(b, _)| self.blocks[*b as usize].ref_count == 0)
                .count()
    }

    /// Gives `seq` the hit blocks (its first positions are then already computed).
    pub fn take_hits(&mut self, seq: &mut Sequence, hits: &[(u32, u64)]) {
        debug_assert!(seq.block_table.is_empty());
        for &(b, h) in hits {
            let blk = &mut self.blocks[b as usize];
            if blk.ref_count == 0 {
                self.lru.remove(&blk.lru_tick);
            }
            blk.ref_count += 1;
            seq.block_table.push(b);
            seq.block_hashes.push(h);
        }
        seq.num_computed = hits.len() * self.block_size;
        seq.num_cached = seq.num_computed;
        self.lookup_tokens += seq.len() as u64;
        self.hit_tokens += seq.num_computed as u64;
    }

    /// Whether `seq` can grow to `positions` positions with the free blocks.
    pub fn can_grow(&self, seq: &Sequence, positions: usize) -> bool {
        self.blocks_for(positions).saturating_sub(seq.block_table.len()) <= self.num_free()
    }

    /// Appends blocks to `seq` until it holds `positions` positions; false (nothing taken) if there are
    /// not enough free blocks.
    pub fn grow(&mut self, seq: &mut Sequence, positions: usize) -> bool {
        if !self.can_grow(seq, positions) {
            return false;
        }
        while seq.block_table.len() < self.blocks_for(positions) {
            let b = self.take_free().expect("counted free blocks");
            seq.block_table.push(b);
        }
        true
    }

    /// A free block: a blank one, else the least recently freed cached one (evicting its prefix).
    fn take_free(&mut self) -> Option<u32> {
        let b = match self.blank.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                let blk = &mut self.blocks[b as usize];
                if let Some(h) = blk.hash.take() {
                    if self.by_hash.get(&h) == Some(&b) {
                        self.by_hash.remove(&h);
                    }
                }
                blk.tokens.clear();
                b
            }
        };
        debug_assert_eq!(self.blocks[b as usize].ref_count, 0);
        self.blocks[b as usize].ref_count = 1;
        Some(b)
    }

    /// Registers the blocks of `seq` that became full and computed since the last call.
    pub fn commit(&mut self, seq: &mut Sequence) {
        let full = seq.num_computed / self.block_size;
        while seq.block_hashes.len() < full {
            let i = seq.block_hashes.len();
            let tokens = &seq.tokens[i * self.block_size..(i + 1) * self.block_size];
            let h = block_hash(seq.block_hashes.last().copied(), tokens);
            seq.block_hashes.push(h);
            if !self.prefix_caching {
                continue;
            }
            let b = seq.block_table[i];
            let blk = &mut self.blocks[b as usize];
            if blk.hash.is_none() && !self.by_hash.contains_key(&h) {
                blk.hash = Some(h);
                blk.tokens = tokens.to_vec();
                self.by_hash.insert(h, b);
            }
        }
    }

    /// Releases every block of `seq` (last blocks first, so they are evicted before the shared heads).
    pub fn free(&mut self, seq: &mut Sequence) {
        for &b in seq.block_table.iter().rev() {
            self.release(b);
        }
        seq.block_table.clear();
        seq.block_hashes.clear();
        seq.num_computed = 0;
    }

    /// Rewinds `seq` to at most `n` computed positions (rejected drafts): the blocks past the one
    /// holding position `n - 1` go back to the free list, and registered hashes past the kept full blocks
    /// are forgotten by the sequence. A partly kept block that is registered or shared must not be
    /// written again, so `seq` then rewinds to that block's start (it recomputes the rest, which is
    /// always safe). Returns the computed positions kept.
    pub fn rewind(&mut self, seq: &mut Sequence, n: usize) -> usize {
        let bs = self.block_size;
        let mut n = n.min(seq.num_computed);
        if !n.is_multiple_of(bs) {
            let blk = &self.blocks[seq.block_table[n / bs] as usize];
            if blk.hash.is_some() || blk.ref_count > 1 {
                n -= n % bs;
            }
        }
        while seq.block_table.len() > self.blocks_for(n) {
            let b = seq.block_table.pop().expect("non-empty");
            self.release(b);
        }
        seq.block_hashes.truncate(n / bs);
        seq.num_computed = n;
        n
    }

    /// Drops one user of block `b`; with none left, it goes to the LRU list if registered, else blank.
    fn release(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        blk.ref_count -= 1;
        if blk.ref_count == 0 {
            if blk.hash.is_some() {
                self.tick += 1;
                blk.lru_tick = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.blank.push(b);
            }
        }
    }

    /// Fraction of looked-up prompt tokens served from the prefix cache.
    pub fn hit_rate(&self) -> f64 {
        if self.lookup_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.lookup_tokens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sequence::Request;

    fn seq(id: u64, prompt: Vec<u32>) -> Sequence {
        Sequence::new(id, Request::greedy(prompt, 4)).unwrap()
    }

    #[test]
    fn grow_and_free() {
        let mut bm = BlockManager::new(4, 4, true);
        let mut a = seq(1, (0..10).collect());
        assert!(bm.grow(&mut a, 10));
        assert_eq!(a.block_table, vec![0, 1, 2]);
        assert_eq!(bm.num_free(), 1);
        let mut b = seq(2, (0..10).collect());
        assert!(!bm.grow(&mut b, 5), "needs two blocks, one is free");
        assert!(b.block_table.is_empty());
        bm.free(&mut a);
        assert_eq!(bm.num_free(), 4);
    }

    #[test]
    fn prefix_hits_share_ref_count_and_survive_free() {
        let mut bm = BlockManager::new(8, 4, true);
        let prompt: Vec<u32> = (0..10).collect();
        let mut a = seq(1, prompt.clone());
        assert!(bm.grow(&mut a, 10));
        a.num_computed = 10;
        bm.commit(&mut a);
        assert_eq!(a.block_hashes.len(), 2);
        // Same first 8 tokens, then different ones.
        let mut p2 = prompt[..8].to_vec();
        p2.extend([99, 98, 97]);
        let mut b = seq(2, p2.clone());
        let hits = bm.lookup(&b.tokens, (b.len() - 1) / 4);
        assert_eq!(hits.len(), 2);
        assert_eq!(bm.admission_cost(&hits, 11), 1);
        bm.take_hits(&mut b, &hits);
        assert_eq!(b.num_computed, 8);
        assert_eq!(bm.ref_count(a.block_table[0]), 2);
        // After both leave, the prefix is still cached and a third sequence finds it.
        bm.free(&mut a);
        bm.free(&mut b);
        assert_eq!(bm.num_cached_free(), 2);
        let c = seq(3, p2);
        assert_eq!(bm.lookup(&c.tokens, 2).len(), 2);
        assert!((bm.hit_rate() - 8.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn lru_evicts_oldest_cached_block_last_blanks_first() {
        let mut bm = BlockManager::new(3, 2, true);
        let mut a = seq(1, vec![1, 2, 3, 4]);
        assert!(bm.grow(&mut a, 4));
        a.num_computed = 4;
        bm.commit(&mut a);
        bm.free(&mut a); // blocks 0, 1 cached; block 2 blank
        let mut b = seq(2, vec![7, 7]);
        assert!(bm.grow(&mut b, 2));
        assert_eq!(b.block_table, vec![2], "blank block used before cached ones");
        let mut c = seq(3, vec![8, 8]);
        assert!(bm.grow(&mut c, 2));
        // Freed last-first: block 1 went on the LRU list first, so it is evicted first.
        assert_eq!(c.block_table, vec![1]);
        assert_eq!(bm.lookup(&[1, 2, 3, 4], 2).len(), 1, "block 0's prefix survives");
    }

    /// Blocks reserved for drafts and rejected go back; a block is registered only with accepted
    /// positions, so a prompt that continues with the rejected tokens finds only the accepted prefix.
    #[test]
    fn rewind_frees_rejected_blocks_and_never_registers_them() {
        let mut bm = BlockManager::new(8, 4, true);
        let mut a = seq(1, (0..6).collect());
        assert!(bm.grow(&mut a, 6));
        a.num_computed = 6;
        bm.commit(&mut a);
        assert_eq!(a.block_hashes.len(), 1);
        // Decode with 5 drafts: positions 6..12 reserved (blocks 1 and 2), 1 draft accepted.
        a.tokens.extend([50, 51, 52, 53, 54]);
        assert!(bm.grow(&mut a, 11));
        assert_eq!(a.block_table.len(), 3);
        a.num_computed = 11;
        assert_eq!(bm.rewind(&mut a, 7), 7);
        a.tokens.truncate(7);
        a.tokens.push(60);
        bm.commit(&mut a);
        assert_eq!(a.block_table.len(), 2, "the block of rejected positions only went back");
        assert_eq!(bm.num_free(), 6);
        assert_eq!(a.block_hashes.len(), 1, "block 1 is not full of accepted positions");
        // Accepted up to 8: block 1 holds 4, 5, 50, 60 and is registered as such.
        a.tokens.push(61);
        a.num_computed = 8;
        bm.commit(&mut a);
        let mut rejected: Vec<u32> = (0..6).collect();
        rejected.extend([50, 51, 52, 53, 54]);
        assert_eq!(
            bm.lookup(&rejected, 2).len(),
            1,
            "rejected positions are never a cached prefix"
        );
        assert_eq!(bm.lookup(&a.tokens, 2).len(), 2);
        // Rewinding into a registered block keeps none of it: it is not to be written again.
        assert_eq!(bm.rewind(&mut a, 6), 4);
        assert_eq!((a.block_table.len(), a.block_hashes.len()), (1, 1));
        bm.free(&mut a);
        assert_eq!(bm.num_free(), 8);
        assert_eq!(bm.lookup(&a.tokens, 2).len(), 2, "the accepted blocks stay cached");
    }

    #[test]
    fn no_prefix_caching_never_hits() {
        let mut bm = BlockManager::new(4, 2, false);
        let mut a = seq(1, vec![1, 2, 3, 4]);
        assert!(bm.grow(&mut a, 4));
        a.num_computed = 4;
        bm.commit(&mut a);
        bm.free(&mut a);
        assert!(bm.lookup(&[1, 2, 3, 4], 2).is_empty());
        assert_eq!(bm.num_cached_free(), 0);
    }
}
