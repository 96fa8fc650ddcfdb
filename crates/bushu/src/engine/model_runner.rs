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
//!
//! A sequence's chunk may ask for the logits of several rows (verifying drafts) and may be a token
//! tree ([`crate::model::pass`]): its tokens then take the rows `pos0 + index` through the block table
//! while their positions follow their depth.

use crate::model::kv_cache::{KvLayer, KvType, KvView};
use crate::model::llama::{KvStore, Scratch};
use crate::model::pass::Tree;
use crate::model::{Logits, Model};
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
    /// Values per slot (keys or values of one position).
    pub kv_dim: usize,
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
            kv_dim: c.kv_dim(),
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

    /// Keeps an accepted branch of a token tree run from row `pos0` of a sequence: the rows
    /// `pos0 + rows[d]` move to `pos0 + d` through `block_table`, bit for bit (as
    /// [`crate::model::KvCache::keep_rows`]). `rows` must increase, so no row is overwritten before it
    /// moves; the caller then counts `pos0 + rows.len()` positions computed.
    pub fn keep_rows(&mut self, block_table: &[u32], pos0: usize, rows: &[usize]) -> Result<()> {
        if rows.windows(2).any(|w| w[0] >= w[1]) {
            bail!("rows to keep must increase: {rows:?}");
        }
        let end = pos0 + rows.last().map_or(0, |&last| last + 1);
        if end > block_table.len() * self.block_size {
            bail!("rows to keep end at {end}, past the sequence's blocks");
        }
        let kv_dim = self.kv_dim;
        for (d, &r) in rows.iter().enumerate() {
            if r != d {
                let from = slot(block_table, self.block_size, pos0 + r) * kv_dim;
                let to = slot(block_table, self.block_size, pos0 + d) * kv_dim;
                for layer in &mut self.layers {
                    layer.copy(from, to, kv_dim);
                }
            }
        }
        Ok(())
    }
}

/// One sequence's share of a step: `tokens` at positions `pos0..`, stored through `block_table`.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub pos0: usize,
    pub block_table: &'a [u32],
    /// The rows of `tokens` whose logits are returned (none for a prefill chunk short of the end,
    /// the last to sample, several to verify drafts).
    pub logits: Logits<'a>,
    /// `Some(parent)`: the tokens form a tree (as in [`crate::model::Pass`]), in rows `pos0..` at
    /// positions `pos0 + depth`.
    pub tree: Option<&'a [Option<usize>]>,
}

impl<'a> SeqInput<'a> {
    /// A causal chunk.
    pub fn causal(tokens: &'a [u32], pos0: usize, block_table: &'a [u32], logits: Logits<'a>) -> SeqInput<'a> {
        SeqInput {
            tokens,
            pos0,
            block_table,
            logits,
            tree: None,
        }
    }
}

pub struct ModelRunner {
    pub model: Model,
    pub cache: PagedCache,
    scratch: Scratch,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    out_rows: Vec<usize>,
    /// Layouts of the step's token trees (reused).
    trees: Vec<Tree>,
}

/// The paged cache seen by one step: each token stores and attends through its sequence's blocks.
struct PagedStep<'a> {
    cache: &'a mut PagedCache,
    queries: &'a [PagedQuery<'a>],
}

impl KvStore for PagedStep<'_> {
    fn store(&mut self, layer: usize, token: usize, pos: usize, k: &[f32], v: &[f32]) {
        let query = &self.queries[token];
        debug_assert_eq!(query.pos, pos);
        let at = slot(query.block_table, self.cache.block_size, query.row()) * k.len();
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
            trees: Vec::new(),
        }
    }

    /// Runs one step; returns the logits (`vocab` each) of the rows each sequence's `logits` names,
    /// sequence after sequence.
    pub fn forward(&mut self, batch: &[SeqInput]) -> Result<&[f32]> {
        let layers = self.model.config.n_layers;
        self.forward_layers(batch, layers)
    }

    /// [`ModelRunner::forward`] through the first `layers` layers, then the final norm and the classifier
    /// (early exit: the draft of self-speculation). Layers `layers..` store nothing for these tokens.
    pub fn forward_layers(&mut self, batch: &[SeqInput], layers: usize) -> Result<&[f32]> {
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
        // The trees' layouts, one per sequence that has one (in batch order).
        let n_trees = batch.iter().filter(|s| s.tree.is_some()).count();
        if self.trees.len() < n_trees {
            self.trees.resize_with(n_trees, Tree::default);
        }
        let mut trees = self.trees.iter_mut();
        for (s, parent) in batch.iter().filter_map(|s| s.tree.map(|p| (s, p))) {
            if parent.len() != s.tokens.len() {
                bail!("a tree of {} parents over {} tokens", parent.len(), s.tokens.len());
            }
            trees.next().expect("one layout per tree").build(parent)?;
        }
        self.tokens.clear();
        self.positions.clear();
        self.out_rows.clear();
        let mut queries = Vec::with_capacity(n);
        let mut trees = self.trees.iter();
        for s in batch {
            let start = self.tokens.len();
            self.tokens.extend_from_slice(s.tokens);
            let tree = s.tree.map(|_| trees.next().expect("one layout per tree"));
            // Per token: its sequence's block table, its position and (in a tree) its path.
            for t in 0..s.tokens.len() {
                let (pos, path) = match tree {
                    Some(tree) => (s.pos0 + tree.depth(t), tree.path(t)),
                    None => (s.pos0 + t, &[][..]),
                };
                self.positions.push(pos);
                queries.push(PagedQuery {
                    block_table: s.block_table,
                    pos,
                    path,
                });
            }
            let first = self.out_rows.len();
            s.logits.rows(s.tokens.len(), &mut self.out_rows)?;
            self.out_rows[first..].iter_mut().for_each(|r| *r += start);
        }
        let mut kv = PagedStep {
            cache: &mut self.cache,
            queries: &queries,
        };
        let (scratch, tokens, positions, rows) = (&mut self.scratch, &self.tokens, &self.positions, &self.out_rows);
        self.model
            .forward_layers(scratch, tokens, positions, &mut kv, rows, layers, &mut |_, _| {})
    }
}
