//! Hugging Face tokenizer directories: `tokenizer.json` (encoded with the `tokenizers` crate) plus
//! `tokenizer_config.json` for `add_bos_token` / `add_eos_token`, `bos_token`, `eos_token` and `chat_template`.

use super::bpe::{byte_level_decode, char_to_byte_map};
use super::{eog_ids, name_empty, parse_byte_token, spm_piece, Inner, Model, TokenType, Tokenizer, Vocab};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// How token texts map to bytes when decoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// GPT-2 byte-level (`Ġ` for space).
    ByteLevel,
    /// SentencePiece (`▁` for space, `<0xXX>` byte fallback).
    Spm,
    /// Token texts are the text.
    Raw,
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template`: a string, or a list of `{name, template}` (the one named "default", else the first).
pub(crate) fn chat_template_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |n: &str| list.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(n));
            named("default")
                .or_else(|| list.first())
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        }
        _ => None,
    }
}

fn contains_type(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(o) => {
            o.get("type").and_then(Value::as_str) == Some(ty) || o.values().any(|x| contains_type(x, ty))
        }
        Value::Array(a) => a.iter().any(|x| contains_type(x, ty)),
        _ => false,
    }
}

/// Whether the tokenizer puts a `▁` before the text (so decoding removes one leading space).
fn prepends_space(json: &Value) -> bool {
    fn metaspace_prepends(v: &Value) -> bool {
        match v {
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("Metaspace") => {
                match o.get("prepend_scheme").and_then(Value::as_str) {
                    Some(s) => s != "never",
                    None => o.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("Prepend") => {
                o.get("prepend").and_then(Value::as_str) == Some("\u{2581}")
            }
            Value::Object(o) => o.values().any(metaspace_prepends),
            Value::Array(a) => a.iter().any(metaspace_prepends),
            _ => false,
        }
    }
    metaspace_prepends(&json["pre_tokenizer"]) || metaspace_prepends(&json["normalizer"])
}

/// What the `tokenizers` library assumes of a BPE model without checking (it slices the second token of
/// each merge past `continuing_subword_prefix`, and panics when that token is shorter; found by
/// `tests/fuzz.rs`): every merge's second token is at least the prefix long, at a character boundary.
fn check_merges(model: &Value) -> Result<()> {
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    if prefix.is_empty() {
        return Ok(());
    }
    for (i, m) in model["merges"].as_array().into_iter().flatten().enumerate() {
        let second = match m {
            Value::String(s) => s.split_once(' ').map(|(_, b)| b),
            Value::Array(a) => a.get(1).and_then(Value::as_str),
            _ => None,
        };
        if let Some(b) = second.filter(|b| !b.is_char_boundary(prefix.len())) {
            bail!(
                "merge {i}: token {:?} is shorter than the continuing_subword_prefix {:?}",
                b,
                prefix
            );
        }
    }
    Ok(())
}

/// Another assumption of the `tokenizers` library that it does not check when it reads a file (found by
/// `tests/fuzz.rs`; it panics with "no entry found for key" when encoding): every special token a
/// `TemplateProcessing` post-processor places is one of its `special_tokens` (also inside a `Sequence`
/// of processors).
fn check_post_processor(p: &Value) -> Result<()> {
    match p["type"].as_str() {
        Some("Sequence") => {
            for q in p["processors"].as_array().into_iter().flatten() {
                check_post_processor(q)?;
            }
        }
        Some("TemplateProcessing") => {
            let known = p["special_tokens"].as_object();
            for piece in ["single", "pair"]
                .iter()
                .flat_map(|k| p[*k].as_array().into_iter().flatten())
            {
                if let Some(id) = piece["SpecialToken"]["id"].as_str() {
                    if !known.is_some_and(|k| k.contains_key(id)) {
                        bail!("post_processor: the template places the special token {id:?}, which its special_tokens do not define");
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    if json.get("model").is_none() {
        bail!(
            "{}: no \"model\" section (not a tokenizers tokenizer.json)",
            path.display()
        );
    }
    check_merges(&json["model"]).with_context(|| format!("{}", path.display()))?;
    check_post_processor(&json["post_processor"]).with_context(|| format!("{}", path.display()))?;
    let mut tk: tokenizers::Tokenizer = text.parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    tk.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
    tk.with_padding(None);

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Value = match std::fs::read_to_string(&cfg_path) {
        Ok(s) => serde_json::from_str(&s).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?,
        Err(_) => Value::Null,
    };

    // Vocabulary (model entries and added tokens).
    let map = tk.get_vocab(true);
    let n = map
        .values()
        .map(|&id| id as usize + 1)
        .max()
        .context("tokenizer.json has an empty vocabulary")?;
    let mut by_id = vec![""; n];
    for (t, &id) in &map {
        by_id[id as usize] = t;
    }
    let texts = name_empty(by_id.into_iter(), map.keys().map(String::len).sum());
    let added = tk.get_added_tokens_decoder();
    let style = if contains_type(&json["decoder"], "ByteLevel") || contains_type(&json["pre_tokenizer"], "ByteLevel") {
        Style::ByteLevel
    } else if contains_type(&json["decoder"], "ByteFallback")
        || contains_type(&json["decoder"], "Metaspace")
        || contains_type(&json["pre_tokenizer"], "Metaspace")
        || json["model"]["byte_fallback"].as_bool() == Some(true)
    {
        Style::Spm
    } else {
        Style::Raw
    };
    let types: Vec<TokenType> = (0..n as u32)
        .map(|id| match added.get(&id) {
            Some(a) if a.special => TokenType::Control,
            Some(_) => TokenType::UserDefined,
            None if style == Style::Spm && parse_byte_token(&texts[id as usize]).is_some() => TokenType::Byte,
            None => TokenType::Normal,
        })
        .collect();
    let byte_map = char_to_byte_map();
    let vocab = Vocab::new(texts, types, |t, ty, out| match (style, ty) {
        (_, TokenType::Control | TokenType::Unknown | TokenType::Unused) => {}
        (_, TokenType::UserDefined) => out.extend_from_slice(t.as_bytes()),
        (Style::ByteLevel, _) => byte_level_decode(t, &byte_map, out),
        (Style::Spm, ty) => spm_piece(t, ty, out),
        (Style::Raw, _) => out.extend_from_slice(t.as_bytes()),
    });

    let id_of = |key: &str| -> Result<Option<u32>> {
        match token_content(cfg.get(key)) {
            None => Ok(None),
            Some(t) => match vocab.id(&t) {
                Some(id) => Ok(Some(id)),
                None => bail!("{}: {key} {t:?} is not in the vocabulary", cfg_path.display()),
            },
        }
    };
    let bos = id_of("bos_token")?;
    let eos = id_of("eos_token")?;
    // What the post-processor adds, for when the config does not say.
    let probe = tk.encode("", true).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let probe = probe.get_ids();
    let add_bos = match cfg.get("add_bos_token").and_then(Value::as_bool) {
        Some(b) => b,
        None => bos.is_some() && probe.first().copied() == bos,
    };
    let add_eos = match cfg.get("add_eos_token").and_then(Value::as_bool) {
        Some(b) => b,
        None => eos.is_some() && probe.len() > add_bos as usize && probe.last().copied() == eos,
    };
    let mut chat_template = chat_template_of(cfg.get("chat_template"));
    if chat_template.is_none() {
        chat_template = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
    }
    let eos_ids = eog_ids(&vocab, eos, &[]);
    let strip_leading_space = style == Style::Spm && prepends_space(&json);
    Ok(Tokenizer::from_inner(Inner {
        vocab,
        model: Model::Hf(Box::new(tk)),
        bos,
        eos,
        eos_ids,
        add_bos,
        add_eos,
        add_space_prefix: strip_leading_space,
        strip_leading_space,
        chat_template,
    }))
}
