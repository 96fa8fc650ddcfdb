//! Early exit by entropy (lecture §6; CALM, Schuster et al. 2022; the "shared head" of Depth-Adaptive
//! Transformers, Elbayad et al. 2020): a decode step runs the layers in order and, after each exit layer,
//! puts the residual stream through the model's own final norm and classifier. When that distribution's
//! entropy is below a threshold the token is emitted from it and the remaining layers are skipped.
//!
//! The skipped layers still need this position's keys and values, since later tokens attend to it. They
//! are filled by CALM's *state propagation*: the exit layer's residual stream stands in for each skipped
//! layer's input, and each skipped layer computes only its K and V projections (with its own attention
//! norm, biases, K-norm and RoPE) from it. That costs `2·dim·kv_dim` multiply-adds per skipped layer
//! (6.25 % of a SmolLM2-135M layer, whose grouped-query attention has narrow keys), so the compute saved
//! stays saved. The alternative — computing the skipped layers of this position lazily, as an extra row
//! of the next token's pass — would restore the exact keys and values but runs every skipped layer anyway:
//! on a CPU it saves time only as far as a two-row pass costs less than two one-row passes, and it saves no
//! FLOPs. CALM measured state propagation to lose little against it (docs/ADAPTIVE.md has bushu's numbers).
//!
//! This rule is lossy: unlike self-speculation ([`crate::spec_decode::SelfSpeculation`]), nothing checks
//! the exited tokens against the full model. Threshold 0 never exits (an entropy is never below 0) and
//! runs no exit head: plain decoding, bit for bit.

use super::exit_adapters::ExitAdapters;
use anyhow::{bail, Result};
use std::sync::Arc;

/// The early-exit rule of a one-token decode pass ([`crate::model::Pass::exit_by_entropy`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExitRule<'a> {
    /// Exit when the exit head's entropy (nats) is below this (0: never).
    pub threshold: f32,
    /// The exit points, in layers run (after layer `l - 1`, 0-based), ascending; each `1..n_layers`.
    pub layers: &'a [usize],
    /// Trained adapters ([`crate::model::exit_adapters`]): an exit point with one reads the stream
    /// through it; without, through the shared head alone.
    pub adapters: Option<&'a ExitAdapters>,
}

/// The checked settings of `--early-exit-entropy`, `--exit-layers` and `--exit-adapters`.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyExit {
    pub threshold: f32,
    /// Ascending, distinct, each in `1..n_layers`.
    pub layers: Vec<usize>,
    /// Trained adapters, one for each exit layer (checked).
    pub adapters: Option<Arc<ExitAdapters>>,
}

impl EarlyExit {
    /// The threshold checked on its own (before a model is loaded): a finite number ≥ 0.
    pub fn check_threshold(threshold: f32) -> Result<()> {
        if !threshold.is_finite() || threshold < 0.0 {
            bail!("--early-exit-entropy must be a finite number of nats >= 0 (0: never exit), got {threshold}");
        }
        Ok(())
    }

    /// The rule for a model of `n_layers`: `layers` as given (sorted, duplicates dropped), else
    /// [`default_exit_layers`]. An error for a bad threshold or an exit layer outside `1..n_layers`.
    pub fn new(threshold: f32, layers: Option<&[usize]>, n_layers: usize) -> Result<EarlyExit> {
        EarlyExit::with_adapters(threshold, layers, n_layers, None)
    }

    /// [`EarlyExit::new`] with trained adapters: without `layers` the exit points are the adapters'
    /// own; with them, each must have an adapter (an error names the ones missing).
    pub fn with_adapters(
        threshold: f32,
        layers: Option<&[usize]>,
        n_layers: usize,
        adapters: Option<Arc<ExitAdapters>>,
    ) -> Result<EarlyExit> {
        EarlyExit::check_threshold(threshold)?;
        let mut layers = match (layers, &adapters) {
            (Some([]), _) => bail!("--exit-layers is empty: give at least one layer"),
            (Some(l), _) => l.to_vec(),
            (None, Some(a)) => a.layers.clone(),
            (None, None) => default_exit_layers(n_layers),
        };
        if n_layers < 2 {
            bail!("early exit needs a model of at least 2 layers (this one has {n_layers})");
        }
        if let Some(&l) = layers.iter().find(|&&l| l == 0 || l >= n_layers) {
            bail!(
                "--exit-layers: {l} is not an exit point of a model of {n_layers} layers (each must be between 1 and {}: the number of layers run before the exit)",
                n_layers.saturating_sub(1)
            );
        }
        layers.sort_unstable();
        layers.dedup();
        if let Some(a) = &adapters {
            if a.n_layers != n_layers {
                bail!(
                    "the exit adapters are for a model of {} layers, not {n_layers}",
                    a.n_layers
                );
            }
            let missing: Vec<usize> = layers.iter().copied().filter(|&l| a.at(l).is_none()).collect();
            if !missing.is_empty() {
                bail!(
                    "--exit-layers {missing:?} have no trained adapter (the adapters file has {:?}; leave out --exit-layers to use those)",
                    a.layers
                );
            }
        }
        Ok(EarlyExit {
            threshold,
            layers,
            adapters,
        })
    }

