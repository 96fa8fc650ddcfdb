//! A Hugging Face directory as the GGUF that llama.cpp's `convert_hf_to_gguf.py` would make of it: the input
//! side of `bushu quantize DIR OUT.gguf`.
//!
//! - Tensors get llama.cpp's names ([`crate::model::hf::gguf_name`]); for the `llama` architecture
//!   (Llama, Mistral) the rows of `attn_q`/`attn_k` (weights and biases) are permuted per head from Hugging
//!   Face's rotate-half order to llama.cpp's adjacent pairs (`LlamaModel.permute`); Qwen2 keeps the order
//!   (llama.cpp rotates halves for it). 1-D tensors are stored as F32, as the converter does.
//! - Metadata: the keys `TextModel.set_gguf_parameters` and `LlamaModel.set_gguf_parameters` write for
//!   these models (block count, context, sizes, heads, RoPE base/dimensions/linear scaling, RMS epsilon,
//!   `key_length`/`value_length` when `config.json` has `head_dim`, vocabulary size). Llama 3 RoPE scaling
//!   becomes the `rope_freqs.weight` tensor of `LlamaModel.generate_extra_tensors` ([`llama3_rope_factors`]).
//! - Tokenizer, SentencePiece as `_set_vocab_sentencepiece` does it: pieces, scores and types from
//!   `tokenizer.model` (read here with a small protobuf reader), `added_tokens.json` and
//!   `tokenizer_config.json`'s `added_tokens_decoder`, padding to `vocab_size`.
//! - Tokenizer, byte-level BPE (`tokenizer.json` without `tokenizer.model`) as `_set_vocab_gpt2` does it:
//!   the vocabulary by id with the added tokens (CONTROL when special, USER_DEFINED otherwise), `[PAD{i}]` up
//!   to `vocab_size`, the merges, and `tokenizer.ggml.pre`. The converter finds that name by hashing the
//!   token ids of a probe text; here the `tokenizer.json` pre-tokenizer (its `Split` regexes, `Digits`,
//!   `ByteLevel`'s regex) is compared with the regexes of bushu's named pre-tokenizers ([`bpe_pre_name`]),
//!   and a tokenizer that matches none is refused.
//! - Both: gguf-py's `SpecialVocab` (special ids; `add_bos`/`add_eos`/`add_sep` from the post-processor and
//!   `tokenizer_config.json`; the chat template).

use crate::formats::gguf::Value;
use crate::formats::Tensor;
use crate::model::config::RopeScaling;
use crate::model::hf::{self, gguf_name};
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use std::path::Path;

