//! Opening a model path: the format is told by what the path is (a directory is a Hugging Face model,
//! a file starting with `GGUF` is GGUF, anything else is tried as a llama2.c checkpoint).

use super::arch;
use super::config::Config;
use super::{hf, llama2c};
use crate::formats::gguf::Gguf;
use crate::formats::Tensor;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
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
    /// The sampling values the model ships, if any.
    pub generation: GenerationDefaults,
}

/// The sampling values a model ships: GGUF's `general.sampling.{temp,top_k,top_p,min_p}` (which llama.cpp's
/// converter copies from `generation_config.json`), or a Hugging Face directory's `generation_config.json`
/// (`temperature`, `top_k`, `top_p`, `min_p`; `do_sample` is ignored, as llama.cpp's converter ignores
/// it). Each one the model gives replaces bushu's default on every command, unless a flag or a request
/// field sets it; the defaults are [`GenerationDefaults::TEMPERATURE`] (llama.cpp's 0.8) for `run` and for
/// `serve` requests, greedy for `chat`, top-k 40 / top-p 0.95 / min-p 0 for `run` and `chat`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
}

impl GenerationDefaults {
    /// The default temperature of `run` and of `serve` requests when the model gives none (llama.cpp's,
    /// llama-cli's and llama-server's alike).
    pub const TEMPERATURE: f32 = 0.8;

    /// Reads `general.sampling.*` of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> GenerationDefaults {
        let f = |k: &str| g.get(k).and_then(|v| v.as_f64());
        GenerationDefaults {
            temperature: f("general.sampling.temp").map(|v| v as f32),
            top_k: f("general.sampling.top_k").filter(|v| *v >= 0.0).map(|v| v as usize),
            top_p: f("general.sampling.top_p").map(|v| v as f32),
            min_p: f("general.sampling.min_p").map(|v| v as f32),
        }
    }

    /// Reads a `generation_config.json` (its parsed JSON).
    pub fn from_generation_config(v: &serde_json::Value) -> Result<GenerationDefaults> {
        let f = |k: &str| -> Result<Option<f64>> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .with_context(|| format!("{k} must be a non-negative number (got {x})")),
            }
        };
        Ok(GenerationDefaults {
            temperature: f("temperature")?.map(|v| v as f32),
            top_k: f("top_k")?.map(|v| v as usize),
            top_p: f("top_p")?.map(|v| v as f32),
            min_p: f("min_p")?.map(|v| v as f32),
        })
    }
}

/// Opens `path` as whichever format it is.
pub fn load(path: &Path) -> Result<ModelFile> {
    if !path.exists() {
        bail!("model path {} does not exist", path.display());
    }
    let file = if path.is_dir() {
        hf::load(path)?
    } else {
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 4 && &magic == b"GGUF" {
            load_gguf(path)?
        } else {
            llama2c::load(path, None)?
        }
    };
    check_vocab(file.tokenizer.vocab_size(), file.config.vocab_size)
        .with_context(|| format!("{}: tokenizer", path.display()))?;
    Ok(file)
}

/// The tokenizer and the model must agree on the vocabulary: every token id the tokenizer can give
/// needs a row of the model's embedding and classifier, and the model's rows beyond the tokenizer's
/// ids may only be padding (a few hundred, or up to a quarter of the tokenizer's: Qwen2.5 has 271,
/// Phi-3 53, the Llama-3-shaped test fixture of `quant_hf.rs` 292 over 3,804), not most of a
/// vocabulary, which is a tokenizer taken from another model.
pub fn check_vocab(tokenizer: usize, model: usize) -> Result<()> {
    if tokenizer > model {
        bail!(
            "the tokenizer has {tokenizer} tokens but the model only {model} rows: ids {model} to {} have no embedding",
            tokenizer - 1
        );
    }
    let padding = model - tokenizer;
    if padding > 256.max(tokenizer / 4) {
        bail!(
            "the tokenizer has {tokenizer} tokens for a model of {model}: the model's other {padding} rows are too many to be padding (a tokenizer from another model?)"
        );
    }
    Ok(())
}

/// Opens only the tokenizer of a model path, as `llama-tokenize` does: a GGUF file needs its `tokenizer.*`
/// metadata and nothing else (a vocabulary-only file, or a family bushu cannot run, works), a Hugging Face
/// directory needs its `tokenizer.json`; a llama2.c checkpoint is read whole (its header gives the vocabulary
/// size of `tokenizer.bin`).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        bail!("model path {} does not exist", path.display());
    }
    if path.is_dir() {
        return Tokenizer::from_hf_dir(path).with_context(|| format!("{}: tokenizer", path.display()));
    }
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if n == 4 && &magic == b"GGUF" {
        let g = Gguf::open(path)?;
        return Tokenizer::from_gguf(&g).with_context(|| format!("{}: tokenizer", path.display()));
    }
    Ok(llama2c::load(path, None)?.tokenizer)
}

/// Opens a GGUF model file.
pub fn load_gguf(path: &Path) -> Result<ModelFile> {
    let g = Gguf::open(path)?;
    let config = gguf_config(&g).with_context(|| format!("{}: unsupported model", path.display()))?;
    let family = arch::by_name(&config.arch)?;
    let tokenizer = Tokenizer::from_gguf(&g).with_context(|| format!("{}: tokenizer", path.display()))?;
    let eos_ids = tokenizer.eos_ids().to_vec();
    let file_bytes = std::fs::metadata(path)?.len();
    let generation = GenerationDefaults::from_gguf(&g);
    Ok(ModelFile {
        config,
        name: g.get_str("general.name").map(str::to_owned),
        chat_template: g
            .get_str("tokenizer.chat_template")
            .or(family.chat_template)
            .map(str::to_owned),
        tensors: g.tensors.into_iter().map(|t| (t.name.clone(), t)).collect(),
        tokenizer,
        format: "gguf",
        eos_ids,
        file_bytes,
        generation,
    })
}

/// The config of a GGUF file, read as its family ([`arch`]) says.
fn gguf_config(g: &Gguf) -> Result<Config> {
    let name = g.architecture().context("no general.architecture in metadata")?;
    arch::by_name(name)?.gguf_config(g)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vocab_sizes_agree_up_to_padding() {
        use super::check_vocab;
        assert!(check_vocab(32000, 32000).is_ok());
        assert!(check_vocab(151665, 151936).is_ok()); // Qwen2.5
        assert!(check_vocab(32011, 32064).is_ok()); // Phi-3
        assert!(check_vocab(3804, 4096).is_ok());
        assert!(check_vocab(100, 4096).is_err());
        assert!(check_vocab(4097, 4096).is_err());
    }
}
