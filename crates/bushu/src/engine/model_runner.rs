//! The batched forward step over a paged KV cache.
//!
//! All tokens of a step — one per decoding sequence, a chunk per prefilling one — are stacked into one
//! activation matrix, so each weight matrix is read once for the whole batch. Only attention is per
//! sequence: each token attends, through its sequence's block table, to the positions before it.
//!
//! The math is [`Model::forward`]'s, in the same order and with the same kernels; every kernel used
//! computes a token's row independently of the other rows, and paged attention matches the contiguous
//! kernel bit for bit. So a token's logits do not depend on what it is batched with, nor on how its
//! prompt was split into chunks or served from the prefix cache (`tests/engine_identity.rs`).

use crate::model::kv_cache::{KvLayer, KvType, KvView};
use crate::model::llama::{KvStore, Scratch};
use crate::model::Model;
use anyhow::{bail, Result};
use kernels::attention::AttnShape;
use kernels::paged_attention::{paged_attention, slot, PagedKv, PagedQuery};

/// Keys and values of every layer, in blocks of `block_size` slots of `kv_dim` values (f32, or int8
/// with a scale per slot and KV head: [`KvType`]).
pub struct PagedCache {
    pub layers: Vec<KvLayer>,
    pub block_size: usize,
    pub num_blocks: usize,
    pub kv_type: KvType,
}

impl PagedCache {
    pub fn new(model: &Model, block_size: usize, num_blocks: usize) -> PagedCache {
        let c = &model.config;
        let slots = num_blocks * block_size;
        PagedCache {
            layers: (0..c.n_layers)
                .map(|_| KvLayer::new(model.kv_type, slots, c.kv_dim(), c.head_dim))
                .collect(),
            block_size,
            num_blocks,
            kv_type: model.kv_type,
        }
    }

    /// Bytes for one position of every layer (keys and values) of `model`'s cache type.
    pub fn bytes_per_position(model: &Model) -> usize {
        let c = &model.config;
        model.kv_type.bytes_per_position(c.n_layers, c.kv_dim(), c.head_dim)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(KvLayer::bytes).sum()
    }
}

/// One sequence's share of a step: `tokens` at positions `pos0..`, stored through `block_table`.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub pos0: usize,
    pub block_table: &'a [u32],
    /// Return the logits of the last token.
    pub logits: bool,
}

pub struct ModelRunner {
    pub model: Model,
    pub cache: PagedCache,
    scratch: Scratch,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    out_rows: Vec<usize>,
}

/// The paged cache seen by one step: each token stores and attends through its sequence's blocks.
struct PagedStep<'a> {
    cache: &'a mut PagedCache,
    queries: &'a [PagedQuery<'a>],
}

impl KvStore for PagedStep<'_> {
    fn store(&mut self, layer: usize, token: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = slot(self.queries[token].block_table, self.cache.block_size, pos) * k.len();
        self.cache.layers[layer].write(at, k, v);
    }

    fn attend(&mut self, layer: usize, q: &[f32], out: &mut [f32], shape: AttnShape) {
        let block_size = self.cache.block_size;
        match self.cache.layers[layer].view() {
            KvView::F32 { k, v } => paged_attention(q, PagedKv { k, v, block_size }, self.queries, out, shape),
            KvView::Int8 { k, v } => {
                let kv = PagedKv {
                    k: &k,
                    v: &v,
                    block_size,
                };
                paged_attention(q, kv, self.queries, out, shape)
            }
        }
    }
}

impl ModelRunner {
    pub fn new(model: Model, block_size: usize, num_blocks: usize) -> ModelRunner {
        let cache = PagedCache::new(&model, block_size, num_blocks);
        ModelRunner {
            model,
            cache,
            scratch: Scratch::default(),
            tokens: Vec::new(),
            positions: Vec::new(),
            out_rows: Vec::new(),
        }
    }

    /// Runs one step; returns the logits (`vocab` each) of the sequences with `logits`, in order.
    pub fn forward(&mut self, batch: &[SeqInput]) -> Result<&[f32]> {
        let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if n == 0 {
            bail!("forward step over no tokens");
        }
        let bs = self.cache.block_size;
        for s in batch {
            if s.tokens.is_empty() || (s.pos0 + s.tokens.len()).div_ceil(bs) > s.block_table.len() {
                bail!(
                    "sequence chunk at {} of {} tokens has too few blocks",
                    s.pos0,
                    s.tokens.len()
                );
            }
        }
        // Per token: its sequence's block table and its position.
        let queries: Vec<PagedQuery> = batch
            .iter()
            .flat_map(|s| {
                (0..s.tokens.len()).map(move |t| PagedQuery {
                    block_table: s.block_table,
                    pos: s.pos0 + t,
                    path: &[],
                })
            })
            .collect();
        self.tokens.clear();
        self.positions.clear();
        self.out_rows.clear();
        let mut end = 0;
        for s in batch {
            self.tokens.extend_from_slice(s.tokens);
            self.positions.extend(s.pos0..s.pos0 + s.tokens.len());
            end += s.tokens.len();
            // Logits for the last token of the sequences that sample.
            if s.logits {
                self.out_rows.push(end - 1);
            }
        }
        let mut kv = PagedStep {
            cache: &mut self.cache,
            queries: &queries,
        };
        let (scratch, tokens, positions, rows) = (&mut self.scratch, &self.tokens, &self.positions, &self.out_rows);
        self.model
            .forward_batch(scratch, tokens, positions, &mut kv, rows, &mut |_, _| {})
    }
}
