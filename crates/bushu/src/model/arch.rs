//! One home per architecture: the table of model families bushu runs. A family says, in one place,
//! what its files call it (GGUF `general.architecture`, Hugging Face `model_type` and class), which
//! tensors each layer has under both naming schemes and with which shapes, and how its block differs
//! from Llama's (RoPE pairing, activation, extra norms, embedding scale, sliding-window layout, ...).
//! The GGUF and Hugging Face readers, the weight lookup and the chat fallback all read this table:
//! adding a family is adding an entry here (plus any kernel it really lacks).

use super::config::{Activation, Block, Config, RopeScaling};
use crate::formats::gguf::Gguf;
use anyhow::{bail, Context, Result};
use kernels::ops::RopeStyle;

/// A dimension of a tensor, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The model width (`dim`).
    Model,
    /// All query heads (`n_heads * head_dim`).
    Q,
    /// All KV heads (`n_kv_heads * head_dim`).
    Kv,
    /// The feed-forward width.
    Ffn,
    /// One head (`head_dim`).
    Head,
}

impl Dim {
    pub fn size(self, c: &Config) -> usize {
        match self {
            Dim::Model => c.dim,
            Dim::Q => c.q_dim(),
            Dim::Kv => c.kv_dim(),
            Dim::Ffn => c.ffn_dim,
            Dim::Head => c.head_dim,
        }
    }
}

/// One tensor of every layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerTensor {
    /// GGUF name after `blk.{i}.`.
    pub gguf: &'static str,
    /// Hugging Face name after `model.layers.{i}.`.
    pub hf: &'static str,
    /// Shape, innermost first (GGUF order): `[inputs, outputs]` for a matrix.
    pub shape: &'static [Dim],
    /// Every layer must have it (else: optional, e.g. Qwen2's Q/K/V biases).
    pub required: bool,
}

impl LayerTensor {
    pub fn shape(&self, c: &Config) -> Vec<usize> {
        self.shape.iter().map(|d| d.size(c)).collect()
    }
}

const fn t(gguf: &'static str, hf: &'static str, shape: &'static [Dim], required: bool) -> LayerTensor {
    LayerTensor {
        gguf,
        hf,
        shape,
        required,
    }
}

use Dim::{Ffn, Head, Kv, Model, Q};

/// Llama's layer (Mistral's and Qwen2's too: Q/K/V biases are optional).
const LLAMA_LAYER: &[LayerTensor] = &[
    t("attn_norm.weight", "input_layernorm.weight", &[Model], true),
    t("attn_q.weight", "self_attn.q_proj.weight", &[Model, Q], true),
    t("attn_k.weight", "self_attn.k_proj.weight", &[Model, Kv], true),
    t("attn_v.weight", "self_attn.v_proj.weight", &[Model, Kv], true),
    t("attn_output.weight", "self_attn.o_proj.weight", &[Q, Model], true),
    t("attn_q.bias", "self_attn.q_proj.bias", &[Q], false),
    t("attn_k.bias", "self_attn.k_proj.bias", &[Kv], false),
    t("attn_v.bias", "self_attn.v_proj.bias", &[Kv], false),
    t("ffn_norm.weight", "post_attention_layernorm.weight", &[Model], true),
    t("ffn_gate.weight", "mlp.gate_proj.weight", &[Model, Ffn], true),
    t("ffn_up.weight", "mlp.up_proj.weight", &[Model, Ffn], true),
    t("ffn_down.weight", "mlp.down_proj.weight", &[Ffn, Model], true),
];

