//! A Hugging Face model directory as a model: `config.json` read into a [`Config`] as the model's family
//! says ([`arch`]), tensor names mapped to the GGUF names the engine uses and checked against the config,
//! `generation_config.json`'s end-of-generation ids, the tokenizer. The files themselves are parsed by
//! [`crate::formats::hf`].
//!
//! Hugging Face Llama-family checkpoints keep each head's Q/K rows in the "rotate_half" order (dimension
//! `i` pairs with `i + head_dim/2`), so their configs use [`RopeStyle::Neox`]; llama.cpp's converter
//! permutes those rows into adjacent pairs, which is why GGUF Llama files use [`RopeStyle::Interleaved`].

use super::arch::{self, Family, Windows};
use super::config::{Activation, Block, Config, RopeScaling};
use super::loader::ModelFile;
use crate::formats::hf::{read_chat_template, read_json, read_weights};
use crate::formats::Tensor;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use kernels::ops::RopeStyle;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// What `config.json` says: the engine's [`Config`] plus what it has no field for yet.
#[derive(Clone, Debug)]
pub struct HfConfig {
    pub config: Config,
    /// `tie_word_embeddings` as `config.json` gives it. Whatever it says, a model without
    /// `lm_head.weight` uses `token_embd.weight` as its output projection (an explicit `false` without
    /// `lm_head.weight` is an error).
    pub tie_word_embeddings: Option<bool>,
    /// `eos_token_id` of `config.json` (an integer or a list).
    pub eos_ids: Vec<u32>,
}

/// A Hugging Face directory read without its tokenizer.
pub struct HfModel {
    pub config: HfConfig,
    /// Tensors under their GGUF names, shapes innermost first, views into the mapped files.
    pub tensors: HashMap<String, Tensor>,
    /// End-of-generation ids of `generation_config.json` and `config.json` (the tokenizer's are added by [`load`]).
    pub eos_ids: Vec<u32>,
    /// `chat_template.jinja`, else the `chat_template` of `tokenizer_config.json`.
    pub chat_template: Option<String>,
    /// The directory's name.
    pub name: Option<String>,
    /// Total size of the safetensors files.
    pub file_bytes: u64,
    /// The sampling values of `generation_config.json`.
    pub generation: super::loader::GenerationDefaults,
}

/// Opens a Hugging Face model directory: weights, config and tokenizer.
pub fn load(dir: &Path) -> Result<ModelFile> {
    let m = read(dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir).with_context(|| format!("{}: tokenizer", dir.display()))?;
    let mut eos_ids = tokenizer.eos_ids().to_vec();
    push_unique(&mut eos_ids, &m.eos_ids);
    // chat_template.jinja, else tokenizer_config.json, else whatever the tokenizer found.
    let chat_template = m.chat_template.or_else(|| tokenizer.chat_template().map(str::to_owned));
    Ok(ModelFile {
        config: m.config.config,
        tensors: m.tensors,
        tokenizer,
        format: "safetensors",
        name: m.name,
        chat_template,
        eos_ids,
        file_bytes: m.file_bytes,
        generation: m.generation,
    })
}

/// Reads everything of a Hugging Face directory but the tokenizer.
pub fn read(dir: &Path) -> Result<HfModel> {
    let config_path = dir.join("config.json");
    let json = read_json(&config_path)?;
    let config = parse_config(&json).with_context(|| format!("{}: unsupported model", config_path.display()))?;
    let (raw, file_bytes) = read_weights(dir)?;
    let family = arch::by_name(&config.config.arch)?;
    let tensors = rename_tensors(family, raw).with_context(|| format!("{}: unexpected weights", dir.display()))?;
    check_tensors(&config, &tensors).with_context(|| format!("{}: weights do not match config.json", dir.display()))?;

    let mut eos_ids = Vec::new();
    let mut generation = super::loader::GenerationDefaults::default();
    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        let gen = read_json(&gen_path)?;
        eos_ids =
            token_ids(gen.get("eos_token_id")).with_context(|| format!("{}: eos_token_id", gen_path.display()))?;
        generation = super::loader::GenerationDefaults::from_generation_config(&gen)
            .with_context(|| format!("{}", gen_path.display()))?;
    }
    push_unique(&mut eos_ids, &config.eos_ids);
    Ok(HfModel {
        config,
        tensors,
        eos_ids,
        chat_template: read_chat_template(dir)?,
        generation,
        name: dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        file_bytes,
    })
}

