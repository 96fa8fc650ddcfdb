//! Tokenizers: SentencePiece-style BPE (`llama` GGUF vocabularies, llama2.c `tokenizer.bin`), byte-level BPE
//! (`gpt2` GGUF vocabularies with the pre-tokenizer named by `tokenizer.ggml.pre`), Hugging Face
//! `tokenizer.json` directories (through the `tokenizers` crate), and streaming detokenization.
//!
//! Behaviour follows llama.cpp (`llama-vocab.cpp`): special-token partitioning of the input, BOS/EOS defaults per
//! tokenizer type, the SentencePiece leading space (added when encoding, removed when decoding), control tokens
//! rendering as empty text.

mod bpe;
mod gguf;
mod hf;
mod llama2c;
pub(crate) mod pretokenize;
mod spm;
mod stream;

pub use stream::StreamDecoder;

use crate::formats::gguf::Gguf;
use crate::formats::strlist::{ByteList, StrList};
use anyhow::Result;
use hashbrown::HashTable;
use std::path::Path;
use std::sync::Arc;

/// The type of a vocabulary entry (`tokenizer.ggml.token_type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_ggml(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// The vocabulary shared by every tokenizer kind: token texts, types and their rendered bytes, each table
/// packed into one buffer, and an index from text to id that borrows the texts.
pub(crate) struct Vocab {
    /// Token text as stored in the file (e.g. `▁Hello`, `Ġworld`, `<0x0A>`, `<s>`).
    pub texts: StrList,
    pub types: Vec<TokenType>,
    /// The bytes a token renders to when decoding (empty for control / unknown / unused tokens).
    pub pieces: ByteList,
    /// Token ids hashed by their text (the first id of a text that occurs twice).
    ids: HashTable<u32>,
    hasher: ahash::RandomState,
    /// Tokens matched literally in the input before tokenization (control, user-defined, unknown), longest first.
    pub specials: Vec<u32>,
}

impl Vocab {
    /// The vocabulary of `texts` and `types`, each token's piece being what `render(text, type, out)` appends.
    pub fn new(texts: StrList, types: Vec<TokenType>, render: impl Fn(&str, TokenType, &mut Vec<u8>)) -> Vocab {
        assert_eq!(texts.len(), types.len(), "one type per token text");
        let mut pieces = ByteList::with_capacity(texts.len(), texts.text_len());
        for (t, &ty) in texts.iter().zip(&types) {
            pieces.push_with(|out| render(t, ty, out));
        }
        let hasher = ahash::RandomState::new();
        let mut ids = HashTable::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let hash = hasher.hash_one(t);
            let entry = ids.entry(
                hash,
                |&id| &texts[id as usize] == t,
                |&id| hasher.hash_one(&texts[id as usize]),
            );
            if let hashbrown::hash_table::Entry::Vacant(e) = entry {
                e.insert(i as u32);
            }
        }
        let mut specials: Vec<u32> = (0..texts.len() as u32)
            .filter(|&i| {
                let i = i as usize;
                matches!(
                    types[i],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !texts[i].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()).then(a.cmp(&b)));
        Vocab {
            texts,
            types,
            pieces,
            ids,
            hasher,
            specials,
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// The id of the token whose text is `text`.
    pub fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.ids.find(hash, |&id| &self.texts[id as usize] == text).copied()
    }
}

/// Token texts with each empty one named `[EMPTY_<id>]` (as llama.cpp does: an empty text can be neither
/// matched nor looked up).
pub(crate) fn name_empty<'a>(texts: impl ExactSizeIterator<Item = &'a str>, bytes: usize) -> StrList {
    let mut out = StrList::with_capacity(texts.len(), bytes);
    for (i, t) in texts.enumerate() {
        if t.is_empty() {
            out.push(&format!("[EMPTY_{i}]"));
        } else {
            out.push(t);
        }
    }
    out
}

/// The subword model behind a tokenizer.
pub(crate) enum Model {
    Spm(Box<spm::Spm>),
    Bpe(Box<bpe::Bpe>),
    Hf(Box<tokenizers::Tokenizer>),
}

