//! Bad input gives one clear line on stderr and a non-zero exit, never a panic.

mod common;
use bushu::formats::gguf::Value;
use common::{shared, tiny_llama_gguf};
use std::path::Path;
use std::process::Command;

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must fail with one error line containing `expect`.
fn fails(args: &[&str], expect: &str) {
    let (code, _, err) = bushu(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains(expect)),
        "{args:?}: expected {expect:?} in {err:?}"
    );
    assert!(lines.len() <= 3, "{args:?}: error is not short: {err}");
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn missing_model_file() {
    fails(
        &["run", "--model", "/nonexistent/model.gguf", "--prompt", "hi"],
        "does not exist",
    );
}

#[test]
fn truncated_gguf() {
    let dir = common::TempDir::new("cli-errors-truncated_gguf");
    let full = std::fs::read(shared("models/tiny-llama-f16.gguf")).unwrap();
    for cut in [3usize, 100, 600_000, full.len() - 1000] {
        let p = write(&dir.0.join(format!("trunc-{cut}.gguf")), &full[..cut]);
        fails(&["run", "--model", &p, "--prompt", "hi"], "truncated");
    }
}

#[test]
fn garbage_file() {
    let dir = common::TempDir::new("cli-errors-garbage_file");
    let p = write(
        &dir.0.join("garbage.bin"),
        b"this is not a model at all, just some text",
    );
    let (code, _, err) = bushu(&["info", "--model", &p]);
    assert_ne!(code, 0);
    assert!(err.starts_with("error:") && !err.contains("panicked"), "{err}");
}

#[test]
fn unsupported_architecture() {
    let dir = common::TempDir::new("cli-errors-unsupported_architecture");
    let mut w = tiny_llama_gguf();
    w.set("general.architecture", Value::String("falcon".into()));
    let p = write(&dir.0.join("falcon.gguf"), &w.to_bytes());
    fails(
        &["run", "--model", &p, "--prompt", "hi"],
        "architecture 'falcon' is not supported",
    );
}

#[test]
fn unsupported_tensor_type() {
    let dir = common::TempDir::new("cli-errors-unsupported_tensor_type");
    let w = tiny_llama_gguf();
    let mut bytes = w.to_bytes();
    // Retype the first tensor (token_embd, F32 = 0) as IQ2_XXS (16): find its info record.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|s| s == name).unwrap() + name.len();
    let type_at = at + 4 + 2 * 8; // n_dims (u32) + two u64 dims
    assert_eq!(bytes[type_at..type_at + 4], 0u32.to_le_bytes());
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let p = write(&dir.0.join("iq2.gguf"), &bytes);
    fails(&["run", "--model", &p, "--prompt", "hi"], "IQ2_XXS");
    bytes[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let p = write(&dir.0.join("type77.gguf"), &bytes);
    fails(
        &["run", "--model", &p, "--prompt", "hi"],
        "unknown ggml tensor type id 77",
    );
}

#[test]
fn shape_mismatch() {
    let dir = common::TempDir::new("cli-errors-shape_mismatch");
    let mut w = tiny_llama_gguf();
    w.set("llama.feed_forward_length", Value::U32(24));
    let p = write(&dir.0.join("shape.gguf"), &w.to_bytes());
    fails(&["run", "--model", &p, "--prompt", "hi"], "the config implies");
}

#[test]
fn missing_tensor() {
    let dir = common::TempDir::new("cli-errors-missing_tensor");
    let mut w = tiny_llama_gguf();
    w.tensors.retain(|t| t.name != "blk.0.ffn_up.weight");
    let p = write(&dir.0.join("missing.gguf"), &w.to_bytes());
    fails(
        &["run", "--model", &p, "--prompt", "hi"],
        "blk.0.ffn_up.weight is missing",
    );
}

#[test]
fn a_tiny_valid_model_runs() {
    let dir = common::TempDir::new("cli-errors-a_tiny_valid_model_runs");
    let p = write(&dir.0.join("ok.gguf"), &tiny_llama_gguf().to_bytes());
    let (code, out, err) = bushu(&["run", "--model", &p, "--prompt", "hi", "-n", "4", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
}

#[test]
fn prompt_longer_than_context() {
    let m = shared("models/tiny-llama-f16.gguf");
    let m = m.to_str().unwrap();
    fails(
        &[
            "run",
            "--model",
            m,
            "--prompt",
            "one two three four five six seven",
            "--ctx",
            "4",
        ],
        "context holds 4",
    );
}

#[test]
fn invalid_flags() {
    let m = shared("models/tiny-llama-f16.gguf");
    let m = m.to_str().unwrap();
    fails(&["run", "--model", m, "--prompt", "x", "--top-p", "1.5"], "top-p");
    fails(&["run", "--model", m, "--prompt", "x", "--top-p", "0"], "top-p");
    fails(
        &["run", "--model", m, "--prompt", "x", "--temperature", "-1"],
        "temperature",
    );
    fails(&["run", "--model", m, "--prompt", "x", "--threads", "0"], "threads");
    fails(&["run", "--model", m, "--prompt", "x", "--ctx", "0"], "ctx");
    fails(&["run", "--model", m, "--prompt", "x", "-n", "abc"], "invalid value");
    fails(&["detokenize", "--model", m, "99999999"], "outside the vocabulary");
    fails(&["detokenize", "--model", m, "abc"], "not a token id");
}