fn push_unique(ids: &mut Vec<u32>, more: &[u32]) {
    for id in more {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
}

/// Token ids given as an integer, a list of integers, or nothing.
fn token_ids(v: Option<&Value>) -> Result<Vec<u32>> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .with_context(|| format!("{v} is not a token id"))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

fn get_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            Ok(Some(v.as_u64().map(|x| x as usize).with_context(|| {
                format!("{key} = {v} is not a non-negative integer")
            })?))
        }
    }
}

fn get_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(
            v.as_f64().with_context(|| format!("{key} = {v} is not a number"))?,
        )),
    }
}

/// Builds the model configuration from the contents of `config.json`.
pub fn parse_config(json: &Value) -> Result<HfConfig> {
    let obj = json.as_object().context("config.json is not a JSON object")?;
    let archs: Vec<&str> = obj
        .get("architectures")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    let family = arch::by_hf(obj.get("model_type").and_then(Value::as_str), &archs)?;
    let arch = family.name;
    // Gemma names its activation `hidden_activation` (and keeps a stale `hidden_act`).
    let act_key = match family.activation {
        Activation::Silu => "hidden_act",
        Activation::GeluTanh => "hidden_activation",
    };
    if let Some(act) = obj.get(act_key).and_then(Value::as_str) {
        let expected: &[&str] = match family.activation {
            Activation::Silu => &["silu"],
            Activation::GeluTanh => &["gelu_pytorch_tanh", "gelu_tanh"],
        };
        if !expected.contains(&act) {
            bail!("{act_key} '{act}' is not supported (only {})", expected.join(", "));
        }
    }
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = get_f64(obj, key)? {
            bail!("{key} = {v} is not supported");
        }
    }
    let required = |k: &str| get_usize(obj, k)?.with_context(|| format!("config.json has no {k}"));
    let dim = required("hidden_size")?;
    let n_heads = required("num_attention_heads")?;
    let n_kv_heads = get_usize(obj, "num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = get_usize(obj, "head_dim")?.unwrap_or(dim.checked_div(n_heads).unwrap_or(0));
    let max_ctx = required("max_position_embeddings")?;
    let rope = parse_rope(obj)?;
    let rope_dim = match rope.partial_rotary_factor {
        Some(p) if p > 0.0 && p <= 1.0 => ((head_dim as f64 * p) as usize) & !1,
        Some(p) => bail!("partial_rotary_factor {p} is out of range"),
        None => head_dim,
    };
    // Qwen2 declares a window even when it is off, and applies it only to layers past max_window_layers.
    let window_on = match arch {
        "qwen2" => obj.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false),
        _ => true,
    };
    let sliding_window = match get_usize(obj, "sliding_window")? {
        Some(w) if window_on && w > 0 && w < max_ctx => Some(w),
        _ => None,
    };
    if arch == "qwen2" && sliding_window.is_some() {
        bail!("Qwen2 sliding-window attention (use_sliding_window: true) is not supported");
    }
    let n_layers = required("num_hidden_layers")?;
    let block = hf_block(family, obj, n_layers, dim)?;
    let config = Config {
        arch: arch.to_owned(),
        dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: required("intermediate_size")?,
        vocab_size: required("vocab_size")?,
        max_ctx,
        rms_eps: get_f64(obj, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope_theta: rope.theta as f32,
        rope_dim,
        rope_scaling: rope.scaling,
        // Hugging Face's rotate_half pairs dimension i with i + head_dim/2.
        rope_style: RopeStyle::Neox,
        sliding_window,
        block,
    };
    config.validate()?;

    Ok(HfConfig {
        config,
        tie_word_embeddings: obj.get("tie_word_embeddings").and_then(Value::as_bool),
        eos_ids: token_ids(obj.get("eos_token_id")).context("eos_token_id")?,
    })
}