/// Gemma 3's layer: QK-norm, and norms before and after both attention and feed-forward (Hugging Face
/// calls the post-attention norm what Llama calls its pre-feed-forward norm).
const GEMMA3_LAYER: &[LayerTensor] = &[
    t("attn_norm.weight", "input_layernorm.weight", &[Model], true),
    t("attn_q.weight", "self_attn.q_proj.weight", &[Model, Q], true),
    t("attn_k.weight", "self_attn.k_proj.weight", &[Model, Kv], true),
    t("attn_v.weight", "self_attn.v_proj.weight", &[Model, Kv], true),
    t("attn_q_norm.weight", "self_attn.q_norm.weight", &[Head], true),
    t("attn_k_norm.weight", "self_attn.k_norm.weight", &[Head], true),
    t("attn_output.weight", "self_attn.o_proj.weight", &[Q, Model], true),
    t(
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
        &[Model],
        true,
    ),
    t("ffn_norm.weight", "pre_feedforward_layernorm.weight", &[Model], true),
    t("ffn_gate.weight", "mlp.gate_proj.weight", &[Model, Ffn], true),
    t("ffn_up.weight", "mlp.up_proj.weight", &[Model, Ffn], true),
    t("ffn_down.weight", "mlp.down_proj.weight", &[Ffn, Model], true),
    t(
        "post_ffw_norm.weight",
        "post_feedforward_layernorm.weight",
        &[Model],
        true,
    ),
];

/// Gemma's chat template (Gemma 3's `tokenizer_config.json`: a system message is folded into the first
/// user turn, the assistant's role is `model`), for files that carry none.
const GEMMA_TEMPLATE: &str = include_str!("templates/gemma3.jinja");

/// Where a family's sliding window applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Windows {
    /// In every layer, when the file declares a window (Mistral).
    AllLayers,
    /// Every `n`-th layer (1-based) is global, the others local (Gemma 3: 6); local layers use
    /// `local_rope_theta`.
    GlobalEvery { n: usize, local_rope_theta: f32 },
}

/// A model family.
#[derive(Debug)]
pub struct Family {
    /// `general.architecture` of its GGUF files, and [`Config::arch`].
    pub name: &'static str,
    /// Hugging Face `model_type` and the `architectures` class.
    pub hf_model_type: &'static str,
    pub hf_class: &'static str,
    /// How RoPE pairs dimensions in its GGUF files (Hugging Face checkpoints always rotate halves):
    /// llama.cpp's converter permutes Llama's Q/K rows into adjacent pairs, other families keep halves.
    pub gguf_rope: RopeStyle,
    pub layer: &'static [LayerTensor],
    pub activation: Activation,
    /// Embeddings scaled by sqrt(dim).
    pub embed_scale: bool,
    pub post_norms: bool,
    pub qk_norm: bool,
    /// Hugging Face checkpoints store RMSNorm weights minus one.
    pub hf_norm_minus_one: bool,
    pub windows: Windows,
    /// Chat template for files that carry none.
    pub chat_template: Option<&'static str>,
}

pub static LLAMA: Family = Family {
    name: "llama",
    hf_model_type: "llama",
    hf_class: "LlamaForCausalLM",
    gguf_rope: RopeStyle::Interleaved,
    layer: LLAMA_LAYER,
    activation: Activation::Silu,
    embed_scale: false,
    post_norms: false,
    qk_norm: false,
    hf_norm_minus_one: false,
    windows: Windows::AllLayers,
    chat_template: None,
};

pub static MISTRAL: Family = Family {
    name: "mistral",
    hf_model_type: "mistral",
    hf_class: "MistralForCausalLM",
    ..LLAMA
};

pub static QWEN2: Family = Family {
    name: "qwen2",
    hf_model_type: "qwen2",
    hf_class: "Qwen2ForCausalLM",
    gguf_rope: RopeStyle::Neox,
    ..LLAMA
};

pub static GEMMA3: Family = Family {
    name: "gemma3",
    hf_model_type: "gemma3_text",
    hf_class: "Gemma3ForCausalLM",
    gguf_rope: RopeStyle::Neox,
    layer: GEMMA3_LAYER,
    activation: Activation::GeluTanh,
    embed_scale: true,
    post_norms: true,
    qk_norm: true,
    hf_norm_minus_one: true,
    windows: Windows::GlobalEvery {
        n: 6,
        local_rope_theta: 10000.0,
    },
    chat_template: Some(GEMMA_TEMPLATE),
};

