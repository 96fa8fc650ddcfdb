//! Building a tokenizer from GGUF `tokenizer.ggml.*` metadata.

use super::bpe::{byte_level_decode, char_to_byte_map, Bpe};
use super::pretokenize::{pre_config, PreTokenizer};
use super::spm::Spm;
use super::{eog_ids, name_empty, spm_piece, Inner, Model, TokenType, Tokenizer, Vocab};
use crate::formats::gguf::Gguf;
use anyhow::{bail, Context, Result};

fn get_bool(g: &Gguf, key: &str) -> Option<bool> {
    g.get(key).and_then(|v| v.as_bool())
}

/// A token id named by `key`, if present and within the vocabulary.
fn get_id(g: &Gguf, key: &str, n: usize) -> Option<u32> {
    let v = g.get_i64(key)?;
    (v >= 0 && (v as usize) < n).then_some(v as u32)
}

pub(crate) fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
    let model = g
        .get_str("tokenizer.ggml.model")
        .context("GGUF has no tokenizer.ggml.model (no tokenizer in this file)")?;
    let tokens = match g.get("tokenizer.ggml.tokens") {
        None => bail!("GGUF has no tokenizer.ggml.tokens (the vocabulary is missing)"),
        Some(_) => g
            .get_strings("tokenizer.ggml.tokens")
            .context("tokenizer.ggml.tokens is not an array of strings")?,
    };
    let n = tokens.len();
    if n == 0 {
        bail!("tokenizer.ggml.tokens is empty");
    }
    let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type") {
        None => vec![TokenType::Normal; n],
        Some(_) => {
            let t = g
                .get_i64s("tokenizer.ggml.token_type")
                .context("tokenizer.ggml.token_type is not an integer array")?;
            if t.len() != n {
                bail!(
                    "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                    t.len()
                );
            }
            t.into_iter().map(TokenType::from_ggml).collect()
        }
    };
    let texts = name_empty(tokens.iter(), tokens.text_len());
    let chat_template = g.get_str("tokenizer.chat_template").map(str::to_owned);
    let add_eos = get_bool(g, "tokenizer.ggml.add_eos_token").unwrap_or(false);
    let extra_eog: Vec<u32> = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .iter()
        .filter_map(|k| get_id(g, k, n))
        .collect();

    match model {
        "llama" => {
            let scores = match g.get("tokenizer.ggml.scores") {
                None => vec![0.0; n],
                Some(_) => {
                    let s = g
                        .get_f32s("tokenizer.ggml.scores")
                        .context("tokenizer.ggml.scores is not a number array")?;
                    if s.len() != n {
                        bail!(
                            "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                            s.len()
                        );
                    }
                    s
                }
            };
            let vocab = Vocab::new(texts, types, spm_piece);
            let bos = get_id(g, "tokenizer.ggml.bos_token_id", n).or((n > 1).then_some(1));
            let eos = get_id(g, "tokenizer.ggml.eos_token_id", n).or((n > 2).then_some(2));
            let unk = get_id(g, "tokenizer.ggml.unknown_token_id", n).or(Some(0));
            let add_space_prefix = get_bool(g, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let spm = Spm::new(&vocab, scores, unk);
            let eos_ids = eog_ids(&vocab, eos, &extra_eog);
            Ok(Tokenizer::from_inner(Inner {
                vocab,
                model: Model::Spm(Box::new(spm)),
                bos,
                eos,
                eos_ids,
                add_bos: get_bool(g, "tokenizer.ggml.add_bos_token").unwrap_or(true),
                add_eos,
                add_space_prefix,
                strip_leading_space: add_space_prefix,
                chat_template,
            }))
        }
        "gpt2" => {
            // A missing key is what old converters wrote; llama.cpp treats it as "default". A present but
            // unknown value is an error: silently using another regex would tokenize differently.
            let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let Some(pre) = pre_config(pre_name) else {
                bail!("unknown pre-tokenizer '{pre_name}' in tokenizer.ggml.pre");
            };
            let merges = match g.get("tokenizer.ggml.merges") {
                None => bail!("GGUF tokenizer.ggml.model is 'gpt2' but tokenizer.ggml.merges is missing"),
                Some(_) => g
                    .get_strings("tokenizer.ggml.merges")
                    .context("tokenizer.ggml.merges is not an array of strings")?,
            };
            let map = char_to_byte_map();
            let vocab = Vocab::new(texts, types, |t, ty, out| match ty {
                TokenType::Normal => byte_level_decode(t, &map, out),
                TokenType::UserDefined => out.extend_from_slice(t.as_bytes()),
                _ => {}
            });
            let pretok = PreTokenizer::new(&pre.regexes)?;
            let bpe = Bpe::new(&vocab, merges.iter(), pretok, pre.ignore_merges)?;
            let default_special = if n > 11 { Some(11) } else { None };
            let bos = match get_id(g, "tokenizer.ggml.bos_token_id", n) {
                Some(b) => Some(b),
                None if pre.no_bos => None,
                None => default_special,
            };
            let eos = get_id(g, "tokenizer.ggml.eos_token_id", n).or(default_special);
            let eos_ids = eog_ids(&vocab, eos, &extra_eog);
            Ok(Tokenizer::from_inner(Inner {
                vocab,
                model: Model::Bpe(Box::new(bpe)),
                bos,
                eos,
                eos_ids,
                add_bos: get_bool(g, "tokenizer.ggml.add_bos_token").unwrap_or(pre.add_bos),
                add_eos,
                add_space_prefix: false,
                strip_leading_space: false,
                chat_template,
            }))
        }
        other => bail!("unsupported tokenizer model '{other}' in tokenizer.ggml.model (supported: llama, gpt2)"),
    }
}