/// The family's block as `config.json` specifies it: Gemma 3's `query_pre_attn_scalar`,
/// `rope_local_base_freq` and local/global layout (`layer_types`, or `sliding_window_pattern`), and its
/// norms stored minus one.
fn hf_block(family: &Family, obj: &Map<String, Value>, n_layers: usize, dim: usize) -> Result<Block> {
    let mut block = family.block(n_layers, dim);
    if family.hf_norm_minus_one {
        block.norm_offset = 1.0;
    }
    if let Windows::GlobalEvery { .. } = family.windows {
        if let Some(s) = get_f64(obj, "query_pre_attn_scalar")? {
            if !(s > 0.0 && s.is_finite()) {
                bail!("query_pre_attn_scalar {s} must be positive");
            }
            block.attn_scale = Some((1.0 / s.sqrt()) as f32);
        }
        let per_type = obj.get("rope_parameters").and_then(|p| p.get("sliding_attention"));
        let local_theta = match per_type {
            Some(Value::Object(local)) => {
                if let Some(t) = local
                    .get("rope_type")
                    .and_then(Value::as_str)
                    .filter(|t| *t != "default")
                {
                    bail!("RoPE type '{t}' of the sliding-window layers is not supported (only default)");
                }
                get_f64(local, "rope_theta")?
            }
            Some(v) => bail!("rope_parameters.sliding_attention = {v} is not an object"),
            None => get_f64(obj, "rope_local_base_freq")?,
        };
        if let Some(theta) = local_theta {
            if theta.is_nan() || theta <= 1.0 {
                bail!("local RoPE base {theta} is out of range");
            }
            block.rope_theta_local = Some(theta as f32);
        }
        match (obj.get("layer_types"), get_usize(obj, "sliding_window_pattern")?) {
            (Some(Value::Array(types)), _) => {
                if types.len() != n_layers {
                    bail!(
                        "layer_types lists {} layers, num_hidden_layers is {n_layers}",
                        types.len()
                    );
                }
                block.local_layers = types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => bail!("layer type {t} is not sliding_attention or full_attention"),
                    })
                    .collect::<Result<_>>()?;
            }
            (Some(v), _) if !v.is_null() => bail!("layer_types = {v} is not a list"),
            (_, Some(0)) => bail!("sliding_window_pattern 0 must be positive"),
            (_, Some(n)) => block.local_layers = (0..n_layers).map(|l| (l + 1) % n != 0).collect(),
            _ => {}
        }
    }
    Ok(block)
}

struct Rope {
    theta: f64,
    scaling: RopeScaling,
    partial_rotary_factor: Option<f64>,
}