/// Metadata and tensors of the GGUF image of a Hugging Face directory.
pub struct HfSource {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

const CONVERTER: &str = "convert it with llama.cpp's convert_hf_to_gguf.py first";

/// Reads `dir` as llama.cpp's converter would (see the module documentation).
pub fn read(dir: &Path) -> Result<HfSource> {
    let m = hf::read(dir)?;
    let c = &m.config.config;
    let arch = match c.arch.as_str() {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        other => bail!(
            "{}: architecture '{other}' cannot be converted; {CONVERTER}",
            dir.display()
        ),
    };
    if c.sliding_window.is_some() {
        bail!(
            "{}: sliding-window attention has no key in llama.cpp's '{arch}' architecture; {CONVERTER}",
            dir.display()
        );
    }
    let config: Json = read_json(&dir.join("config.json"))?;
    let mut md: Vec<(String, Value)> = Vec::new();
    let mut set = |k: &str, v: Value| md.push((k.to_owned(), v));
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |v: usize| Value::U32(v as u32);
    set("general.architecture", Value::String(arch.into()));
    set("general.type", Value::String("model".into()));
    if let Some(name) = &m.name {
        set("general.name", Value::String(title_case(name)));
    }
    set(&key("block_count"), u32v(c.n_layers));
    set(&key("context_length"), u32v(c.max_ctx));
    set(&key("embedding_length"), u32v(c.dim));
    set(&key("feed_forward_length"), u32v(c.ffn_dim));
    set(&key("attention.head_count"), u32v(c.n_heads));
    set(&key("attention.head_count_kv"), u32v(c.n_kv_heads));
    match c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            set(&key("rope.scaling.type"), Value::String("linear".into()));
            set(&key("rope.scaling.factor"), Value::F32(factor));
        }
        // Stored as the `rope_freqs` tensor (below), with no metadata key.
        RopeScaling::Llama3 { .. } => {}
    }
    set(&key("rope.freq_base"), Value::F32(c.rope_theta));
    set(&key("attention.layer_norm_rms_epsilon"), Value::F32(c.rms_eps));
    if config.get("head_dim").and_then(Json::as_u64).is_some() {
        set(&key("attention.key_length"), u32v(c.head_dim));
        set(&key("attention.value_length"), u32v(c.head_dim));
    }
    if arch == "llama" {
        set(&key("vocab_size"), u32v(c.vocab_size));
        set(&key("rope.dimension_count"), u32v(c.rope_dim));
    }
    for (k, v) in tokenizer_metadata(dir, c.vocab_size, arch)? {
        set(&k, v);
    }

    // Tensors in the order of the safetensors files, Q/K rows permuted for llama.
    let (raw, _) = crate::formats::hf::read_weights(dir)?;
    let mut tensors = Vec::with_capacity(m.tensors.len() + 1);
    if let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position,
    } = c.rope_scaling
    {
        // `LlamaModel.generate_extra_tensors` yields it before the checkpoint's tensors.
        let f = llama3_rope_factors(
            c.rope_theta,
            c.head_dim,
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position as f32,
        );
        tensors.push(Tensor::from_f32("rope_freqs.weight", vec![f.len()], &f));
    }
    for t in raw {
        let Some(name) = gguf_name(&t.name) else { continue };
        let t = m.tensors[&name].clone();
        let heads = match name.rsplit('.').nth(1) {
            Some("attn_q") if arch == "llama" => Some(c.n_heads),
            Some("attn_k") if arch == "llama" => Some(c.n_kv_heads),
            _ => None,
        };
        tensors.push(match heads {
            Some(h) => {
                let cols = if t.shape.len() > 1 { t.shape[0] } else { 1 };
                let w = permute_rows(&t.to_f32(), h, cols)?;
                Tensor::from_f32(&name, t.shape.clone(), &w)
            }
            None if t.shape.len() == 1 && t.dtype != kernels::DType::F32 => {
                Tensor::from_f32(&name, t.shape.clone(), &t.to_f32())
            }
            None => t,
        });
    }
    let params: usize = tensors.iter().map(Tensor::numel).sum();
    let at = md.iter().position(|(k, _)| k == "general.name").map_or(2, |i| i + 1);
    md.insert(at, ("general.size_label".into(), Value::String(size_label(params))));
    Ok(HfSource { metadata: md, tensors })
}

/// gguf-py's `size_label` of a parameter count: `7.7M`, `135M`, `1.1B`.
pub fn size_label(n: usize) -> String {
    let n = n as f64;
    let (x, suffix) = match n {
        n if n > 1e12 => (n * 1e-12, "T"),
        n if n > 1e9 => (n * 1e-9, "B"),
        n if n > 1e6 => (n * 1e-6, "M"),
        n => (n * 1e-3, "K"),
    };
    let digits = format!("{}", x.round() as u64).trim_start_matches('0').len();
    format!("{x:.*}{suffix}", 2usize.saturating_sub(digits))
}

/// `LlamaModel.generate_extra_tensors` for `rope_type: llama3`: one divisor per rotated pair (`head_dim / 2`),
/// computed in f32 as the converter's torch code does (`freqs = 1 / base^(arange(0, dim, 2) / dim)`, then 1,
/// `factor` or the smooth blend by wavelength against `original_max_position_embeddings`).
pub fn llama3_rope_factors(base: f32, dim: usize, factor: f32, low: f32, high: f32, old_ctx: f32) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// `LlamaModel.permute`: within each of `heads` heads, row `s·hd/2 + i` moves to `2i + s`.
pub fn permute_rows(w: &[f32], heads: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = w.len() / cols;
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        bail!("cannot permute {rows} rows into {heads} heads of pairs");
    }
    let half = rows / heads / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let from = h * 2 * half + s * half + i;
                let to = h * 2 * half + 2 * i + s;
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Json> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The converter's `general.name`: the directory name, words split at `-`/`_`, each capitalised.
fn title_case(s: &str) -> String {
    s.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// SentencePiece piece types (sentencepiece_model.proto), which GGUF's token types reuse.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// `(piece, score, type)` of every piece of a SentencePiece `ModelProto`.
pub fn sentencepiece_pieces(buf: &[u8]) -> Result<Vec<(String, f32, i32)>> {
    let mut out = Vec::new();
    let mut r = Proto { buf, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        if field == 1 && wire == 2 {
            let mut p = Proto {
                buf: r.bytes()?,
                pos: 0,
            };
            let (mut piece, mut score, mut ty) = (String::new(), 0.0f32, NORMAL);
            while let Some((f, w)) = p.key()? {
                match (f, w) {
                    (1, 2) => piece = String::from_utf8(p.bytes()?.to_vec()).context("piece is not UTF-8")?,
                    (2, 5) => score = f32::from_le_bytes(p.fixed::<4>()?),
                    (3, 0) => ty = p.varint()? as i32,
                    _ => p.skip(w)?,
                }
            }
            out.push((piece, score, ty));
        } else {
            r.skip(wire)?;
        }
    }
    if out.is_empty() {
        bail!("no pieces (not a SentencePiece model)");
    }
    Ok(out)
}

struct Proto<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Proto<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).context("truncated protobuf")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("malformed protobuf varint")
    }
    fn key(&mut self) -> Result<Option<(u64, u64)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, k & 7)))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .context("truncated protobuf")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    fn skip(&mut self, wire: u64) -> Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            w => bail!("unsupported protobuf wire type {w}"),
        }
    }
}

