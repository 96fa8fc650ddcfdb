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
    /// Sliding-window attention (Mistral, Gemma 3's local layers): each position attends to the last
    /// this many positions, in the layers [`Config::is_local`] names.
    pub sliding_window: Option<usize>,
    /// How the family's decoder block differs from Llama's (`model::arch`).
    pub block: Block,
}

/// The feed-forward activation: `act(gate) * up`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Mistral, Qwen2).
    #[default]
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

/// What a family's decoder block does beyond Llama's (the default is Llama's block).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub activation: Activation,
    /// Token embeddings multiplied by this (Gemma: sqrt(dim)).
    pub embed_scale: Option<f32>,
    /// An RMSNorm after attention and after the feed-forward block, before each residual add (Gemma 2/3).
    pub post_norms: bool,
    /// A per-head RMSNorm of queries and keys before RoPE (Gemma 3, Qwen3).
    pub qk_norm: bool,
    /// Queries scaled by this instead of 1/sqrt(head_dim) (Gemma 3's `query_pre_attn_scalar`^-1/2).
    pub attn_scale: Option<f32>,
    /// Per layer, whether it is a local (sliding-window) layer; empty: every layer is (when the model
    /// has a window at all).
    pub local_layers: Vec<bool>,
    /// RoPE base of the local layers, when it differs from `rope_theta` (Gemma 3: 10000); local layers
    /// then take no RoPE scaling.
    pub rope_theta_local: Option<f32>,
    /// Added to every RMSNorm weight when the weights are read: Hugging Face Gemma checkpoints store
    /// `w - 1` (the model computes `x * (1 + w)`), GGUF files store `w`.
    pub norm_offset: f32,
}

impl Default for Block {
    fn default() -> Block {
        Block {
            activation: Activation::Silu,
            embed_scale: None,
            post_norms: false,
            qk_norm: false,
            attn_scale: None,
            local_layers: Vec::new(),
            rope_theta_local: None,
            norm_offset: 0.0,
        }
    }
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
        if !self.block.local_layers.is_empty() && self.block.local_layers.len() != self.n_layers {
            bail!(
                "{} local/global layer flags for {} layers",
                self.block.local_layers.len(),
                self.n_layers
            );
        }
        for (what, v) in [
            ("embedding scale", self.block.embed_scale),
            ("attention scale", self.block.attn_scale),
            ("local RoPE base", self.block.rope_theta_local),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                bail!("model {what} {v} must be a positive number");
            }
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            bail!("RMSNorm epsilon {} is out of range", self.rms_eps);
        }
        Ok(())
    }

    /// Whether layer `layer` attends through the sliding window (and uses the local RoPE base).
    pub fn is_local(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.block.local_layers.get(layer).copied().unwrap_or(true)
    }

    /// The attention window of layer `layer`.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.is_local(layer))
    }

    /// Rotation frequency of each pair of rotated dimensions, with the scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        rope_inv_freq(self.rope_dim, self.rope_theta, &self.rope_scaling)
    }

    /// [`Config::rope_inv_freq`] of the local layers: their own base, unscaled, where the family has one.
    pub fn rope_inv_freq_local(&self) -> Vec<f32> {
        match self.block.rope_theta_local {
            Some(theta) => rope_inv_freq(self.rope_dim, theta, &RopeScaling::None),
            None => self.rope_inv_freq(),
        }
    }
}

/// Rotation frequency of each of the `rope_dim / 2` pairs for base `theta`, `scaling` applied.
fn rope_inv_freq(rope_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let d = rope_dim;
    (0..d / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f32 / d as f32);
            match *scaling {
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

impl Config {
    /// A warning when a context of `ctx` positions goes past the one the model was trained for (and
    /// that its RoPE scaling, if any, already covers), or `None`.
    pub fn beyond_training(&self, ctx: usize) -> Option<String> {
        if ctx <= self.max_ctx {
            return None;
        }
        let rope = match &self.rope_scaling {
            RopeScaling::None => "the file gives no RoPE scaling".to_string(),
            RopeScaling::Linear { factor } => format!("with the file's linear RoPE scaling x{factor}"),
            RopeScaling::Llama3 {
                factor,
                original_max_position,
                ..
            } => format!("with the file's Llama 3 RoPE scaling x{factor} from {original_max_position}"),
        };
        Some(format!(
            "--ctx {ctx} is beyond the {} positions the model was trained for ({rope}); text past position {} is unlikely to make sense",
            self.max_ctx, self.max_ctx
        ))
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
