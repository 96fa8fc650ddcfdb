//! The Hugging Face directory and the GGUF conversion of the same Shakespeare tokenizer agree.

mod common;
use bushu::formats::gguf::Gguf;
use bushu::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[test]
fn hf_dir_matches_gguf() {
    let m = shared().join("models/shakespeare");
    let hf = Tokenizer::from_hf_dir(&m.join("shakespeare-expert-hf")).unwrap();
    let gg = Tokenizer::from_gguf(&Gguf::open(&m.join("shakespeare-expert-f16.gguf")).unwrap()).unwrap();
    assert_eq!(hf.vocab_size(), gg.vocab_size());
    assert_eq!(hf.bos_id(), Some(1));
    assert_eq!(hf.eos_ids(), &[2]);
    assert_eq!(hf.bos_id(), gg.bos_id());
    assert_eq!(hf.eos_ids(), gg.eos_ids());
    let val = std::fs::read_to_string(shared().join("testdata/shakespeare/val.txt")).unwrap();
    let mut n = 0;
    for line in val.lines().take(50) {
        let a = hf.encode(line, true).unwrap();
        let b = gg.encode(line, true).unwrap();
        assert_eq!(a, b, "line {line:?}");
        assert_eq!(a[0], 1, "BOS first");
        assert_eq!(hf.decode(&a), line);
        assert_eq!(gg.decode(&b), line);
        n += 1;
    }
    // Multi-line text, byte fallback and a special token written in the text.
    let text: String = val.lines().take(50).collect::<Vec<_>>().join("\n") + " — ünïcødé 🙂</s>";
    let a = hf.encode(&text, true).unwrap();
    assert_eq!(a, gg.encode(&text, true).unwrap());
    assert_eq!(*a.last().unwrap(), 2);
    assert_eq!(hf.decode(&a), gg.decode(&a));
    eprintln!("{n} lines + 1 block identical ({} tokens)", a.len());
}

#[test]
fn hf_config_variants() {
    use std::fs;
    let src = shared().join("models/shakespeare/shakespeare-expert-hf");
    let dir = common::TempDir::new("tok-hf-config-variants");
    fs::copy(src.join("tokenizer.json"), dir.0.join("tokenizer.json")).unwrap();
    fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"add_bos_token": false, "add_eos_token": true, "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": {"content": "</s>"},
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    let t = Tokenizer::from_hf_dir(&dir.0).unwrap();
    assert_eq!(t.chat_template(), Some("D"));
    let ids = t.encode("Hello", true).unwrap();
    assert_ne!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(t.eos_ids(), &[2]);
    fs::write(
        dir.0.join("tokenizer_config.json"),
        r#"{"chat_template": "{{ bos_token }}", "eos_token": "</s>"}"#,
    )
    .unwrap();
    let t = Tokenizer::from_hf_dir(&dir.0).unwrap();
    assert_eq!(t.chat_template(), Some("{{ bos_token }}"));
    assert_eq!(t.bos_id(), None);
    // No tokenizer_config.json: nothing but the vocabulary.
    fs::remove_file(dir.0.join("tokenizer_config.json")).unwrap();
    let t = Tokenizer::from_hf_dir(&dir.0).unwrap();
    assert_eq!(t.chat_template(), None);
    assert!(Tokenizer::from_hf_dir(&dir.0.join("nope")).is_err());
}
