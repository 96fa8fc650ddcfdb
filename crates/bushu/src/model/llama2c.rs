//! A llama2.c checkpoint (parsed by [`crate::formats::llama2c`]) as a model: its header as a Llama
//! [`Config`], its `tokenizer.bin`, its end-of-generation ids.
//!
//! llama2.c's RoPE rotates adjacent pairs (`RopeStyle::Interleaved`) with theta 10000; RMSNorm eps is 1e-5.

use super::config::{Config, RopeScaling};
use super::loader::ModelFile;
use crate::formats::llama2c as file;
pub use crate::formats::llama2c::{parse_header, Header, MAGIC};
use crate::formats::Tensor;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use kernels::ops::RopeStyle;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A checkpoint read without its tokenizer.
pub struct Checkpoint {
    pub header: Header,
    pub config: Config,
    /// Tensors under their GGUF names, shapes innermost first, views into the mapped file. There is no
    /// `output.weight` when the classifier is shared.
    pub tensors: HashMap<String, Tensor>,
    pub file_bytes: u64,
}

/// Maps and parses a checkpoint.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let p = file::read(path)?;
    let config = config(&p.header).with_context(|| format!("{}: not a valid llama2.c checkpoint", path.display()))?;
    Ok(Checkpoint {
        header: p.header,
        config,
        tensors: p.tensors,
        file_bytes: p.file_bytes,
    })
}

/// The model a header describes.
pub fn config(h: &Header) -> Result<Config> {
    let head_dim = h.dim / h.n_heads;
    let config = Config {
        arch: "llama".into(),
        dim: h.dim,
        n_layers: h.n_layers,
        n_heads: h.n_heads,
        n_kv_heads: h.n_kv_heads,
        head_dim,
        ffn_dim: h.hidden_dim,
        vocab_size: h.vocab_size,
        max_ctx: h.seq_len,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope_dim: head_dim,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        sliding_window: None,
        block: Default::default(),
    };
    config.validate()?;
    Ok(config)
}

/// Opens a llama2.c checkpoint; its tokenizer is `tokenizer` or else `tokenizer.bin` beside it.
pub fn load(path: &Path, tokenizer: Option<&Path>) -> Result<ModelFile> {
    let ck = read(path)?;
    let tok_path = tokenizer_path(path, tokenizer);
    if !tok_path.is_file() {
        bail!(
            "llama2.c checkpoint {} needs a tokenizer, and {} does not exist \
             (put tokenizer.bin beside the checkpoint or give the tokenizer's path)",
            path.display(),
            tok_path.display()
        );
    }
    let tokenizer = Tokenizer::from_llama2c(&tok_path, ck.config.vocab_size)
        .with_context(|| format!("{}: tokenizer", tok_path.display()))?;
    // run.c stops when the model emits BOS, which separates its training documents (TinyStories
    // models never emit EOS).
    let mut eos_ids = tokenizer.eos_ids().to_vec();
    if eos_ids.is_empty() {
        eos_ids.push(2);
    }
    let bos = tokenizer.bos_id().unwrap_or(1);
    if !eos_ids.contains(&bos) {
        eos_ids.push(bos);
    }
    Ok(ModelFile {
        config: ck.config,
        tensors: ck.tensors,
        tokenizer,
        format: "llama2.c",
        name: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
        chat_template: None,
        eos_ids,
        file_bytes: ck.file_bytes,
        generation: Default::default(),
    })
}

/// Where the tokenizer of checkpoint `path` is looked for.
pub fn tokenizer_path(path: &Path, tokenizer: Option<&Path>) -> PathBuf {
    match tokenizer {
        Some(t) => t.to_path_buf(),
        None => path.parent().unwrap_or(Path::new(".")).join("tokenizer.bin"),
    }
}
