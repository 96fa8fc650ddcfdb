//! llama2.c checkpoints (Andrej Karpathy's `.bin` format), memory-mapped.
//!
//! The legacy format (what `run.c` reads) is a header of seven i32 — `dim, hidden_dim, n_layers, n_heads,
//! n_kv_heads, vocab_size, seq_len`, a negative `vocab_size` meaning the classifier is not shared with the
//! embedding — followed by f32 weights, each layer's matrices stacked:
//!
//! ```text
//! token_embedding_table [vocab, dim]      rms_att_weight [L, dim]
//! wq [L, dim, dim]   wk [L, kv_dim, dim]   wv [L, kv_dim, dim]   wo [L, dim, dim]
//! rms_ffn_weight [L, dim]   w1 [L, hidden, dim]   w2 [L, dim, hidden]   w3 [L, hidden, dim]
//! rms_final_weight [dim]   freq_cis_real [seq_len, head/2]   freq_cis_imag [seq_len, head/2]
//! wcls [vocab, dim] (only when unshared)
//! ```
//!
//! `export.py --version 1` files (magic `ak42`, version 1, the same seven i32, a shared-classifier byte,
//! padded to 256 bytes; then all norms, the embedding, the matrices, `wcls` if unshared) are read too.

use super::{Storage, Tensor};
use anyhow::{bail, Context, Result};
use kernels::DType;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// `export.py`'s magic number ("ak42" read as a little-endian u32).
pub const MAGIC: u32 = 0x616b_3432;

/// A checkpoint's hyper-parameters as its header gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// The output classifier is the token embedding (no `wcls`).
    pub shared_classifier: bool,
    /// 0 for the legacy format, 1 for `export.py --version 1`.
    pub version: u32,
}

/// A checkpoint's contents: header and tensors (what they make is [`crate::model::llama2c`]'s business).
pub struct Parsed {
    pub header: Header,
    /// Tensors under their GGUF names, shapes innermost first, views into the mapped file. There is no
    /// `output.weight` when the classifier is shared.
    pub tensors: HashMap<String, Tensor>,
    pub file_bytes: u64,
}

/// Maps and parses a checkpoint.
pub fn read(path: &Path) -> Result<Parsed> {
    let storage = Storage::map(path)?;
    parse(storage).with_context(|| format!("{}: not a valid llama2.c checkpoint", path.display()))
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
}

/// Reads the header; returns it and the offset where the weights start.
pub fn parse_header(buf: &[u8]) -> Result<(Header, usize)> {
    let versioned = buf.len() >= 8 && i32_at(buf, 0) as u32 == MAGIC;
    let (version, params_at, data_start) = if versioned {
        (i32_at(buf, 4), 8, 256)
    } else {
        (0, 0, 28)
    };
    if version != 0 && version != 1 {
        bail!("llama2.c export version {version} is not supported (only the legacy format and version 1)");
    }
    if buf.len() < data_start {
        bail!(
            "file is truncated: {} bytes, less than the {data_start}-byte header",
            buf.len()
        );
    }
    let p: Vec<i32> = (0..7).map(|i| i32_at(buf, params_at + 4 * i)).collect();
    let shared_classifier = if versioned { buf[36] != 0 } else { p[5] > 0 };
    let vocab = p[5].unsigned_abs() as usize;
    let bad = || {
        format!(
            "header (dim {}, hidden_dim {}, layers {}, heads {}, kv_heads {}, vocab {}, seq_len {}) \
             does not describe a model",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6]
        )
    };
    if p.iter().enumerate().any(|(i, &v)| i != 5 && v <= 0) || vocab == 0 || (versioned && p[5] < 0) {
        bail!("{}", bad());
    }
    let h = Header {
        dim: p[0] as usize,
        hidden_dim: p[1] as usize,
        n_layers: p[2] as usize,
        n_heads: p[3] as usize,
        n_kv_heads: p[4] as usize,
        vocab_size: vocab,
        seq_len: p[6] as usize,
        shared_classifier,
        version: version as u32,
    };
    if !h.dim.is_multiple_of(h.n_heads) || !(h.dim / h.n_heads).is_multiple_of(2) || h.n_kv_heads > h.n_heads {
        bail!("{}", bad());
    }
    Ok((h, data_start))
}

