//! Streaming detokenization yields exactly `decode`, never half a character.

use bushu::formats::gguf::Gguf;
use bushu::tokenizer::{StreamDecoder, Tokenizer};
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::from_gguf(&Gguf::open(&shared().join("testdata/vocab").join(name)).unwrap()).unwrap()
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = StreamDecoder::new(tok);
    let mut chunks: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
    chunks.push(d.flush());
    chunks
}

const TEXTS: &[&str] = &[
    "нещо на български",
    "Hello 🦙 world 😀👍🏽 ok",
    " leading space, then 🚀🚀",
    "🚀 first",
    "中文测试，日本語のテキスト",
    "\n\n tabs\tand\r\nnewlines ❤️",
    "a",
];

#[test]
fn stream_equals_decode() {
    for name in [
        "ggml-vocab-llama-spm.gguf",
        "ggml-vocab-llama-bpe.gguf",
        "ggml-vocab-qwen2.gguf",
        "ggml-vocab-gpt-2.gguf",
    ] {
        let tok = load(name);
        for text in TEXTS {
            for add_special in [false, true] {
                let ids = tok.encode(text, add_special).unwrap();
                let chunks = stream(&tok, &ids);
                for c in &chunks {
                    assert!(
                        !c.contains('\u{FFFD}'),
                        "{name} {text:?}: chunk {c:?} has a replacement character"
                    );
                }
                let joined: String = chunks.concat();
                assert_eq!(joined, tok.decode(&ids), "{name} {text:?}");
                assert_eq!(joined, *text, "{name} {text:?}");
            }
        }
    }
}

/// In the SentencePiece vocabulary, Cyrillic and emoji come as byte-fallback tokens: the decoder must hold
/// partial characters back.
#[test]
fn byte_fallback_is_held_back() {
    let tok = load("ggml-vocab-llama-spm.gguf");
    let ids = tok.encode("🦙", false).unwrap();
    let bytes: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| tok.token_text(id).unwrap().starts_with("<0x"))
        .collect();
    assert_eq!(bytes.len(), 4, "🦙 is four byte tokens: {ids:?}");
    let mut d = StreamDecoder::new(&tok);
    let mut out = Vec::new();
    for &id in &ids {
        out.push(d.push(id));
    }
    assert_eq!(out.iter().filter(|c| !c.is_empty()).count(), 1);
    assert_eq!(out.concat(), "🦙");
    assert_eq!(d.flush(), "");
}

/// A continuation decoder keeps the space of the first generated piece.
#[test]
fn continuation_keeps_space() {
    let tok = load("ggml-vocab-llama-spm.gguf");
    let ids = tok.encode("Once upon a time", false).unwrap();
    let mut d = StreamDecoder::continuation(&tok);
    let s: String = ids[1..].iter().map(|&id| d.push(id)).collect();
    assert_eq!(s, " upon a time");
    // An incomplete character at the end is rendered as decode renders it.
    let mut d = StreamDecoder::new(&tok);
    let ids = tok.encode("é", false).unwrap();
    let cut = &ids[..ids.len() - 1];
    let s: String = cut.iter().map(|&id| d.push(id)).collect::<String>() + &d.flush();
    assert_eq!(s, tok.decode(cut));
}

#[test]
fn shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<Tokenizer>();
    fn assert_send<T: Send>() {}
    assert_send::<StreamDecoder>();
}