fn does_token_look_special(t: &str) -> bool {
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(&t)
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The chat template: tokenizer_config.json's string, else chat_template.jinja (only with a tokenizer_config.json).
fn chat_template(dir: &Path, tc: Option<&Json>) -> Option<String> {
    let jinja = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
    tc.and_then(|t| match t.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => None,
        None => jinja,
    })
}

fn read_json_if_file(path: &Path) -> Result<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `tokenizer.*` metadata of a directory: SentencePiece with `tokenizer.model`, else byte-level BPE from
/// `tokenizer.json` (see the module documentation).
fn tokenizer_metadata(dir: &Path, vocab_size: usize, arch: &str) -> Result<Vec<(String, Value)>> {
    let spm = dir.join("tokenizer.model");
    if !spm.is_file() {
        let mut md = bpe_metadata(dir, vocab_size)?;
        // `LlamaModel.set_vocab` writes tokenizer_config.json's add_prefix_space first, whatever the vocabulary.
        let tc = read_json_if_file(&dir.join("tokenizer_config.json"))?;
        if let Some(add) = tc
            .as_ref()
            .and_then(|t| t.get("add_prefix_space"))
            .and_then(Json::as_bool)
        {
            if arch == "llama" {
                md.insert(0, ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(add)));
            }
        }
        return Ok(md);
    }
    let bytes = std::fs::read(&spm).with_context(|| format!("cannot read {}", spm.display()))?;
    let pieces = sentencepiece_pieces(&bytes).with_context(|| format!("{}", spm.display()))?;
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (id, (piece, score, ty)) in pieces.into_iter().enumerate().take(vocab_size) {
        tokens[id] = piece;
        scores[id] = score;
        types[id] = match ty {
            UNKNOWN | CONTROL | UNUSED | BYTE => ty,
            _ => NORMAL, // USER_DEFINED pieces of the model are NORMAL for the converter
        };
    }
    let added = dir.join("added_tokens.json");
    if added.is_file() {
        let j = read_json(&added)?;
        for (text, id) in j.as_object().context("added_tokens.json is not an object")? {
            let id = id.as_u64().context("added_tokens.json: id is not an integer")? as usize;
            if id < vocab_size {
                (tokens[id], scores[id], types[id]) = (text.clone(), -1000.0, USER_DEFINED);
            }
        }
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path)?)
    } else {
        None
    };
    if let Some(dec) = tc
        .as_ref()
        .and_then(|t| t.get("added_tokens_decoder"))
        .and_then(Json::as_object)
    {
        for (id, data) in dec {
            let id: usize = id.parse().with_context(|| format!("added_tokens_decoder: id {id}"))?;
            let text = data["content"].as_str().context("added_tokens_decoder: no content")?;
            if id >= vocab_size {
                continue;
            }
            let special = data.get("special").and_then(Json::as_bool).unwrap_or(false);
            (tokens[id], types[id]) = if special || does_token_look_special(text) {
                (text.to_owned(), CONTROL)
            } else {
                (text.replace('\u{2581}', " "), USER_DEFINED)
            };
            scores[id] = -1000.0;
        }
    }
    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ];
    let tj_path = dir.join("tokenizer.json");
    let tj = if tj_path.is_file() {
        Some(read_json(&tj_path)?)
    } else {
        None
    };
    let config = read_json(&dir.join("config.json"))?;
    let template = chat_template(dir, tc.as_ref());
    md.extend(special_vocab(tj.as_ref(), tc.as_ref(), &config, vocab_size, template));
    if let Some(add) = tc
        .as_ref()
        .and_then(|t| t.get("add_prefix_space"))
        .and_then(Json::as_bool)
    {
        md.insert(0, ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(add)));
    }
    Ok(md)
}

