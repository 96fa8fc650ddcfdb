//! `bushu tokenize` / `detokenize` read only the tokenizer, as `llama-tokenize` does: a vocabulary-only GGUF
//! file (llama.cpp's `ggml-vocab-*.gguf`, no tensors), a GGUF of a family bushu cannot run (architecture
//! `phi3`) and one without `token_embd.weight` all tokenize, with the ids of llama.cpp's own test vectors
//! (`testdata/vocab/*.gguf.out`); the commands that run the model still refuse those files with one line.

mod common;
use bushu::formats::gguf::{Gguf, Value};
use bushu::formats::gguf_writer::GgufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bushu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(args)
        .env("BUSHU_HOME", "/nonexistent-bushu-home")
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The first `n` non-empty cases of llama.cpp's test vectors for `name` (text, ids without BOS).
fn cases(name: &str, n: usize) -> Vec<(String, String)> {
    let dir = common::shared("testdata/vocab");
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    texts
        .iter()
        .zip(out.lines())
        .filter(|(t, ids)| !t.is_empty() && !ids.trim().is_empty())
        .map(|(t, ids)| (t.to_string(), ids.split_whitespace().collect::<Vec<_>>().join(" ")))
        .take(n)
        .collect()
}

/// Checks `bushu tokenize --no-bos` and `bushu detokenize` on `model` against the vectors of `vocab`.
fn check_against_vectors(model: &Path, vocab: &str) {
    let m = model.to_str().unwrap();
    let cs = cases(vocab, 6);
    assert!(cs.len() >= 4, "{vocab}: too few test vectors");
    for (text, want) in cs {
        let got = stdout_ok(&bushu(&["tokenize", "--model", m, "--no-bos", &text]));
        assert_eq!(got.trim_end_matches('\n'), want, "{vocab}: tokenize {text:?}");
        let ids: Vec<&str> = want.split(' ').collect();
        let mut args = vec!["detokenize", "--model", m];
        args.extend(ids.iter().copied());
        let back = stdout_ok(&bushu(&args));
        assert_eq!(back.strip_suffix('\n').unwrap(), text, "{vocab}: detokenize {want}");
    }
}

#[test]
fn vocabulary_only_files() {
    for vocab in ["ggml-vocab-qwen2.gguf", "ggml-vocab-llama-spm.gguf"] {
        let path = common::shared("testdata/vocab").join(vocab);
        // A vocabulary-only file has no tensors: it cannot be run, only tokenized.
        assert!(Gguf::open(&path).unwrap().tensors.is_empty());
        check_against_vectors(&path, vocab);
    }
    // With BOS: the SentencePiece vocabulary adds <s> = 1 (llama.cpp's add_bos default for 'llama').
    let spm = common::shared("testdata/vocab/ggml-vocab-llama-spm.gguf");
    let got = stdout_ok(&bushu(&["tokenize", "--model", spm.to_str().unwrap(), "Hello world"]));
    assert_eq!(got.trim(), "1 15043 3186");
}

/// `vocab`'s metadata rewritten: `general.architecture` set to `arch`, with `tensors` (name, F32 values).
fn crafted(dir: &Path, vocab: &str, arch: &str, tensors: &[(&str, usize)]) -> PathBuf {
    let g = Gguf::open(&common::shared("testdata/vocab").join(vocab)).unwrap();
    let mut w = GgufWriter::new();
    w.metadata = g.metadata.clone().into_iter().collect();
    w.set("general.architecture", Value::String(arch.into()));
    for (name, n) in tensors {
        w.add_f32(name, vec![*n], &vec![1.0; *n]);
    }
    let path = dir.join(format!("{arch}-{}.gguf", tensors.len()));
    w.write(&path).unwrap();
    path
}

#[test]
fn unsupported_family_and_missing_embeddings() {
    let tmp = common::TempDir::new("tokenize-crafted");
    // A family bushu does not run.
    let phi3 = crafted(
        &tmp.0,
        "ggml-vocab-llama-spm.gguf",
        "phi3",
        &[("output_norm.weight", 8)],
    );
    check_against_vectors(&phi3, "ggml-vocab-llama-spm.gguf");
    let out = bushu(&["run", "--model", phi3.to_str().unwrap(), "-p", "hi", "-n", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("phi3"), "{err}");
    // A supported family without token_embd.weight.
    let no_embd = crafted(&tmp.0, "ggml-vocab-qwen2.gguf", "qwen2", &[("output_norm.weight", 8)]);
    check_against_vectors(&no_embd, "ggml-vocab-qwen2.gguf");
    let out = bushu(&["info", "--model", no_embd.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token_embd.weight"), "{err}");
}

#[test]
fn not_a_tokenizer() {
    let tmp = common::TempDir::new("tokenize-bad");
    // GGUF without tokenizer metadata: one clear line.
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    let p = tmp.0.join("empty.gguf");
    w.write(&p).unwrap();
    let out = bushu(&["tokenize", "--model", p.to_str().unwrap(), "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("tokenizer"), "{err}");
}
