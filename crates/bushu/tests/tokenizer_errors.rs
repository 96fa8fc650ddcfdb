//! Malformed vocabularies give clear errors; llama2.c tokenizer.bin loads and agrees with GGUF.

mod common;
use bushu::formats::gguf::{Gguf, Value};
use bushu::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn gguf(kv: Vec<(&str, Value)>) -> Gguf {
    let metadata: BTreeMap<String, Value> = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Gguf {
        version: 3,
        metadata,
        tensors: Vec::new(),
    }
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String((*s).to_owned())).collect())
}

fn err(g: &Gguf) -> String {
    match Tokenizer::from_gguf(g) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn malformed_vocabularies() {
    let model = |m: &str| ("tokenizer.ggml.model", Value::String(m.to_owned()));
    let e = err(&gguf(vec![model("llama")]));
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = err(&gguf(vec![
        model("gpt2"),
        ("tokenizer.ggml.tokens", strs(&["a", "b", "ab"])),
    ]));
    assert!(e.contains("merges"), "{e}");
    let e = err(&gguf(vec![
        model("gpt2"),
        ("tokenizer.ggml.pre", Value::String("xyz".into())),
        ("tokenizer.ggml.tokens", strs(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strs(&["a b"])),
    ]));
    assert!(e.contains("unknown pre-tokenizer 'xyz' in tokenizer.ggml.pre"), "{e}");
    let e = err(&gguf(vec![
        model("wordpiece-ish"),
        ("tokenizer.ggml.tokens", strs(&["a"])),
    ]));
    assert!(e.contains("wordpiece-ish"), "{e}");
    let e = err(&gguf(vec![]));
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    let e = err(&gguf(vec![
        model("llama"),
        ("tokenizer.ggml.tokens", strs(&["a", "b"])),
        ("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)])),
    ]));
    assert!(e.contains("scores"), "{e}");
    // A tiny valid gpt2 vocabulary works.
    let g = gguf(vec![
        model("gpt2"),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strs(&["a", "b", "ab", "Ġ", "Ġab"])),
        ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab"])),
    ]);
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(t.encode("ab ab", false).unwrap(), vec![2, 4]);
    assert_eq!(t.decode(&[2, 4]), "ab ab");
}

/// Every pre-tokenizer name the brief lists is known and its regexes compile.
#[test]
fn all_pre_tokenizers_compile() {
    for pre in [
        "default",
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "deepseek-llm",
        "deepseek-coder",
        "falcon",
        "starcoder",
        "smollm",
        "refact",
        "command-r",
        "olmo",
        "dbrx",
        "smaug-bpe",
        "poro-chat",
        "jais",
        "tekken",
        "gpt-4o",
        "mpt",
        "stablelm2",
        "bloom",
        "chatglm-bpe",
        "viking",
        "codeshell",
        "exaone",
        "minerva-7b",
        "deepseek-v3",
        "chameleon",
        "seed-coder",
        "bailingmoe",
    ] {
        let g = gguf(vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strs(&["a", "b", "ab", "Ġ", "1", "Hello"])),
            ("tokenizer.ggml.merges", strs(&["a b"])),
        ]);
        let t = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{pre}: {e:#}"));
        let ids = t.encode("ab 1 Hello, ab's 123 ab\n", false).unwrap();
        assert!(!ids.is_empty(), "{pre}");
    }
}

/// A llama2.c tokenizer.bin written from the Shakespeare vocabulary encodes like the GGUF.
#[test]
fn llama2c_tokenizer_bin() {
    let gp = shared().join("models/shakespeare/shakespeare-expert-f16.gguf");
    let g = Gguf::open(&gp).unwrap();
    let tokens = g.get_strings("tokenizer.ggml.tokens").unwrap();
    let scores = g.get_f32s("tokenizer.ggml.scores").unwrap();
    let mut bin = Vec::new();
    let max_len = tokens.iter().map(|t| t.len()).max().unwrap() as i32;
    bin.extend_from_slice(&max_len.to_le_bytes());
    for (i, (t, s)) in tokens.iter().zip(&scores).enumerate() {
        let text = match i {
            1 => "\n<s>\n".to_owned(),
            2 => "\n</s>\n".to_owned(),
            _ => t.replace('\u{2581}', " "),
        };
        bin.extend_from_slice(&s.to_le_bytes());
        bin.extend_from_slice(&(text.len() as i32).to_le_bytes());
        bin.extend_from_slice(text.as_bytes());
    }
    let dir = common::TempDir::new("tok-llama2c-bin");
    let path = dir.0.join("tokenizer.bin");
    std::fs::write(&path, &bin).unwrap();
    let l2 = Tokenizer::from_llama2c(&path, tokens.len()).unwrap();
    let gg = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(l2.vocab_size(), gg.vocab_size());
    assert_eq!(l2.bos_id(), Some(1));
    assert_eq!(l2.eos_ids(), &[2]);
    let val = std::fs::read_to_string(shared().join("testdata/shakespeare/val.txt")).unwrap();
    for line in val.lines().take(50).chain(["  two spaces, ünïcødé 🙂", ""]) {
        let a = l2.encode(line, true).unwrap();
        assert_eq!(a, gg.encode(line, true).unwrap(), "{line:?}");
        assert_eq!(l2.decode(&a), line);
    }
    // Truncated file and wrong vocab size are errors.
    std::fs::write(&path, &bin[..bin.len() / 2]).unwrap();
    let e = format!("{:#}", Tokenizer::from_llama2c(&path, tokens.len()).err().unwrap());
    assert!(e.contains("truncated"), "{e}");
}
