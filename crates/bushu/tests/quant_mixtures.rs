//! `bushu quantize --type Q4_K_M` (and every other llama.cpp file type bushu writes) gives each tensor the
//! type llama-quantize gives it and the same bytes.
//!
//! Two small random-weight Llama files are written here from a fixed generator ([`write_input`]): `gqa`
//! (dim 256, 8 layers, 8 heads over 2 KV heads, ffn 288, untied: the `attn_v`/`ffn_down` layer rules, the
//! GQA rule of Q2_K, fallbacks of `ffn_down`'s 288-long rows) and `tied` (dim 256, 4 layers, no GQA,
//! ffn 512, no `output.weight`: the tied-embedding rule, K-quant `ffn_down`). The fixture
//! `tests/fixtures/quant/llama-quantize-mixtures.json` holds, per file type, llama-quantize's
//! `general.file_type` and, per tensor of two or more dimensions, its type and the first 16 hex digits
//! of the SHA-256 of its bytes; `scripts/refs/quant_mixtures.sh` makes it (it runs the ignored test
//! `write_inputs` below for the same two files, then llama-quantize on each).

mod common;
use bushu::formats::gguf::{Gguf, Value};
use bushu::formats::gguf_writer::GgufWriter;
use bushu::quant::convert::{quantize_gguf, QuantizeOptions, Target};
use common::{fixture, read_json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `(name, dim, layers, heads, kv_heads, ffn, vocab, tied)`.
type Shape = (&'static str, usize, usize, usize, usize, usize, usize, bool);
const MODELS: &[Shape] = &[
    ("gqa", 256, 8, 8, 2, 288, 512, false),
    ("tied", 256, 4, 4, 4, 512, 384, true),
];

/// xorshift64*: the weights' fixed generator.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Bell-shaped values (a sum of four uniforms) with a scale that changes from row to row, an outlier every
/// 97th value, and one all-zero block at the start of every matrix (the encoders' zero paths).
fn weights(rng: &mut Rng, cols: usize, rows: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(cols * rows);
    for r in 0..rows {
        let scale = 0.01 * (1 + r % 7) as f32;
        for c in 0..cols {
            let i = r * cols + c;
            let x = (rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform()) * scale;
            v.push(if i < 32 {
                0.0
            } else if i.is_multiple_of(97) {
                x * 8.0
            } else {
                x
            });
        }
    }
    v
}

/// Writes the test model `name` of [`MODELS`] (F32 tensors) to `path`.
fn write_input(name: &str, path: &Path) {
    let &(_, dim, layers, heads, kv_heads, ffn, vocab, tied) = MODELS.iter().find(|m| m.0 == name).unwrap();
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.into());
    w.set("general.architecture", s("llama"));
    w.set("general.name", s(&format!("mixture-test-{name}")));
    w.set("general.file_type", Value::U32(0));
    w.set("llama.context_length", Value::U32(256));
    w.set("llama.embedding_length", Value::U32(dim as u32));
    w.set("llama.block_count", Value::U32(layers as u32));
    w.set("llama.feed_forward_length", Value::U32(ffn as u32));
    w.set("llama.rope.dimension_count", Value::U32((dim / heads) as u32));
    w.set("llama.attention.head_count", Value::U32(heads as u32));
    w.set("llama.attention.head_count_kv", Value::U32(kv_heads as u32));
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.set("llama.rope.freq_base", Value::F32(10000.0));
    w.set("tokenizer.ggml.model", s("llama"));
    let tokens: Vec<Value> = (0..vocab)
        .map(|i| match i {
            0 => s("<unk>"),
            1 => s("<s>"),
            2 => s("</s>"),
            _ => s(&format!("t{i}")),
        })
        .collect();
    w.set("tokenizer.ggml.tokens", Value::Array(tokens));
    w.set(
        "tokenizer.ggml.scores",
        Value::Array((0..vocab).map(|i| Value::F32(-(i as f32))).collect()),
    );
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array((0..vocab).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect()),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let kv = dim / heads * kv_heads;
    w.add_f32("token_embd.weight", vec![dim, vocab], &weights(&mut rng, dim, vocab));
    for l in 0..layers {
        let p = |t: &str| format!("blk.{l}.{t}.weight");
        w.add_f32(&p("attn_norm"), vec![dim], &vec![1.0; dim]);
        w.add_f32(&p("attn_q"), vec![dim, dim], &weights(&mut rng, dim, dim));
        w.add_f32(&p("attn_k"), vec![dim, kv], &weights(&mut rng, dim, kv));
        w.add_f32(&p("attn_v"), vec![dim, kv], &weights(&mut rng, dim, kv));
        w.add_f32(&p("attn_output"), vec![dim, dim], &weights(&mut rng, dim, dim));
        w.add_f32(&p("ffn_norm"), vec![dim], &vec![1.0; dim]);
        w.add_f32(&p("ffn_gate"), vec![dim, ffn], &weights(&mut rng, dim, ffn));
        w.add_f32(&p("ffn_up"), vec![dim, ffn], &weights(&mut rng, dim, ffn));
        w.add_f32(&p("ffn_down"), vec![ffn, dim], &weights(&mut rng, ffn, dim));
    }
    w.add_f32("output_norm.weight", vec![dim], &vec![1.0; dim]);
    if !tied {
        w.add_f32("output.weight", vec![dim, vocab], &weights(&mut rng, dim, vocab));
    }
    w.write(path).unwrap();
}

fn sha16(b: &[u8]) -> String {
    Sha256::digest(b).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Writes the two inputs into `$BUSHU_MIXTURE_DIR` for scripts/refs/quant_mixtures.sh.
#[test]
#[ignore]
fn write_inputs() {
    let dir = PathBuf::from(std::env::var("BUSHU_MIXTURE_DIR").expect("set BUSHU_MIXTURE_DIR"));
    for m in MODELS {
        write_input(m.0, &dir.join(format!("{}.gguf", m.0)));
    }
}

#[test]
fn mixtures_are_bit_identical_to_llama_quantize() {
    let refs = read_json(&fixture("quant/llama-quantize-mixtures.json"));
    let dir = common::TempDir::new("quant-mixtures");
    let mut checked = 0;
    for (model, mixtures) in refs["models"].as_object().unwrap() {
        let input = dir.0.join(format!("{model}.gguf"));
        write_input(model, &input);
        for (mixture, want) in mixtures.as_object().unwrap() {
            let out = dir.0.join(format!("{model}-{mixture}.gguf"));
            let opts = QuantizeOptions {
                target: Target::parse(mixture).unwrap(),
                pure: false,
                hessians: None,
                gptq: Default::default(),
            };
            quantize_gguf(&input, &out, &opts, |_, _, _| {}).unwrap();
            let g = Gguf::open(&out).unwrap();
            assert_eq!(
                g.metadata["general.file_type"].as_i64(),
                want["file_type"].as_i64(),
                "{model} {mixture}: general.file_type"
            );
            let tensors = want["tensors"].as_object().unwrap();
            let ours: Vec<_> = g.tensors.iter().filter(|t| t.shape.len() >= 2).collect();
            assert_eq!(ours.len(), tensors.len(), "{model} {mixture}: tensor count");
            let mut kinds = std::collections::BTreeSet::new();
            for t in ours {
                let got = format!("{} {}", t.dtype.name(), sha16(t.bytes()));
                let w = tensors[&t.name].as_str().unwrap();
                assert_eq!(
                    got, w,
                    "{model} {mixture}: {} (type, sha256) against llama-quantize's",
                    t.name
                );
                kinds.insert(t.dtype.name());
                checked += 1;
            }
            eprintln!("{model} {mixture}: identical, types {kinds:?}");
        }
    }
    assert!(checked > 1000, "only {checked} tensors checked");
}

#[test]
fn types_bushu_cannot_write_are_refused_by_name() {
    for (name, word) in [
        ("IQ2_XS", "IQ2_XS"),
        ("q2_k_s", "Q2_K_S"),
        ("BF16", "BF16"),
        ("iq4_nl", "IQ4_NL"),
    ] {
        let e = Target::parse(name).unwrap_err().to_string();
        assert!(e.contains(&format!("cannot write llama.cpp's {word}")), "{name}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    let e = Target::parse("q4_k_x").unwrap_err().to_string();
    assert!(
        e.contains("unknown quantization type 'q4_k_x'") && e.contains("Q4_K_M"),
        "{e}"
    );
}

#[test]
fn a_file_of_a_type_bushu_cannot_run_is_refused_in_one_line() {
    // bushu writes Q2_K and Q3_K (llama.cpp runs them) but has no kernels for them yet.
    let dir = common::TempDir::new("quant-mixtures-run");
    let (input, out) = (dir.0.join("tied.gguf"), dir.0.join("tied-q3_k_m.gguf"));
    write_input("tied", &input);
    let q = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
        .arg("quantize")
        .args([&input, &out])
        .args(["--type", "q3_k_m", "-q"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["run", "-m"])
        .arg(&out)
        .args(["-p", "t5", "-n", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Q3_K") && err.contains("cannot compute"), "{err}");
    assert!(
        !err.contains("internal error") && err.trim().lines().count() == 1,
        "{err}"
    );
}
