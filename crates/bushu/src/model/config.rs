//! The hyper-parameters of a Llama-family model, read from GGUF metadata, a Hugging Face `config.json`
//! or a llama2.c header — one struct whatever the source.

use anyhow::{bail, Result};
use kernels::ops::RopeStyle;

/// How RoPE frequencies are stretched for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Architecture name as the file says it (`llama`, `mistral`, `qwen2`, ...).
    pub arch: String,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for (`--ctx` may ask for less).
    pub max_ctx: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Number of rotated dimensions per head (`head_dim` unless the file says otherwise).
    pub rope_dim: usize,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    /// Sliding-window attention (Mistral): each position attends to the last this many positions.
    pub sliding_window: Option<usize>,
}

impl Config {
    /// Checks the shape relations the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("embedding size", self.dim),
            ("layer count", self.n_layers),
            ("head count", self.n_heads),
            ("KV head count", self.n_kv_heads),
            ("head size", self.head_dim),
            ("feed-forward size", self.ffn_dim),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_ctx),
        ];
        for (what, v) in positive {
            if v == 0 {
                bail!("model {what} is 0");
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "{} attention heads are not a multiple of {} KV heads",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.rope_dim.is_multiple_of(2) || self.rope_dim > self.head_dim {
            bail!(
                "RoPE dimension {} does not fit head size {}",
                self.rope_dim,
                self.head_dim
            );
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            bail!("RMSNorm epsilon {} is out of range", self.rms_eps);
        }
        Ok(())
    }

    /// Rotation frequency of each pair of rotated dimensions, with the scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.rope_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf((2 * i) as f32 / d as f32);
                match self.rope_scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let old = original_max_position as f32;
                        let low_wavelen = old / low_freq_factor;
                        let high_wavelen = old / high_freq_factor;
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Number of query heads sharing one KV head.
    pub fn gqa_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}