    /// The rule a pass follows.
    pub fn rule(&self) -> ExitRule<'_> {
        ExitRule {
            threshold: self.threshold,
            layers: &self.layers,
            adapters: self.adapters.as_deref(),
        }
    }
}

/// The exit points when `--exit-layers` is not given: after a quarter, half and three quarters of the
/// layers (each exit head costs a classifier: on SmolLM2-135M, whose 49,152-token classifier is as many
/// multiply-adds as 8 of its 30 layers, trying every layer would cost more than it saves).
pub fn default_exit_layers(n_layers: usize) -> Vec<usize> {
    let mut l: Vec<usize> = [n_layers / 4, n_layers / 2, 3 * n_layers / 4]
        .into_iter()
        .filter(|&l| l >= 1 && l < n_layers)
        .collect();
    l.dedup();
    l
}

/// Parses `--exit-layers`' comma-separated list.
pub fn parse_layers(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("--exit-layers: {p:?} is not a layer number (give e.g. 8,16,24)"))
        })
        .collect()
}

/// The entropy `H(p) = -Σ p log p` (nats) of `softmax(logits)`, in f64; `-inf` logits have `p = 0`.
pub fn entropy(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for &l in logits {
        let d = l as f64 - max;
        if d > f64::NEG_INFINITY {
            let e = d.exp();
            z += e;
            s += e * d;
        }
    }
    // H = log z - E[d]; rounding can leave a one-hot distribution a hair below 0.
    (z.ln() - s / z).max(0.0)
}

/// Multiply-adds of one token's decode step through the weights (attention scores, which grow with the
/// context, are left out): per layer, per exit head, per skipped layer's propagated K, V, and per exit
/// adapter applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCost {
    pub layer: f64,
    pub head: f64,
    pub kv: f64,
    /// A trained exit adapter's `dim x dim` product ([`crate::model::exit_adapters`]).
    pub adapter: f64,
    pub n_layers: usize,
}

impl StepCost {
    pub fn of(c: &crate::model::Config) -> StepCost {
        let (dim, q, kv, ffn) = (c.dim as f64, c.q_dim() as f64, c.kv_dim() as f64, c.ffn_dim as f64);
        StepCost {
            layer: dim * q * 2.0 + dim * kv * 2.0 + 3.0 * dim * ffn,
            head: dim * c.vocab_size as f64,
            kv: 2.0 * dim * kv,
            adapter: dim * dim,
            n_layers: c.n_layers,
        }
    }

    /// A full-depth step: every layer and one classifier.
    pub fn full(&self) -> f64 {
        self.n_layers as f64 * self.layer + self.head
    }

    /// A step that ran `layers` layers and `heads` classifiers (exit heads tried, the last one included)
    /// and propagated K, V into the others.
    pub fn step(&self, layers: usize, heads: usize) -> f64 {
        layers as f64 * self.layer + heads as f64 * self.head + (self.n_layers - layers) as f64 * self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_by_hand() {
        // p = (1/4, 1/4, 1/2): H = 2·(1/4)·ln 4 + (1/2)·ln 2 = 1.5 ln 2.
        let h = entropy(&[0.0, 0.0, 2f32.ln()]);
        assert!((h - 1.5 * 2f64.ln()).abs() < 1e-6, "{h}");
        // Uniform over 8: ln 8; -inf entries count as p = 0.
        assert!((entropy(&[3.0; 8]) - 8f64.ln()).abs() < 1e-9);
        assert!((entropy(&[1.0, 1.0, f32::NEG_INFINITY]) - 2f64.ln()).abs() < 1e-9);
        assert_eq!(entropy(&[0.0, -1e4]), 0.0);
    }

    #[test]
    fn exit_layers_checked() {
        assert_eq!(default_exit_layers(30), [7, 15, 22]);
        assert_eq!(default_exit_layers(6), [1, 3, 4]);
        assert_eq!(default_exit_layers(2), [1]);
        assert!(default_exit_layers(1).is_empty());
        assert_eq!(EarlyExit::new(1.0, Some(&[4, 2, 4]), 6).unwrap().layers, [2, 4]);
        for bad in [&[0usize][..], &[6], &[]] {
            assert!(EarlyExit::new(1.0, Some(bad), 6).is_err());
        }
        for bad in [-0.1, f32::NAN, f32::INFINITY] {
            assert!(EarlyExit::new(bad, None, 6).is_err());
        }
        assert_eq!(parse_layers("8, 16,24").unwrap(), [8, 16, 24]);
        assert!(parse_layers("8,x").is_err());
    }

    #[test]
    fn step_cost_counts() {
        let s = StepCost {
            layer: 10.0,
            head: 30.0,
            kv: 1.0,
            adapter: 2.0,
            n_layers: 4,
        };
        assert_eq!(s.full(), 70.0);
        // 1 layer, 2 heads tried (exit at the first), K, V propagated into 3 layers.
        assert_eq!(s.step(1, 1), 10.0 + 30.0 + 3.0);
        assert_eq!(s.step(4, 1), s.full());
    }
}
