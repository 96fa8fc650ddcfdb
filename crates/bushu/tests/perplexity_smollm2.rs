//! `bushu perplexity` on the default model, SmolLM2-135M-Instruct Q4_1, against llama-perplexity on the
//! held-out Shakespeare text at context 512 (issue 10): the running perplexity after the first 16 chunks
//! within 0.5 % (reference: tests/fixtures/perplexity/smollm2.json, with the command that made it).
//! Skipped with a message when the model is not in the cache (`bushu pull`).

mod common;
use bushu::pull::{check_cached, find_model, models_dir, CacheStatus, DEFAULT_MODEL};
use common::{fixture, read_json, shared};
use std::process::Command;

#[test]
fn smollm2_matches_llama_perplexity_16_chunks() {
    let spec = find_model(DEFAULT_MODEL).unwrap();
    let dir = models_dir();
    if !matches!(check_cached(&spec, &dir), Ok(CacheStatus::Ok)) {
        eprintln!(
            "SKIPPED: SmolLM2-135M is not in the model cache {}; run `bushu pull`",
            dir.display()
        );
        return;
    }
    let model = dir.join(&spec.file_name);
    let reference = read_json(&fixture("perplexity/smollm2.json"));
    let theirs = reference["results"][0]["chunk16"].as_f64().expect("chunk16 reference");
    let val = shared("testdata/shakespeare/val.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["perplexity", "-m", model.to_str().unwrap(), "-f", val.to_str().unwrap()])
        // llama.cpp's method: 8-bit activation blocks.
        .args(["--ctx", "512", "--chunks", "16", "--json", "--precision", "fast"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = j["perplexity"].as_f64().unwrap();
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "SmolLM2 Q4_1, 16 chunks: bushu {ours:.4}, llama-perplexity {theirs:.4} ({:.3} %)",
        100.0 * rel
    );
    assert!(rel < 0.005, "bushu {ours} vs llama-perplexity {theirs}");
}
