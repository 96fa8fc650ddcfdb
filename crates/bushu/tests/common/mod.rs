//! Paths shared by the integration tests.
#![allow(dead_code)]

pub mod http;

use std::path::PathBuf;

/// `../shared` beside the repository.
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

/// The repository's committed fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// A model from the model cache (`bushu pull NAME`), or `None` with a message saying the tests that
/// need it are skipped.
pub fn cached_model(name: &str) -> Option<bushu::model::ModelFile> {
    use bushu::pull::{check_cached, find_model, models_dir, CacheStatus};
    let spec = find_model(name).unwrap();
    let dir = models_dir();
    match check_cached(&spec, &dir) {
        Ok(CacheStatus::Ok) => Some(bushu::model::load(&dir.join(&spec.file_name)).unwrap()),
        other => {
            eprintln!(
                "SKIPPED: {} is not in the model cache {} ({other:?}); run `bushu pull {}` (or set BUSHU_HOME)",
                spec.name,
                dir.display(),
                spec.name
            );
            None
        }
    }
}

/// Log-softmax of raw logits, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Log-probabilities of `model` at every step, teacher-forced along `path` after `prompt`.
pub fn teacher_forced(model: &bushu::model::Model, prompt: &[u32], path: &[u32]) -> Vec<Vec<f64>> {
    use bushu::model::llama::Logits;
    let mut st = model.new_state(prompt.len() + path.len() + 1);
    let mut out = vec![log_softmax(model.forward(&mut st, prompt, Logits::Last).unwrap())];
    for &t in &path[..path.len() - 1] {
        out.push(log_softmax(model.forward(&mut st, &[t], Logits::Last).unwrap()));
    }
    out
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

use bushu::formats::gguf::{Gguf, Value};
use bushu::formats::gguf_writer::GgufWriter;

/// A tiny random Llama GGUF (dim 8, 1 layer, 2 heads) with the Llama-2 SentencePiece vocabulary,
/// for tests that need a complete file to break in some way.
pub fn tiny_llama_gguf() -> GgufWriter {
    let vocab = Gguf::open(&shared("testdata/vocab/ggml-vocab-llama-spm.gguf")).unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    let (dim, ffn, n_vocab) = (8usize, 16usize, 32000usize);
    for (k, v) in [
        ("llama.embedding_length", dim),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("llama.feed_forward_length", ffn),
        ("llama.context_length", 64),
    ] {
        w.set(k, Value::U32(v as u32));
    }
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    for (k, v) in &vocab.metadata {
        if k.starts_with("tokenizer.") {
            w.set(k, v.clone());
        }
    }
    let mut seed = 7u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    w.add_f32("token_embd.weight", vec![dim, n_vocab], &rnd(dim * n_vocab));
    w.add_f32("output_norm.weight", vec![dim], &[1.0; 8]);
    for (name, shape) in [
        ("attn_q.weight", vec![dim, dim]),
        ("attn_k.weight", vec![dim, dim]),
        ("attn_v.weight", vec![dim, dim]),
        ("attn_output.weight", vec![dim, dim]),
        ("ffn_gate.weight", vec![dim, ffn]),
        ("ffn_up.weight", vec![dim, ffn]),
        ("ffn_down.weight", vec![ffn, dim]),
    ] {
        let n = shape.iter().product();
        w.add_f32(&format!("blk.0.{name}"), shape, &rnd(n));
    }
    w.add_f32("blk.0.attn_norm.weight", vec![dim], &[1.0; 8]);
    w.add_f32("blk.0.ffn_norm.weight", vec![dim], &[1.0; 8]);
    w
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("bushu-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bushu chat ARGS` with `input` (the user's turns) on stdin; asserts it succeeds and returns (stdout,
/// stderr).
pub fn chat_cli(args: &[&str], input: &str) -> (String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
        .arg("chat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small held-out set for `bushu::tradeoff` tests: the first window of 48 tokens of the Shakespeare
/// `val.txt` (16 of prefix) and 2 prompts of 16 continued by 12 tokens.
pub fn small_heldout(f: &bushu::model::ModelFile, m: &bushu::model::Model) -> bushu::tradeoff::Heldout {
    let text = std::fs::read_to_string(shared("testdata/shakespeare/val.txt")).unwrap();
    let tokens = bushu::perplexity::tokenize_text(&f.tokenizer, &text).unwrap();
    let sizes = bushu::tradeoff::Sizes {
        windows: 1,
        window: 48,
        prefix: 16,
        prompts: 2,
        prompt: 16,
        n: 12,
    };
    bushu::tradeoff::heldout(m, &tokens, f.tokenizer.bos_id(), sizes).unwrap()
}
