//! Calibration statistics for GPTQ: for every linear layer, `Σ x xᵀ` over the activations `x` that enter
//! it, from a plain f32 forward pass over a calibration text (the same computation as
//! [`crate::model::llama`], written out here so the inputs of each projection can be observed).
//! The Hessian of the layer-wise objective `||XW − XW_q||²` is `H = 2 XᵀX / n`.

use crate::model::llama::{Logits, Probe};
use crate::model::Model;
use anyhow::Result;
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
    let mut h = Hessians::default();
    for l in 0..c.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        h.map(&[n("attn_q"), n("attn_k"), n("attn_v")], &format!("blk.{l}.attn_in"));
        h.map(&[n("attn_output")], &format!("blk.{l}.attn_out"));
        h.map(&[n("ffn_gate"), n("ffn_up")], &format!("blk.{l}.ffn_in"));
        h.map(&[n("ffn_down")], &format!("blk.{l}.ffn_down"));
    }
    h.map(&["output.weight".to_owned()], "output");
    for (si, seq) in seqs.iter().enumerate() {
        progress(si, seqs.len());
        let n = seq.len();
        let mut state = model.new_state(n);
        model.forward_observed(&mut state, seq, Logits::All, &mut |probe, x| {
            let site = match probe {
                Probe::AttnIn(l) => format!("blk.{l}.attn_in"),
                Probe::AttnOut(l) => format!("blk.{l}.attn_out"),
                Probe::FfnIn(l) => format!("blk.{l}.ffn_in"),
                Probe::FfnDown(l) => format!("blk.{l}.ffn_down"),
                Probe::Output => "output".to_owned(),
                // Not the input of a linear layer: no Hessian.
                Probe::Residual(_) => return,
            };
            h.add(&site, x, x.len() / n);
        })?;
        h.tokens += n;
    }
    Ok(h)
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