/// One stretch of f32s in the file: a tensor (GGUF name, shape innermost first), one per layer
/// (`blk.{l}.` + name), or skipped data (no name).
struct Piece {
    name: Option<String>,
    per_layer: bool,
    shape: Vec<usize>,
}

/// The order of the weights in the file.
fn layout(h: &Header) -> Vec<Piece> {
    let (d, f, v) = (h.dim, h.hidden_dim, h.vocab_size);
    let head = d / h.n_heads;
    let kv = head * h.n_kv_heads;
    let one = |name: &str, shape: Vec<usize>| Piece {
        name: Some(name.to_owned()),
        per_layer: false,
        shape,
    };
    let layers = |name: &str, shape: Vec<usize>| Piece {
        name: Some(name.to_owned()),
        per_layer: true,
        shape,
    };
    let matrices = || {
        [
            layers("attn_q.weight", vec![d, d]),
            layers("attn_k.weight", vec![d, kv]),
            layers("attn_v.weight", vec![d, kv]),
            layers("attn_output.weight", vec![d, d]),
        ]
    };
    let ffn = || {
        [
            layers("ffn_gate.weight", vec![d, f]),
            layers("ffn_down.weight", vec![f, d]),
            layers("ffn_up.weight", vec![d, f]),
        ]
    };
    let mut out = Vec::new();
    if h.version == 0 {
        out.push(one("token_embd.weight", vec![d, v]));
        out.push(layers("attn_norm.weight", vec![d]));
        out.extend(matrices());
        out.push(layers("ffn_norm.weight", vec![d]));
        out.extend(ffn());
        out.push(one("output_norm.weight", vec![d]));
        // freq_cis_real and freq_cis_imag: the engine computes RoPE itself.
        out.push(Piece {
            name: None,
            per_layer: false,
            shape: vec![head / 2, h.seq_len, 2],
        });
    } else {
        out.push(layers("attn_norm.weight", vec![d]));
        out.push(layers("ffn_norm.weight", vec![d]));
        out.push(one("output_norm.weight", vec![d]));
        out.push(one("token_embd.weight", vec![d, v]));
        out.extend(matrices());
        out.extend(ffn());
    }
    if !h.shared_classifier {
        out.push(one("output.weight", vec![d, v]));
    }
    out
}

/// Parses a checkpoint image: the file must be exactly as long as its header implies.
pub fn parse(storage: Arc<Storage>) -> Result<Parsed> {
    let buf = storage.bytes();
    let (h, data_start) = parse_header(buf)?;
    let pieces = layout(&h);
    // Header values are below 2^31, so no product of four of them overflows u128.
    let mut expected = data_start as u128;
    for p in &pieces {
        let count = if p.per_layer { h.n_layers as u128 } else { 1 };
        expected += 4 * count * p.shape.iter().map(|&d| d as u128).product::<u128>();
    }
    if expected != buf.len() as u128 {
        let what = if (buf.len() as u128) < expected {
            "truncated"
        } else {
            "longer than the model"
        };
        bail!(
            "file is {what}: it has {} bytes but its header (dim {}, hidden_dim {}, {} layers, {} heads, \
             {} kv heads, vocab {}, seq_len {}, {} classifier) implies {expected}",
            buf.len(),
            h.dim,
            h.hidden_dim,
            h.n_layers,
            h.n_heads,
            h.n_kv_heads,
            h.vocab_size,
            h.seq_len,
            if h.shared_classifier { "shared" } else { "separate" },
        );
    }
    // The file holds all of it, so nothing below overflows.
    let mut tensors = HashMap::new();
    let mut offset = data_start;
    for p in pieces {
        let nbytes = 4 * p.shape.iter().product::<usize>();
        let names: Vec<Option<String>> = match (&p.name, p.per_layer) {
            (None, _) => vec![None],
            (Some(n), false) => vec![Some(n.clone())],
            (Some(n), true) => (0..h.n_layers).map(|l| Some(format!("blk.{l}.{n}"))).collect(),
        };
        for name in names {
            if let Some(name) = name {
                let t = Tensor {
                    pack: Default::default(),
                    name: name.clone(),
                    dtype: DType::F32,
                    shape: p.shape.clone(),
                    storage: storage.clone(),
                    offset,
                    nbytes,
                };
                tensors.insert(name, t);
            }
            offset += nbytes;
        }
    }
    Ok(Parsed {
        header: h,
        tensors,
        file_bytes: buf.len() as u64,
    })
}
