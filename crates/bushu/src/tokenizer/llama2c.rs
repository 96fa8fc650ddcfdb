//! llama2.c `tokenizer.bin`: `i32 max_token_length`, then for each token `f32 score, i32 len, len bytes`.
//! The vocabulary is a SentencePiece one exported with `▁` written as a space and BOS/EOS as `\n<s>\n` /
//! `\n</s>\n`; tokens are merged by score like any SentencePiece BPE vocabulary.

use super::spm::Spm;
use super::{eog_ids, parse_byte_token, spm_piece, Inner, Model, TokenType, Tokenizer, Vocab};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub(crate) fn from_llama2c(path: &Path, vocab_size: usize) -> Result<Tokenizer> {
    let data = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse(&data, vocab_size).with_context(|| format!("{}: not a llama2.c tokenizer.bin", path.display()))
}

fn parse(data: &[u8], vocab_size: usize) -> Result<Tokenizer> {
    if vocab_size == 0 {
        bail!("vocab_size is 0");
    }
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        if data.len() - pos < n {
            bail!("truncated at byte {pos} (needed {n} more, file has {})", data.len());
        }
        pos += n;
        Ok(&data[pos - n..pos])
    };
    let max_len = i32::from_le_bytes(take(4)?.try_into().unwrap());
    if max_len <= 0 {
        bail!("max_token_length {max_len} is not positive");
    }
    let mut texts = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        let score = f32::from_le_bytes(take(4)?.try_into().unwrap());
        let len = i32::from_le_bytes(take(4)?.try_into().unwrap());
        if len < 0 || len > max_len.max(64) * 4 {
            bail!("token {i}: length {len} (max_token_length {max_len})");
        }
        let bytes = take(len as usize)?;
        texts.push(String::from_utf8_lossy(bytes).into_owned());
        scores.push(score);
    }
    let mut types = vec![TokenType::Normal; vocab_size];
    for (i, t) in texts.iter_mut().enumerate() {
        let trimmed = t.trim_matches('\n');
        if i == 0 || trimmed == "<unk>" {
            types[i] = TokenType::Unknown;
            *t = trimmed.to_owned();
        } else if (i == 1 || i == 2) && (trimmed == "<s>" || trimmed == "</s>") {
            types[i] = TokenType::Control;
            *t = trimmed.to_owned();
        } else if parse_byte_token(t).is_some() {
            types[i] = TokenType::Byte;
        } else {
            *t = t.replace(' ', "\u{2581}");
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
    }
    let vocab = Vocab::new(texts.iter().collect(), types, spm_piece);
    let bos = (vocab_size > 1).then_some(1);
    let eos = (vocab_size > 2).then_some(2);
    let spm = Spm::new(&vocab, scores, Some(0));
    let eos_ids = eog_ids(&vocab, eos, &[]);
    Ok(Tokenizer::from_inner(Inner {
        vocab,
        model: Model::Spm(Box::new(spm)),
        bos,
        eos,
        eos_ids,
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
        strip_leading_space: true,
        chat_template: None,
    }))
}
