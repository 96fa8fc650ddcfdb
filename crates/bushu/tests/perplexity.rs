//! `bushu perplexity` against llama-perplexity's numbers (tests/fixtures/perplexity/), on the trained
//! Shakespeare expert: same chunking, BOS handling and scored tokens, so the running perplexity after
//! 20 chunks must agree within 0.5 % (measured: within 0.01 %). The full 197-chunk runs are `--ignored`.

mod common;
use common::{fixture, read_json, shared};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Runs bushu; `perplexity` at llama.cpp's precision (8-bit activation blocks), as llama-perplexity computes.
fn bushu(args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    c.args(args);
    if args.first() == Some(&"perplexity") {
        c.args(["--precision", "fast"]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn f16_model() -> String {
    shared("models/shakespeare/shakespeare-expert-f16.gguf")
        .to_str()
        .unwrap()
        .to_owned()
}

fn val() -> String {
    shared("testdata/shakespeare/val.txt").to_str().unwrap().to_owned()
}

/// The expert in Q8_0, written by `bushu quantize` (tensor bytes identical to llama-quantize's), in a
/// directory (named by `tag`, unique per test) removed when the returned guard drops.
fn q8_model(tag: &str) -> (common::TempDir, String) {
    let dir = common::TempDir::new(tag);
    let out: PathBuf = dir.0.join("expert-q8_0.gguf");
    let (ok, _, err) = bushu(&["quantize", &f16_model(), out.to_str().unwrap(), "--type", "q8_0", "-q"]);
    assert!(ok, "{err}");
    (dir, out.to_str().unwrap().to_owned())
}

fn reference(model: &str, key: &str) -> f64 {
    let j = read_json(&fixture("perplexity/shakespeare-expert-llama.json"));
    j["models"][model][key].as_f64().unwrap()
}

fn ppl_json(args: &[&str]) -> Value {
    let (ok, out, err) = bushu(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn close(ours: f64, theirs: f64, what: &str) {
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "{what}: bushu {ours:.4}, llama-perplexity {theirs:.4} ({:.4} %)",
        100.0 * rel
    );
    assert!(rel < 0.005, "{what}: bushu {ours} vs llama-perplexity {theirs}");
}

#[test]
fn f16_matches_llama_perplexity_20_chunks() {
    let j = ppl_json(&[
        "perplexity",
        "-m",
        &f16_model(),
        "-f",
        &val(),
        "--ctx",
        "512",
        "--chunks",
        "20",
        "--json",
    ]);
    assert_eq!(j["scored_tokens"], 20 * 255);
    close(
        j["perplexity"].as_f64().unwrap(),
        reference("shakespeare-expert-f16.gguf", "chunk20"),
        "F16, 20 chunks",
    );
}

#[test]
fn q8_0_matches_llama_perplexity_and_kl_to_f16_is_small() {
    let (_dir, q8) = q8_model("ppl-q8_0-kl");
    let j = ppl_json(&[
        "perplexity",
        "-m",
        &q8,
        "-f",
        &val(),
        "--chunks",
        "20",
        "--kl-base",
        &f16_model(),
        "--json",
    ]);
    close(
        j["perplexity"].as_f64().unwrap(),
        reference("shakespeare-expert-q8_0.gguf", "chunk20"),
        "Q8_0, 20 chunks",
    );
    close(
        j["base_perplexity"].as_f64().unwrap(),
        reference("shakespeare-expert-f16.gguf", "chunk20"),
        "F16 base",
    );
    let kl = j["kl_mean"].as_f64().unwrap();
    let top1 = j["top1_agreement"].as_f64().unwrap();
    eprintln!("Q8_0 vs F16: KL {kl:.6}, top-1 agreement {top1:.4}");
    assert!(kl > 0.0 && kl < 1e-3, "KL {kl}");
    assert!(top1 > 0.97, "top-1 agreement {top1}");
}

#[test]
fn kl_of_a_model_with_itself_is_zero() {
    let f = f16_model();
    let j = ppl_json(&[
        "perplexity",
        "-m",
        &f,
        "-f",
        &val(),
        "--chunks",
        "2",
        "--kl-base",
        &f,
        "--json",
    ]);
    assert!(j["kl_mean"].as_f64().unwrap().abs() < 1e-9);
    assert_eq!(j["top1_agreement"].as_f64().unwrap(), 1.0);
}

#[test]
fn short_text_is_one_clear_error() {
    let dir = common::TempDir::new("ppl-short-text");
    let p = dir.0.join("short.txt");
    std::fs::write(&p, "To be, or not to be.\n").unwrap();
    let (ok, _, err) = bushu(&["perplexity", "-m", &f16_model(), "-f", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("needs at least 1024"), "{err}");
}

#[test]
#[ignore = "full validation text, about 3 minutes per model on 2 cores"]
fn full_val_within_half_a_percent() {
    let j = ppl_json(&["perplexity", "-m", &f16_model(), "-f", &val(), "--json"]);
    close(
        j["perplexity"].as_f64().unwrap(),
        reference("shakespeare-expert-f16.gguf", "final"),
        "F16, all chunks",
    );
    let (_dir, q8) = q8_model("ppl-full-val");
    let j = ppl_json(&["perplexity", "-m", &q8, "-f", &val(), "--json"]);
    close(
        j["perplexity"].as_f64().unwrap(),
        reference("shakespeare-expert-q8_0.gguf", "final"),
        "Q8_0, all chunks",
    );
}

/// A q4_k file from `bushu quantize` (most tensors fall back to Q5_0 at this row length, as with
/// llama-quantize) runs, and scores as llama-perplexity scores the same file.
#[test]
fn q4_k_with_q5_0_fallbacks_matches_llama_perplexity() {
    let dir = common::TempDir::new("ppl-q4_k");
    let out = dir.0.join("expert-q4_k.gguf");
    let (ok, _, err) = bushu(&["quantize", &f16_model(), out.to_str().unwrap(), "--type", "q4_k", "-q"]);
    assert!(ok, "{err}");
    let j = ppl_json(&[
        "perplexity",
        "-m",
        out.to_str().unwrap(),
        "-f",
        &val(),
        "--chunks",
        "4",
        "--json",
    ]);
    close(
        j["perplexity"].as_f64().unwrap(),
        reference("expert-q4_k (bushu quantize --type q4_k)", "chunk4"),
        "Q4_K/Q5_0, 4 chunks",
    );
}