/// gguf-py's `SpecialVocab`: special token ids, `add_*_token` (post-processor, tokenizer_config.json), chat template.
fn special_vocab(
    tj: Option<&Json>,
    tc: Option<&Json>,
    config: &Json,
    n_vocab: usize,
    chat_template: Option<String>,
) -> Vec<(String, Value)> {
    const TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let content = |typ: &str| -> Option<String> {
        match tc?.get(format!("{typ}_token"))? {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
            _ => None,
        }
    };
    let (bos, eos, sep, cls) = (content("bos"), content("eos"), content("sep"), content("cls"));
    let mut add: Vec<(&str, bool)> = Vec::new();
    // A dict in insertion order: `overwrite` false is Python's `setdefault`.
    fn set(add: &mut Vec<(&'static str, bool)>, typ: &'static str, v: bool, overwrite: bool) {
        match add.iter_mut().find(|a| a.0 == typ) {
            Some(a) if overwrite => a.1 = v,
            Some(_) => {}
            None => add.push((typ, v)),
        }
    }
    let special_id = |e: &Json| {
        e.get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    if let Some(pp) = tj.and_then(|t| t.get("post_processor")).filter(|p| !p.is_null()) {
        let procs = pp
            .get("processors")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_else(|| vec![pp.clone()]);
        for p in &procs {
            if p["type"] == "ByteLevel" {
                set(&mut add, "bos", false, false);
                set(&mut add, "eos", false, false);
                continue;
            }
            if p["type"] == "RobertaProcessing" {
                for typ in ["bos", "eos", "sep"] {
                    set(&mut add, typ, true, true);
                }
                continue;
            }
            if p["type"] != "TemplateProcessing" {
                continue;
            }
            let single = p["single"].as_array().cloned().unwrap_or_default();
            let (mut first, mut last) = (None, None);
            if single.len() > 1 {
                first = special_id(&single[0]);
                if let Some(f) = &first {
                    set(
                        &mut add,
                        "bos",
                        Some(f) == bos.as_ref() || Some(f) == cls.as_ref(),
                        true,
                    );
                }
                last = special_id(&single[single.len() - 1]);
                if let Some(l) = &last {
                    set(&mut add, "eos", Some(l) == eos.as_ref(), true);
                }
            }
            let mut pair = p["pair"].as_array().cloned().unwrap_or_default();
            if pair.is_empty() {
                continue;
            }
            if first.is_some() && special_id(&pair[0]) == first {
                pair.remove(0);
            }
            if last.is_some() && pair.last().and_then(special_id) == last {
                pair.pop();
            }
            let seq = |e: &Json| {
                e.get("Sequence")
                    .and_then(|s| s.get("id"))
                    .and_then(Json::as_str)
                    .map(str::to_owned)
            };
            if pair.len() > 2
                && seq(&pair[0]).as_deref() == Some("A")
                && seq(&pair[pair.len() - 1]).as_deref() == Some("B")
            {
                let mid = &pair[1..pair.len() - 1];
                let is_sep =
                    |e: &Json| special_id(e).is_some_and(|s| Some(&s) == sep.as_ref() || Some(&s) == eos.as_ref());
                let add_sep = (is_sep(&mid[0]) && last.is_none()) || (mid.len() == 2 && is_sep(&mid[1]));
                set(&mut add, "sep", add_sep, true);
            }
        }
    }
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut put = |typ: &'static str, id: Option<u64>| {
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            if !ids.iter().any(|x| x.0 == typ) {
                ids.push((typ, id as u32));
            }
        }
    };
    let added: &[Json] = tj.and_then(|t| t["added_tokens"].as_array()).map_or(&[], Vec::as_slice);
    for typ in TYPES {
        if let Some(b) = tc
            .and_then(|t| t.get(format!("add_{typ}_token")))
            .and_then(Json::as_bool)
        {
            set(&mut add, typ, b, true);
        }
        let c = content(typ);
        let id = c.and_then(|c| added.iter().find(|a| a["content"] == c.as_str())?["id"].as_u64());
        put(typ, id);
    }
    for typ in TYPES {
        put(typ, config.get(format!("{typ}_token_id")).and_then(Json::as_u64));
    }
    let name = |typ: &str| match typ {
        "unk" => "unknown".to_owned(),
        "sep" => "seperator".to_owned(), // sic: gguf-py's key
        "pad" => "padding".to_owned(),
        t => t.to_owned(),
    };
    let mut md: Vec<(String, Value)> = Vec::new();
    for typ in TYPES {
        if let Some((_, id)) = ids.iter().find(|x| x.0 == typ) {
            md.push((format!("tokenizer.ggml.{}_token_id", name(typ)), Value::U32(*id)));
        }
    }
    for typ in TYPES {
        if let Some((_, v)) = add.iter().find(|a| a.0 == typ) {
            md.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v)));
        }
    }
    if let Some(t) = chat_template {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    md
}

