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

use crate::model::Model;
use anyhow::{bail, Result};
use kernels::attention::AttnShape;
use kernels::ops::{add_assign, rmsnorm, rope, swiglu};
use kernels::paged_attention::{paged_attention, slot, PagedKv, PagedQuery};
use kernels::{matmul_with, Precision, QMatrix};

/// Keys and values of every layer, in blocks of `block_size` slots of `kv_dim` values.
pub struct PagedCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl PagedCache {
    pub fn new(n_layers: usize, kv_dim: usize, block_size: usize, num_blocks: usize) -> PagedCache {
        let n = num_blocks * block_size * kv_dim;
        PagedCache {
            k: (0..n_layers).map(|_| vec![0.0; n]).collect(),
            v: (0..n_layers).map(|_| vec![0.0; n]).collect(),
            block_size,
            num_blocks,
        }
    }

    /// Bytes for one position of every layer (keys and values).
    pub fn bytes_per_position(n_layers: usize, kv_dim: usize) -> usize {
        2 * n_layers * kv_dim * std::mem::size_of::<f32>()
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

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
}

fn fit(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

pub struct ModelRunner {
    pub model: Model,
    pub cache: PagedCache,
    inv_freq: Vec<f32>,
    scratch: Scratch,
}

impl ModelRunner {
    pub fn new(model: Model, block_size: usize, num_blocks: usize) -> ModelRunner {
        let c = &model.config;
        let mut inv_freq = c.rope_inv_freq();
        if let Some(factors) = &model.weights.rope_freqs {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let cache = PagedCache::new(c.n_layers, c.kv_dim(), block_size, num_blocks);
        ModelRunner {
            model,
            cache,
            inv_freq,
            scratch: Scratch::default(),
        }
    }

    /// Runs one step; returns the logits (`vocab` each) of the sequences with `logits`, in order.
    pub fn forward(&mut self, batch: &[SeqInput]) -> Result<&[f32]> {
        let c = &self.model.config;
        let w = &self.model.weights;
        let precision = self.model.precision;
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
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                bail!("token id {t} is outside the vocabulary of {} tokens", c.vocab_size);
            }
        }
        let (dim, q_dim, kv_dim, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        // Per token: its sequence's block table and its position.
        let queries: Vec<PagedQuery> = batch
            .iter()
            .flat_map(|s| {
                (0..s.tokens.len()).map(move |t| PagedQuery {
                    block_table: s.block_table,
                    pos: s.pos0 + t,
                })
            })
            .collect();
        let s = &mut self.scratch;

        let x = fit(&mut s.x, n * dim);
        let embd = w.token_embd.matrix();
        for (row, &t) in x.chunks_exact_mut(dim).zip(batch.iter().flat_map(|s| s.tokens)) {
            embd.dequantize_row(t as usize, row);
        }

        for (layer, lw) in w.layers.iter().enumerate() {
            // Attention block.
            let xb = fit(&mut s.xb, n * dim);
            norm_rows(xb, &s.x[..n * dim], &lw.attn_norm, c.rms_eps);
            let (q, k, v) = (
                fit(&mut s.q, n * q_dim),
                fit(&mut s.k, n * kv_dim),
                fit(&mut s.v, n * kv_dim),
            );
            linear(&lw.wq.matrix(), precision, xb, q, lw.bq.as_deref());
            linear(&lw.wk.matrix(), precision, xb, k, lw.bk.as_deref());
            linear(&lw.wv.matrix(), precision, xb, v, lw.bv.as_deref());
            let (kc, vc) = (&mut self.cache.k[layer], &mut self.cache.v[layer]);
            for (t, qp) in queries.iter().enumerate() {
                rope(
                    &mut q[t * q_dim..(t + 1) * q_dim],
                    c.head_dim,
                    qp.pos,
                    &self.inv_freq,
                    c.rope_style,
                );
                rope(
                    &mut k[t * kv_dim..(t + 1) * kv_dim],
                    c.head_dim,
                    qp.pos,
                    &self.inv_freq,
                    c.rope_style,
                );
                let at = slot(qp.block_table, bs, qp.pos) * kv_dim;
                kc[at..at + kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                vc[at..at + kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let att = fit(&mut s.att, n * q_dim);
            let kv = PagedKv {
                k: kc,
                v: vc,
                block_size: bs,
            };
            paged_attention(q, kv, &queries, att, shape);
            linear(&lw.wo.matrix(), precision, att, xb, None);
            add_assign(&mut s.x[..n * dim], xb);

            // Feed-forward block.
            norm_rows(xb, &s.x[..n * dim], &lw.ffn_norm, c.rms_eps);
            let (gate, up) = (fit(&mut s.gate, n * ffn), fit(&mut s.up, n * ffn));
            linear(&lw.w_gate.matrix(), precision, xb, gate, None);
            linear(&lw.w_up.matrix(), precision, xb, up, None);
            swiglu(gate, up);
            linear(&lw.w_down.matrix(), precision, gate, xb, None);
            add_assign(&mut s.x[..n * dim], xb);
        }

        // Final norm and classifier, for the last token of the sequences that sample.
        let mut m = 0;
        let mut end = 0;
        for seq in batch {
            end += seq.tokens.len();
            if seq.logits {
                let last = fit(&mut s.last, (m + 1) * dim);
                rmsnorm(
                    &mut last[m * dim..],
                    &s.x[(end - 1) * dim..end * dim],
                    &w.output_norm,
                    c.rms_eps,
                );
                m += 1;
            }
        }
        if m == 0 {
            return Ok(&[]);
        }
        let logits = fit(&mut s.logits, m * c.vocab_size);
        // As `Model::forward`: the classifier always takes f32 activations.
        linear(&w.output.matrix(), Precision::Exact, &s.last[..m * dim], logits, None);
        Ok(&s.logits[..m * c.vocab_size])
    }
}

/// RMSNorm of each `weight.len()`-sized row of `x` into `out`.
fn norm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        rmsnorm(o, xr, weight, eps);
    }
}

/// `y = W x (+ bias)` for every token in `x`.
fn linear(w: &QMatrix, precision: Precision, x: &[f32], y: &mut [f32], bias: Option<&[f32]>) {
    matmul_with(w, x, y, precision);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            add_assign(row, b);
        }
    }
}