pub(crate) struct Inner {
    pub vocab: Vocab,
    pub model: Model,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece: encoding prefixes raw text with a space.
    pub add_space_prefix: bool,
    /// Decoding removes one leading space from the first rendered piece.
    pub strip_leading_space: bool,
    pub chat_template: Option<String>,
}

/// A tokenizer: cheap to clone (shared, immutable).
#[derive(Clone)]
pub struct Tokenizer {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner.model {
            Model::Spm(_) => "sentencepiece",
            Model::Bpe(_) => "byte-level-bpe",
            Model::Hf(_) => "tokenizer.json",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("eos_ids", &self.inner.eos_ids)
            .field("add_bos", &self.inner.add_bos)
            .finish()
    }
}

/// Texts of end-of-generation tokens recognised by name (as llama.cpp does) when they are control tokens.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
];

/// A piece of input text: raw text to tokenize, or a special token found in it.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// How two vocabularies differ ([`Tokenizer::vocab_difference`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabDifference {
    Size {
        ours: usize,
        theirs: usize,
    },
    /// The first token whose text or bytes differ, with both texts.
    Token {
        id: u32,
        ours: String,
        theirs: String,
    },
}

impl Tokenizer {
    /// Builds the tokenizer described by the `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        gguf::from_gguf(g)
    }

    /// Loads `dir/tokenizer.json` (and `tokenizer_config.json` when present).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        hf::from_hf_dir(dir)
    }

    /// Loads a llama.2c `tokenizer.bin`.
    pub fn from_llama2c(path: &Path, vocab_size: usize) -> Result<Tokenizer> {
        llama2c::from_llama2c(path, vocab_size)
    }

    pub(crate) fn from_inner(inner: Inner) -> Tokenizer {
        Tokenizer { inner: Arc::new(inner) }
    }

    /// Encodes `text`, recognising special tokens written in it; adds BOS (and EOS) as the file says when
    /// `add_special` is true.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, true)
    }

    /// Encodes `text`. `parse_special`: control tokens written in the text (e.g. `<|im_start|>`, `<s>`) become
    /// their single ids; when false only user-defined tokens are matched and control tokens are tokenized as
    /// plain text (Hugging Face directories always match their added tokens).
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let inner = &*self.inner;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && inner.add_bos {
            if let Some(b) = inner.bos {
                out.push(b);
            }
        }
        match &inner.model {
            Model::Hf(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| anyhow::anyhow!("tokenizer.json encode: {e}"))?;
                out.extend_from_slice(enc.get_ids());
            }
            Model::Spm(m) => {
                let mut prev_special = true;
                for f in self.partition(text, parse_special) {
                    match f {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(s) => {
                            m.encode(&inner.vocab, s, inner.add_space_prefix && prev_special, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
            Model::Bpe(m) => {
                for f in self.partition(text, parse_special) {
                    match f {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(s) => m.encode(&inner.vocab, s, &mut out),
                    }
                }
            }
        }
        if add_special && inner.add_eos {
            if let Some(e) = inner.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Splits `text` at special tokens written in it, longest token first (llama.cpp's partitioning).
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let v = &self.inner.vocab;
        let mut frags = vec![Fragment::Text(text)];
        if text.is_empty() {
            return Vec::new();
        }
        for &id in &v.specials {
            let ty = v.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let pat = &v.texts[id as usize];
            if !frags.iter().any(|f| matches!(f, Fragment::Text(s) if s.contains(pat))) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(s) => {
                        let mut rest = s;
                        while let Some(pos) = rest.find(pat) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[pos + pat.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// Decodes `ids` to text: control tokens render as nothing, and the leading space a SentencePiece encoder
    /// added is removed. Invalid UTF-8 (e.g. half a character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// Like [`decode`](Self::decode) but returns the raw bytes.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        let mut strip = self.inner.strip_leading_space;
        for &id in ids {
            let p = self.id_to_bytes(id);
            if p.is_empty() {
                continue;
            }
            if strip {
                strip = false;
                if p[0] == b' ' {
                    out.extend_from_slice(&p[1..]);
                    continue;
                }
            }
            out.extend_from_slice(p);
        }
        out
    }

    /// Decodes `ids` rendering control tokens as their text (e.g. `<s>`, `<|im_end|>`), without removing a
    /// leading space. Meant for debugging output.
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        let mut out = Vec::new();
        for &id in ids {
            match self.token_type(id) {
                Some(TokenType::Control | TokenType::Unknown) => {
                    out.extend_from_slice(self.inner.vocab.texts[id as usize].as_bytes())
                }
                _ => out.extend_from_slice(self.id_to_bytes(id)),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The raw bytes a token renders to (empty for control tokens and ids out of range). A token may hold
    /// part of a UTF-8 character (byte-fallback and byte-level tokens).
    pub fn id_to_bytes(&self, id: u32) -> &[u8] {
        self.inner.vocab.pieces.get(id as usize).unwrap_or(&[])
    }

    /// Alias of [`id_to_bytes`](Self::id_to_bytes).
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        self.id_to_bytes(id)
    }

    /// The token's text as stored in the vocabulary (e.g. `▁the`, `Ġthe`, `<0x0A>`, `<|im_end|>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.vocab.texts.get(id as usize)
    }

    /// The id of a vocabulary entry given its stored text.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.vocab.id(text)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.inner.vocab.types.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }

    /// Where `other`'s vocabulary first differs from this one (size, then each token's text and
    /// bytes), or `None` when a model of one can read the other's token ids.
    pub fn vocab_difference(&self, other: &Tokenizer) -> Option<VocabDifference> {
        if self.vocab_size() != other.vocab_size() {
            return Some(VocabDifference::Size {
                ours: self.vocab_size(),
                theirs: other.vocab_size(),
            });
        }
        (0..self.vocab_size() as u32)
            .find(|&id| self.token_text(id) != other.token_text(id) || self.id_to_bytes(id) != other.id_to_bytes(id))
            .map(|id| VocabDifference::Token {
                id,
                ours: self.token_text(id).unwrap_or("").to_owned(),
                theirs: other.token_text(id).unwrap_or("").to_owned(),
            })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    /// The EOS token.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// Tokens that end generation: EOS plus the end-of-turn tokens the file names.
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// Whether `encode(.., add_special=true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos && self.inner.bos.is_some()
    }

    /// Whether `encode(.., add_special=true)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.inner.add_eos && self.inner.eos.is_some()
    }

    /// The text of the BOS token (for chat templates' `bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos.and_then(|id| self.token_text(id))
    }

    /// The text of the EOS token (for chat templates' `eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos.and_then(|id| self.token_text(id))
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// A streaming detokenizer for text generated with this tokenizer (see [`StreamDecoder`]).
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self)
    }
}

/// Builds the EOS list: `eos`, the extra ids given, and control tokens whose text names an end of turn.
pub(crate) fn eog_ids(vocab: &Vocab, eos: Option<u32>, extra: &[u32]) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for id in eos.iter().chain(extra) {
        if (*id as usize) < vocab.len() && !ids.contains(id) {
            ids.push(*id);
        }
    }
    for t in EOG_TEXTS {
        if let Some(id) = vocab.id(t) {
            if vocab.types[id as usize] == TokenType::Control && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Parses `<0xXX>` byte-token text.
pub(crate) fn parse_byte_token(t: &str) -> Option<u8> {
    let h = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if h.len() != 2 {
        return None;
    }
    u8::from_str_radix(h, 16).ok()
}

/// Renders a SentencePiece token into `out`: `▁` → space, `<0xXX>` byte tokens → the byte, control/unknown →
/// nothing.
pub(crate) fn spm_piece(text: &str, ty: TokenType, out: &mut Vec<u8>) {
    match ty {
        TokenType::Normal | TokenType::UserDefined => {
            let mut parts = text.split('\u{2581}');
            out.extend_from_slice(parts.next().unwrap_or("").as_bytes());
            for p in parts {
                out.push(b' ');
                out.extend_from_slice(p.as_bytes());
            }
        }
        TokenType::Byte => out.extend(parse_byte_token(text)),
        _ => {}
    }
}