/// `_set_vocab_gpt2` of a byte-level BPE `tokenizer.json`: `get_vocab_base` (the vocabulary by id with added
/// tokens, `[PAD{i}]` up to `vocab_size`; added tokens CONTROL when special or special-looking, else
/// USER_DEFINED), the pre-tokenizer name, then `SpecialVocab` with the merges.
fn bpe_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let tj_path = dir.join("tokenizer.json");
    if !tj_path.is_file() {
        bail!(
            "{}: neither tokenizer.model nor tokenizer.json; {CONVERTER}",
            dir.display()
        );
    }
    let tj = read_json(&tj_path)?;
    let model = &tj["model"];
    let byte_level = contains_type(&tj["pre_tokenizer"], "ByteLevel");
    if model["type"] != "BPE" || !byte_level {
        bail!(
            "{}: no tokenizer.model, and tokenizer.json is not byte-level BPE (model {}, no ByteLevel \
             pre-tokenizer); {CONVERTER}",
            tj_path.display(),
            model["type"]
        );
    }
    let pre = bpe_pre_name(&tj).map_err(|e| anyhow::anyhow!("{}: {e}; {CONVERTER}", tj_path.display()))?;

    let mut by_id: Vec<Option<String>> = vec![None; vocab_size];
    let mut put = |text: &str, id: u64| -> Result<()> {
        let slot = by_id.get_mut(id as usize).with_context(|| {
            format!(
                "{}: token id {id} is not below vocab_size {vocab_size}",
                tj_path.display()
            )
        })?;
        *slot = Some(text.to_owned());
        Ok(())
    };
    for (text, id) in model["vocab"]
        .as_object()
        .context("tokenizer.json: model.vocab is not an object")?
    {
        put(text, id.as_u64().context("tokenizer.json: vocab id is not an integer")?)?;
    }
    let added: &[Json] = tj["added_tokens"].as_array().map_or(&[], Vec::as_slice);
    let mut special = vec![None; vocab_size];
    for a in added {
        let id = a["id"]
            .as_u64()
            .context("tokenizer.json: added token id is not an integer")?;
        let text = a["content"]
            .as_str()
            .context("tokenizer.json: added token has no content")?;
        put(text, id)?;
        special[id as usize] = Some(a["special"].as_bool().unwrap_or(false));
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (i, t) in by_id.into_iter().enumerate() {
        match (t, special[i]) {
            (None, _) => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            (Some(t), None) => {
                tokens.push(t);
                types.push(NORMAL);
            }
            (Some(t), Some(sp)) if sp || does_token_look_special(&t) => {
                tokens.push(t);
                types.push(CONTROL);
            }
            (Some(t), Some(_)) => {
                tokens.push(t.replace('\u{2581}', " "));
                types.push(USER_DEFINED);
            }
        }
    }
    // gguf-py's merges: "a b" strings as they are; pairs joined with a space, a space inside a part written
    // as U+0120 (`chr(ord(" ") + 256)`).
    let merges: Vec<String> = match model["merges"].as_array() {
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 => {
                    let part = |x: &Json| x.as_str().map(|s| s.replace(' ', "\u{120}"));
                    Ok(format!(
                        "{} {}",
                        part(&p[0]).context("merge part is not a string")?,
                        part(&p[1]).context("merge part is not a string")?
                    ))
                }
                _ => bail!("{}: a merge is neither \"a b\" nor [a, b]", tj_path.display()),
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    if merges.is_empty() {
        bail!("{}: byte-level BPE without merges; {CONVERTER}", tj_path.display());
    }
    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
    ];
    let tc = read_json_if_file(&dir.join("tokenizer_config.json"))?;
    let config = read_json(&dir.join("config.json"))?;
    let template = chat_template(dir, tc.as_ref());
    md.extend(special_vocab(Some(&tj), tc.as_ref(), &config, vocab_size, template));
    Ok(md)
}