/// Every family, in the order error messages list them.
pub static FAMILIES: &[&Family] = &[&LLAMA, &MISTRAL, &QWEN2, &GEMMA3];

/// The family of a GGUF `general.architecture` (and of [`Config::arch`]).
pub fn by_name(name: &str) -> Result<&'static Family> {
    match FAMILIES.iter().find(|f| f.name == name) {
        Some(f) => Ok(f),
        None => bail!(
            "architecture '{name}' is not supported (supported: {})",
            FAMILIES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The family of a Hugging Face `config.json` (`model_type`, `architectures`).
pub fn by_hf(model_type: Option<&str>, classes: &[&str]) -> Result<&'static Family> {
    let list = |name: fn(&Family) -> &'static str| FAMILIES.iter().map(|f| name(f)).collect::<Vec<_>>().join(", ");
    let by_type = match model_type {
        // Gemma 3's text-only checkpoints say `gemma3_text`; the multimodal ones `gemma3` (not supported).
        Some(t) => Some(FAMILIES.iter().find(|f| f.hf_model_type == t).with_context(|| {
            format!(
                "model_type '{t}' is not supported (supported: {})",
                list(|f| f.hf_model_type)
            )
        })?),
        None => None,
    };
    if let Some(c) = classes.iter().find(|c| !FAMILIES.iter().any(|f| f.hf_class == **c)) {
        bail!(
            "architecture '{c}' is not supported (supported: {})",
            list(|f| f.hf_class)
        );
    }
    match (by_type, classes.first()) {
        (Some(f), _) => Ok(f),
        (None, Some(c)) => Ok(FAMILIES.iter().find(|f| f.hf_class == *c).unwrap()),
        (None, None) => bail!("config.json has neither model_type nor architectures"),
    }
}

impl Family {
    /// The decoder-block description of this family, for a model of `n_layers` (GGUF conventions: norm
    /// weights as stored).
    pub fn block(&self, n_layers: usize, dim: usize) -> Block {
        Block {
            activation: self.activation,
            embed_scale: self.embed_scale.then(|| (dim as f32).sqrt()),
            post_norms: self.post_norms,
            qk_norm: self.qk_norm,
            attn_scale: None,
            local_layers: match self.windows {
                Windows::AllLayers => Vec::new(),
                Windows::GlobalEvery { n, .. } => (0..n_layers).map(|l| (l + 1) % n != 0).collect(),
            },
            rope_theta_local: match self.windows {
                Windows::AllLayers => None,
                Windows::GlobalEvery { local_rope_theta, .. } => Some(local_rope_theta),
            },
            norm_offset: 0.0,
        }
    }

    /// The GGUF name of a Hugging Face tensor name of this family (`None`: not one of its tensors).
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        match hf {
            "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
            "model.norm.weight" => return Some("output_norm.weight".into()),
            "lm_head.weight" => return Some("output.weight".into()),
            _ => {}
        }
        let (layer, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let spec = self.layer.iter().find(|s| s.hf == rest)?;
        Some(format!("blk.{layer}.{}", spec.gguf))
    }

    /// The tensor of this family's layer with GGUF name `suffix` (after `blk.{i}.`).
    pub fn layer_tensor(&self, suffix: &str) -> Option<&'static LayerTensor> {
        self.layer.iter().find(|s| s.gguf == suffix)
    }

    /// The config of a GGUF file of this family.
    pub fn gguf_config(&'static self, g: &Gguf) -> Result<Config> {
        let arch = self.name;
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            let v = g
                .get_i64(&key(k))
                .with_context(|| format!("missing metadata {}", key(k)))?;
            usize::try_from(v).with_context(|| format!("metadata {} = {v} is negative", key(k)))
        };
        let dim = int("embedding_length")?;
        let n_layers = int("block_count")?;
        let n_heads = int("attention.head_count")?;
        let n_kv_heads = g
            .get_i64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = match g.get_i64(&key("attention.key_length")) {
            Some(v) => v as usize,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        let embd = g
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .context("no token_embd.weight tensor")?;
        let vocab_size = g
            .get_i64(&key("vocab_size"))
            .map(|v| v as usize)
            .unwrap_or_else(|| embd.shape.get(1).copied().unwrap_or(0));
        let rope_scaling = match g.get_str(&key("rope.scaling.type")) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = g
                    .get_f64(&key("rope.scaling.factor"))
                    .context("linear RoPE scaling without a factor")? as f32;
                if factor <= 0.0 {
                    bail!("RoPE scaling factor {factor} must be positive");
                }
                RopeScaling::Linear { factor }
            }
            // Llama 3 scaling is stored as the `rope_freqs.weight` tensor of per-frequency divisors.
            Some(other) => bail!("RoPE scaling type '{other}' is not supported"),
        };
        let mut block = self.block(n_layers, dim);
        if self.name == GEMMA3.name && n_layers == 62 {
            // Gemma 3 27B scales queries by (dim / n_heads)^-1/2 (`query_pre_attn_scalar` 168), not by
            // head_dim^-1/2; GGUF has no key for it (llama.cpp decides by model size, as here).
            block.attn_scale = Some(1.0 / ((dim / n_heads.max(1)) as f32).sqrt());
        }
        let config = Config {
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: int("feed_forward_length")?,
            vocab_size,
            max_ctx: int("context_length")?,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32,
            rope_dim: g
                .get_i64(&key("rope.dimension_count"))
                .map(|v| v as usize)
                .unwrap_or(head_dim),
            rope_scaling,
            rope_style: self.gguf_rope,
            // Sliding-window attention, where the file declares it (e.g. `mistral3.attention.sliding_window`).
            sliding_window: g
                .get_i64(&key("attention.sliding_window"))
                .filter(|&w| w > 0)
                .map(|w| w as usize),
            block,
            arch: arch.to_owned(),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, f) in FAMILIES.iter().enumerate() {
            assert!(std::ptr::eq(by_name(f.name).unwrap(), *f));
            assert!(std::ptr::eq(by_hf(Some(f.hf_model_type), &[f.hf_class]).unwrap(), *f));
            assert!(std::ptr::eq(by_hf(None, &[f.hf_class]).unwrap(), *f));
            for g in &FAMILIES[i + 1..] {
                assert_ne!(f.name, g.name);
                assert_ne!(f.hf_class, g.hf_class);
            }
        }
        assert!(by_name("falcon").is_err());
    }

    #[test]
    fn hf_names_map_per_family() {
        // The same Hugging Face name is Llama's pre-feed-forward norm and Gemma's post-attention norm.
        let n = "model.layers.3.post_attention_layernorm.weight";
        assert_eq!(LLAMA.gguf_name(n).unwrap(), "blk.3.ffn_norm.weight");
        assert_eq!(GEMMA3.gguf_name(n).unwrap(), "blk.3.post_attention_norm.weight");
        assert_eq!(
            GEMMA3
                .gguf_name("model.layers.0.pre_feedforward_layernorm.weight")
                .unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert!(LLAMA.gguf_name("model.layers.0.self_attn.q_norm.weight").is_none());
        assert!(LLAMA.gguf_name("model.layers.0.self_attn.o_proj.bias").is_none());
    }

    #[test]
    fn gemma3_local_and_global_layers() {
        let b = GEMMA3.block(18, 640);
        let global: Vec<usize> = (0..18).filter(|&l| !b.local_layers[l]).collect();
        assert_eq!(global, [5, 11, 17]);
        assert_eq!(b.embed_scale, Some(640f32.sqrt()));
    }
}
