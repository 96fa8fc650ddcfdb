//! The model's vocabulary as llguidance sees it: a [`TokTrie`] of every token's bytes, built from the
//! bushu [`Tokenizer`] (GGUF, Hugging Face or llama2.c alike), and the [`TokenizerEnv`] that tokenizes
//! the bytes a grammar forces.
//!
//! A token's bytes are what it renders to when decoding ([`Tokenizer::id_to_bytes`]): a byte-level BPE
//! token (`Ġworld`) is ` world`, a SentencePiece piece (`▁the`) is ` the`, a byte-fallback token
//! (`<0x0A>`) is the one byte it stands for. Control and unknown tokens (`<|im_end|>`, `</s>`) render as
//! nothing; they enter the trie as llguidance's special tokens, `0xFF` followed by their text, which no
//! grammar over text can produce. Ids past the tokenizer's vocabulary (a model's padded output rows) get
//! no bytes and are never allowed.

use crate::tokenizer::{TokenType, Tokenizer};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// The bytes of each of the `n_vocab` token ids, as described in the module documentation.
pub fn token_bytes(tok: &Tokenizer, n_vocab: usize) -> Vec<Vec<u8>> {
    (0..n_vocab as u32)
        .map(|id| {
            let piece = tok.id_to_bytes(id);
            match tok.token_type(id) {
                None | Some(TokenType::Unused) => Vec::new(),
                _ if !piece.is_empty() => piece.to_vec(),
                _ => match tok.token_text(id) {
                    Some(text) if !text.is_empty() => {
                        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                        b.extend_from_slice(text.as_bytes());
                        b
                    }
                    _ => Vec::new(),
                },
            }
        })
        .collect()
}

/// For each of the `n_vocab` ids, the token to draft in its place: a byte-fallback token (`<0x22>`)
/// whose byte is also an ordinary piece (`"`) maps to that piece, every other token to itself. A
/// SentencePiece model writes a character with its piece, never with the byte token (the byte tokens
/// are for characters the vocabulary lacks), so drafts split from forced bytes use the piece.
pub fn byte_aliases(tok: &Tokenizer, n_vocab: usize) -> Vec<u32> {
    let mut piece_of_byte = [None; 256];
    for id in 0..n_vocab as u32 {
        if let (Some(TokenType::Normal), [b]) = (tok.token_type(id), tok.id_to_bytes(id)) {
            piece_of_byte[*b as usize].get_or_insert(id);
        }
    }
    (0..n_vocab as u32)
        .map(|id| match (tok.token_type(id), tok.id_to_bytes(id)) {
            (Some(TokenType::Byte), [b]) => piece_of_byte[*b as usize].unwrap_or(id),
            _ => id,
        })
        .collect()
}

/// A [`TokenizerEnv`] over a bushu tokenizer.
struct Env {
    tok: Tokenizer,
    trie: TokTrie,
    canonical: bool,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        if !self.canonical {
            return self.trie.greedy_tokenize(s);
        }
        // Valid UTF-8 goes through the model's own tokenizer (special tokens written in the text stay
        // text); anything else falls back to the trie's greedy tokenization.
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode_with(text, false, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// The llguidance environment of a model: its trie over `n_vocab` ids (the model's output rows, at least
/// the tokenizer's vocabulary) with `eos_ids` as the tokens that end a grammar.
pub fn token_env(tok: &Tokenizer, n_vocab: usize, eos_ids: &[u32]) -> anyhow::Result<TokEnv> {
    let n_vocab = n_vocab.max(tok.vocab_size());
    let mut eos: Vec<u32> = eos_ids.iter().copied().filter(|&e| (e as usize) < n_vocab).collect();
    if let Some(e) = tok.eos_id() {
        if !eos.contains(&e) && (e as usize) < n_vocab {
            eos.push(e);
        }
    }
    if eos.is_empty() {
        anyhow::bail!("the model names no end-of-sequence token: a grammar could never end");
    }
    let mut info = TokRxInfo::new(n_vocab as u32, eos[0]);
    info.tok_bos = tok.bos_id();
    let trie = TokTrie::from(&info, &token_bytes(tok, n_vocab)).with_eos_tokens(&eos);
    // The model's tokenizer gives the canonical tokenization of a text in the middle of an output
    // only when it adds nothing of its own: SentencePiece prefixes a space to the text it encodes (and
    // a tokenizer.json may), so only byte-level BPE vocabularies count as canonical.
    let canonical = matches!(tok.inner.model, crate::tokenizer::Model::Bpe(_));
    Ok(std::sync::Arc::new(Env {
        tok: tok.clone(),
        trie,
        canonical,
    }))
}