fn contains_type(v: &Json, ty: &str) -> bool {
    match v {
        Json::Object(o) => o.get("type").and_then(Json::as_str) == Some(ty) || o.values().any(|x| contains_type(x, ty)),
        Json::Array(a) => a.iter().any(|x| contains_type(x, ty)),
        _ => false,
    }
}

/// The regex of `ByteLevel { use_regex: true }` in the `tokenizers` library.
const HF_BYTE_LEVEL: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The contractions as the models' regexes write them and as llama.cpp (and bushu) spell them out.
const CONTRACTIONS_I: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const CONTRACTIONS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// bushu's pre-tokenizer names tried in turn; the first whose regexes and `ignore_merges` match wins.
const PRE_NAMES: [&str; 17] = [
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "smollm",
    "smaug-bpe",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "default",
    "poro-chat",
    "viking",
    "tekken",
    "chameleon",
    "gpt-4o",
    "bailingmoe",
    "seed-coder",
];

/// The `tokenizer.ggml.pre` name of a byte-level BPE `tokenizer.json`: its pre-tokenizer as a list of
/// regexes (`Split` patterns, `Digits`, the regex of `ByteLevel` when `use_regex`), compared with the regexes
/// of bushu's named pre-tokenizers (`tokenizer::pretokenize`), along with the model's `ignore_merges`.
/// llama.cpp's converter instead hashes the token ids of a probe text; for the models both know, the names
/// agree. Errors name what did not match.
pub fn bpe_pre_name(tj: &Json) -> std::result::Result<&'static str, String> {
    match &tj["normalizer"] {
        Json::Null => {}
        n if n["type"] == "NFC" => {} // llama.cpp does not normalize either; NFC text is unchanged
        n => return Err(format!("normalizer {} has no llama.cpp equivalent", n["type"])),
    }
    let pt = &tj["pre_tokenizer"];
    let list: Vec<&Json> = match pt["type"].as_str() {
        Some("Sequence") => pt["pretokenizers"]
            .as_array()
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        _ => vec![pt],
    };
    let mut regexes: Vec<String> = Vec::new();
    for p in list {
        match p["type"].as_str().unwrap_or("") {
            "ByteLevel" => {
                if p["add_prefix_space"].as_bool() == Some(true) {
                    return Err("ByteLevel with add_prefix_space has no llama.cpp pre-tokenizer".into());
                }
                if p["use_regex"].as_bool().unwrap_or(true) {
                    regexes.push(HF_BYTE_LEVEL.into());
                }
            }
            "Split" => {
                let Some(re) = p["pattern"]["Regex"].as_str() else {
                    return Err(format!("Split on {} (not a regex)", p["pattern"]));
                };
                if p["behavior"] != "Isolated" || p["invert"].as_bool() == Some(true) {
                    return Err(format!(
                        "Split {re:?} with behavior {} (only Isolated is known)",
                        p["behavior"]
                    ));
                }
                regexes.push(re.to_owned());
            }
            "Digits" => regexes.push(
                if p["individual_digits"].as_bool() == Some(true) {
                    r"\p{N}"
                } else {
                    r"\p{N}+"
                }
                .into(),
            ),
            other => return Err(format!("pre-tokenizer '{other}' has no llama.cpp equivalent")),
        }
    }
    // Spellings that split alike: the contractions case-insensitive or spelled out; GPT-2's regex with or
    // without its final `|\s+` (what that alternative matches is left between matches, a piece either way).
    let norm = |r: &str| {
        let r = r.replace(CONTRACTIONS_I, CONTRACTIONS);
        match r.strip_suffix(r"|\s+") {
            Some(head) if head.ends_with(r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)") && head.starts_with("'s|") => {
                head.to_owned()
            }
            _ => r,
        }
    };
    let ours: Vec<String> = regexes.iter().map(|r| norm(r)).collect();
    let ignore_merges = tj["model"]["ignore_merges"].as_bool().unwrap_or(false);
    for name in PRE_NAMES {
        let cfg = crate::tokenizer::pretokenize::pre_config(name).expect("a known name");
        let theirs: Vec<String> = cfg.regexes.iter().map(|r| norm(r)).collect();
        if theirs == ours && cfg.ignore_merges == ignore_merges {
            return Ok(name);
        }
    }
    Err(format!(
        "its pre-tokenizer (regexes {ours:?}, ignore_merges {ignore_merges}) matches none of bushu's named \
         pre-tokenizers"
    ))
}
