//! Calibration statistics for GPTQ: for every linear layer, `Σ x xᵀ` over the activations `x` that enter
//! it, from a plain f32 forward pass over a calibration text (the same computation as
//! [`crate::model::llama`], written out here so the inputs of each projection can be observed).
//! The Hessian of the layer-wise objective `||XW − XW_q||²` is `H = 2 XᵀX / n`.

use crate::model::Model;
use anyhow::Result;
use kernels::attention::{attention, AttnShape};
use kernels::ops::{add_assign, rmsnorm, rope, swiglu};
use kernels::{matmul_with, Precision};
use rayon::prelude::*;
use std::collections::HashMap;

/// `Σ x xᵀ` (row-major `dim x dim`, f64) and the number of vectors summed, per input site.
#[derive(Clone, Debug, Default)]
pub struct Hessians {
    sites: HashMap<String, (usize, Vec<f64>)>,
    /// Tensor name → the site whose activations enter it (q, k, v share one; gate and up share one).
    by_tensor: HashMap<String, String>,
    pub tokens: usize,
}

impl Hessians {
    /// `H = 2 XᵀX / n` for the tensor's input, `dim x dim`.
    pub fn get(&self, tensor: &str) -> Option<Vec<f64>> {
        let (n, xtx) = self.sites.get(self.by_tensor.get(tensor)?)?;
        let k = 2.0 / (*n).max(1) as f64;
        Some(xtx.iter().map(|v| v * k).collect())
    }

    /// `XᵀX / n` (the mean outer product), for measuring `||X ΔWᵀ||² / n`.
    pub fn mean_xtx(&self, tensor: &str) -> Option<Vec<f64>> {
        self.get(tensor).map(|h| h.into_iter().map(|v| v / 2.0).collect())
    }

    fn add(&mut self, site: &str, x: &[f32], dim: usize) {
        let e = self
            .sites
            .entry(site.to_owned())
            .or_insert_with(|| (0, vec![0.0; dim * dim]));
        let n = x.len() / dim;
        e.0 += n;
        e.1.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
            for t in x.chunks_exact(dim) {
                let xi = t[i] as f64;
                if xi == 0.0 {
                    continue;
                }
                for (r, &xj) in row.iter_mut().zip(t) {
                    *r += xi * xj as f64;
                }
            }
        });
    }

    fn map(&mut self, tensors: &[String], site: &str) {
        for t in tensors {
            self.by_tensor.insert(t.clone(), site.to_owned());
        }
    }
}

/// Runs `model` over `seqs` (each a token sequence starting at position 0) and accumulates the
/// input statistics of every projection and of the classifier.
pub fn collect(model: &Model, seqs: &[Vec<u32>], mut progress: impl FnMut(usize, usize)) -> Result<Hessians> {
    let c = &model.config;
    let w = &model.weights;
    let mut h = Hessians::default();
    let mut inv_freq = c.rope_inv_freq();
    if let Some(f) = &w.rope_freqs {
        for (a, d) in inv_freq.iter_mut().zip(f) {
            *a /= d;
        }
    }
    for l in 0..c.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        h.map(&[n("attn_q"), n("attn_k"), n("attn_v")], &format!("blk.{l}.attn_in"));
        h.map(&[n("attn_output")], &format!("blk.{l}.attn_out"));
        h.map(&[n("ffn_gate"), n("ffn_up")], &format!("blk.{l}.ffn_in"));
        h.map(&[n("ffn_down")], &format!("blk.{l}.ffn_down"));
    }
    h.map(&["output.weight".to_owned()], "output");
    let shape = AttnShape {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        window: c.sliding_window,
    };
    let (dim, qd, kvd, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
    let mm = |t: &crate::formats::Tensor, x: &[f32], y: &mut [f32], b: Option<&Vec<f32>>| {
        matmul_with(&t.matrix(), x, y, Precision::Exact);
        if let Some(b) = b {
            y.chunks_exact_mut(b.len()).for_each(|r| add_assign(r, b));
        }
    };
    for (si, seq) in seqs.iter().enumerate() {
        progress(si, seqs.len());
        let n = seq.len();
        let mut x = vec![0.0f32; n * dim];
        let embd = w.token_embd.matrix();
        for (row, &t) in x.chunks_exact_mut(dim).zip(seq) {
            embd.dequantize_row(t as usize, row);
        }
        let mut xb = vec![0.0f32; n * dim];
        let (mut q, mut k, mut v) = (vec![0.0f32; n * qd], vec![0.0f32; n * kvd], vec![0.0f32; n * kvd]);
        let mut att = vec![0.0f32; n * qd];
        let (mut gate, mut up) = (vec![0.0f32; n * ffn], vec![0.0f32; n * ffn]);
        for (l, lw) in w.layers.iter().enumerate() {
            norm(&mut xb, &x, &lw.attn_norm, c.rms_eps);
            h.add(&format!("blk.{l}.attn_in"), &xb, dim);
            mm(&lw.wq, &xb, &mut q, lw.bq.as_ref());
            mm(&lw.wk, &xb, &mut k, lw.bk.as_ref());
            mm(&lw.wv, &xb, &mut v, lw.bv.as_ref());
            for t in 0..n {
                rope(&mut q[t * qd..(t + 1) * qd], c.head_dim, t, &inv_freq, c.rope_style);
                rope(&mut k[t * kvd..(t + 1) * kvd], c.head_dim, t, &inv_freq, c.rope_style);
            }
            attention(&q, &k, &v, &mut att, shape, 0);
            h.add(&format!("blk.{l}.attn_out"), &att, qd);
            mm(&lw.wo, &att, &mut xb, None);
            add_assign(&mut x, &xb);
            norm(&mut xb, &x, &lw.ffn_norm, c.rms_eps);
            h.add(&format!("blk.{l}.ffn_in"), &xb, dim);
            mm(&lw.w_gate, &xb, &mut gate, None);
            mm(&lw.w_up, &xb, &mut up, None);
            swiglu(&mut gate, &up);
            h.add(&format!("blk.{l}.ffn_down"), &gate, ffn);
            mm(&lw.w_down, &gate, &mut xb, None);
            add_assign(&mut x, &xb);
        }
        norm(&mut xb, &x, &w.output_norm, c.rms_eps);
        h.add("output", &xb, dim);
        h.tokens += n;
    }
    Ok(h)
}

fn norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        rmsnorm(o, xr, w, eps);
    }
}

/// `Σ_r Δw_r ᵀ M Δw_r` for `Δ = a − b` (row-major `rows x cols`) and a `cols x cols` matrix `M`: with
/// `M = XᵀX / n`, the mean squared output error `||X(W − W~)ᵀ||² / n`.
pub fn output_error(m: &[f64], a: &[f32], b: &[f32], cols: usize) -> f64 {
    a.par_chunks(cols)
        .zip(b.par_chunks(cols))
        .map(|(ra, rb)| {
            let d: Vec<f64> = ra.iter().zip(rb).map(|(x, y)| (x - y) as f64).collect();
            let mut s = 0.0;
            for (i, &di) in d.iter().enumerate() {
                if di == 0.0 {
                    continue;
                }
                let row = &m[i * cols..(i + 1) * cols];
                s += di * row.iter().zip(&d).map(|(p, q)| p * q).sum::<f64>();
            }
            s
        })
        .sum()
}
