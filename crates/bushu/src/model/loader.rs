//! Opening a model path: the format is told by what the path is (a directory is a Hugging Face model,
//! a file starting with `GGUF` is GGUF, anything else is tried as a llama2.c checkpoint).

use super::config::{Config, RopeScaling};
use crate::formats::gguf::Gguf;
use crate::formats::{hf, llama2c, Tensor};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use kernels::ops::RopeStyle;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Everything read from a model path.
pub struct ModelFile {
    pub config: Config,
    /// Tensors under their GGUF names (`token_embd.weight`, `blk.0.attn_q.weight`, `output_norm.weight`, ...),
    /// shapes innermost first.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    /// `gguf`, `safetensors` or `llama2.c`.
    pub format: &'static str,
    /// Model name, if the file gives one.
    pub name: Option<String>,
    /// Chat template (Jinja), if the file has one.
    pub chat_template: Option<String>,
    /// Token ids that end generation (from the tokenizer and `generation_config.json`).
    pub eos_ids: Vec<u32>,
    /// Size of the model files in bytes.
    pub file_bytes: u64,
}

/// Opens `path` as whichever format it is.
pub fn load(path: &Path) -> Result<ModelFile> {
    if !path.exists() {
        bail!("model path {} does not exist", path.display());
    }
    if path.is_dir() {
        return hf::load(path);
    }
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if n == 4 && &magic == b"GGUF" {
        return load_gguf(path);
    }
    llama2c::load(path, None)
}

/// Opens a GGUF model file.
pub fn load_gguf(path: &Path) -> Result<ModelFile> {
    let g = Gguf::open(path)?;
    let config = gguf_config(&g).with_context(|| format!("{}: unsupported model", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&g).with_context(|| format!("{}: tokenizer", path.display()))?;
    let eos_ids = tokenizer.eos_ids().to_vec();
    let file_bytes = std::fs::metadata(path)?.len();
    Ok(ModelFile {
        config,
        name: g.get_str("general.name").map(str::to_owned),
        chat_template: g.get_str("tokenizer.chat_template").map(str::to_owned),
        tensors: g.tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        tokenizer,
        format: "gguf",
        eos_ids,
        file_bytes,
    })
}

/// Architectures whose GGUF tensors follow the Llama layout.
const LLAMA_LIKE: &[&str] = &["llama", "mistral", "qwen2"];

fn gguf_config(g: &Gguf) -> Result<Config> {
    let arch = g
        .architecture()
        .context("no general.architecture in metadata")?
        .to_owned();
    if !LLAMA_LIKE.contains(&arch.as_str()) {
        bail!(
            "architecture '{arch}' is not supported (supported: {})",
            LLAMA_LIKE.join(", ")
        );
    }
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<usize> {
        let v = g
            .get_i64(&key(k))
            .with_context(|| format!("missing metadata {}", key(k)))?;
        usize::try_from(v).with_context(|| format!("metadata {} = {v} is negative", key(k)))
    };
    let dim = int("embedding_length")?;
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
    let config = Config {
        dim,
        n_layers: int("block_count")?,
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
        // llama.cpp's converter permutes Q/K rows of Llama-style models so pairs are adjacent;
        // Qwen2 keeps the Hugging Face layout and rotates halves.
        rope_style: if arch == "qwen2" {
            RopeStyle::Neox
        } else {
            RopeStyle::Interleaved
        },
        // Sliding-window attention, where the file declares it (e.g. `mistral3.attention.sliding_window`).
        sliding_window: g
            .get_i64(&key("attention.sliding_window"))
            .filter(|&w| w > 0)
            .map(|w| w as usize),
        arch,
    };
    config.validate()?;
    Ok(config)
}