/// RoPE settings in either style: `rope_theta` + `rope_scaling` (transformers 4), or `rope_parameters`
/// holding `rope_theta`, `rope_type` and the scaling parameters (transformers 5).
fn parse_rope(obj: &Map<String, Value>) -> Result<Rope> {
    let params = match obj.get("rope_parameters") {
        None | Some(Value::Null) => None,
        // Per layer type (Gemma 3 in transformers 5): the global layers' parameters are the model's;
        // the local layers' base is read by `hf_block`.
        Some(Value::Object(p)) => match p.get("full_attention") {
            Some(Value::Object(full)) => Some(full),
            Some(v) => bail!("rope_parameters.full_attention = {v} is not an object"),
            None => Some(p),
        },
        Some(v) => bail!("rope_parameters = {v} is not an object"),
    };
    let scaling = match params {
        Some(p) => Some(p),
        None => match obj.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(Value::Object(s)) => Some(s),
            Some(v) => bail!("rope_scaling = {v} is not an object"),
        },
    };
    let theta = match params.map(|p| get_f64(p, "rope_theta")).transpose()?.flatten() {
        Some(t) => t,
        None => get_f64(obj, "rope_theta")?.unwrap_or(10000.0),
    };
    if theta.is_nan() || theta <= 1.0 {
        bail!("rope_theta {theta} is out of range");
    }
    let partial_rotary_factor = match params
        .map(|p| get_f64(p, "partial_rotary_factor"))
        .transpose()?
        .flatten()
    {
        Some(f) => Some(f),
        None => get_f64(obj, "partial_rotary_factor")?,
    };
    let scaling = match scaling {
        None => RopeScaling::None,
        Some(s) => {
            let ty = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let num = |k: &str| -> Result<f32> {
                let v = get_f64(s, k)?.with_context(|| format!("RoPE type '{ty}' needs {k}"))?;
                if v.is_nan() || v <= 0.0 {
                    bail!("RoPE {k} = {v} must be positive");
                }
                Ok(v as f32)
            };
            match ty {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear { factor: num("factor")? },
                "llama3" => {
                    let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                    if high <= low {
                        bail!("llama3 RoPE: high_freq_factor {high} must exceed low_freq_factor {low}");
                    }
                    RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: low,
                        high_freq_factor: high,
                        original_max_position: get_usize(s, "original_max_position_embeddings")?
                            .filter(|&n| n > 0)
                            .context("llama3 RoPE needs original_max_position_embeddings")?,
                    }
                }
                other => bail!("RoPE type '{other}' is not supported (supported: default, linear, llama3)"),
            }
        }
    };
    Ok(Rope {
        theta,
        scaling,
        partial_rotary_factor,
    })
}

/// The GGUF name of a Hugging Face tensor name of a Llama-layout model (`None` if it is not one the engine
/// knows); other families: [`Family::gguf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    arch::LLAMA.gguf_name(hf)
}

/// Renames tensors to GGUF names; RoPE frequency buffers some old checkpoints saved are dropped, any other
/// unknown tensor is an error (ignoring it could silently compute something else).
fn rename_tensors(family: &Family, raw: Vec<Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(raw.len());
    for mut t in raw {
        if t.name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let name = family
            .gguf_name(&t.name)
            .with_context(|| format!("tensor {} is not one this engine knows", t.name))?;
        let hf_name = std::mem::replace(&mut t.name, name.clone());
        if out.insert(name.clone(), t).is_some() {
            bail!("tensor {hf_name} ({name}) appears twice");
        }
    }
    Ok(out)
}

/// Checks that every tensor the model needs is there with the shape `config.json` implies (innermost
/// first), and that there is nothing for layers the model does not have.
fn check_tensors(hf: &HfConfig, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let c = &hf.config;
    let (d, v) = (c.dim, c.vocab_size);
    let check = |name: &str, shape: &[usize], required: bool| -> Result<()> {
        match tensors.get(name) {
            None if required => bail!("tensor {name} is missing"),
            Some(t) if t.shape != shape => {
                bail!(
                    "tensor {name} has shape {:?} (innermost first), expected {shape:?}",
                    t.shape
                )
            }
            _ => Ok(()),
        }
    };
    check("token_embd.weight", &[d, v], true)?;
    check("output_norm.weight", &[d], true)?;
    check("output.weight", &[d, v], false)?;
    if !tensors.contains_key("output.weight") && hf.tie_word_embeddings == Some(false) {
        bail!("there is no lm_head.weight and tie_word_embeddings is false");
    }
    let family = arch::by_name(&c.arch)?;
    for l in 0..c.n_layers {
        for spec in family.layer {
            check(&format!("blk.{l}.{}", spec.gguf), &spec.shape(c), spec.required)?;
        }
    }
    let layer_of = |n: &str| n.strip_prefix("blk.")?.split_once('.')?.0.parse::<usize>().ok();
    let mut extra: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| layer_of(n).is_some_and(|l| l >= c.n_layers))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        bail!("tensors for layers past num_hidden_layers = {}: {extra:?}", c.n_layers);
    }
    Ok(())
}
