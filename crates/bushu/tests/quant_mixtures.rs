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

/// `src` with every tensor of two or more dimensions dequantized to F32: the reference the quantized
/// file's products must reproduce.
fn dequantized_copy(src: &Path, dst: &Path) {
    let g = Gguf::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k, v.clone());
    }
    for t in &g.tensors {
        let n: usize = t.shape.iter().product();
        let mut v = vec![0.0f32; n];
        let row = t.shape[0];
        let rb = t.dtype.bytes_for(row).unwrap();
        for (r, out) in v.chunks_exact_mut(row).enumerate() {
            bushu::quant::gguf_types::dequantize_row(t.dtype, &t.bytes()[r * rb..][..rb], out).unwrap();
        }
        w.add_f32(&t.name, t.shape.clone(), &v);
    }
    w.write(dst).unwrap();
}

#[test]
fn q2_k_and_q3_k_files_run_as_their_dequantized_weights() {
    use bushu::model::{llama::Logits, load, Model};
    use kernels::Precision;
    let dir = common::TempDir::new("quant-mixtures-run");
    let input = dir.0.join("gqa.gguf");
    write_input("gqa", &input);
    let toks: Vec<u32> = (3..40).collect();
    let logits = |path: &Path, p: Precision| {
        let mut m = Model::new(&load(path).unwrap()).unwrap();
        m.precision = p;
        let mut st = m.new_state(64);
        m.forward(&mut st, &toks, Logits::All).unwrap().to_vec()
    };
    // Q4_K_M (kernels tested since long) calibrates what int8 activations cost on this random model.
    let mut fast_q4k = f32::NAN;
    for (ty, dtype) in [("q4_k_m", "Q4_K"), ("q2_k", "Q2_K"), ("q3_k_m", "Q3_K")] {
        let out = dir.0.join(format!("gqa-{ty}.gguf"));
        let q = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
            .arg("quantize")
            .args([&input, &out])
            .args(["--type", ty, "-q"])
            .output()
            .unwrap();
        assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
        let g = Gguf::open(&out).unwrap();
        assert!(
            g.tensors.iter().any(|t| t.dtype.name() == dtype),
            "{ty}: no {dtype} tensor"
        );
        let reference = dir.0.join(format!("gqa-{ty}-f32.gguf"));
        dequantized_copy(&out, &reference);
        let want = logits(&reference, Precision::Exact);
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for p in [Precision::Exact, Precision::Wide, Precision::Fast] {
            let got = logits(&out, p);
            let err = got.iter().zip(&want).fold(0.0f32, |a, (g, w)| a.max((g - w).abs())) / scale;
            eprintln!("{ty} {p:?}: max logit error {err:.2e} of the largest logit");
            // Exact computes with f32 activations (summation order only), wide with int16 ones where
            // a kernel exists, fast with int8 blocks: within twice what they cost Q4_K_M.
            let bound = match p {
                Precision::Exact => 1e-4,
                Precision::Wide => 1e-3,
                Precision::Fast if ty == "q4_k_m" => {
                    fast_q4k = err;
                    0.1
                }
                Precision::Fast => 2.0 * fast_q4k,
                Precision::Bf16 => unreachable!("not in the list"),
            };
            assert!(err <= bound, "{ty} {p:?}: {err}");
        }
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
            .args(["run", "-m"])
            .arg(&out)
            .args(["-p", "t5 t6", "-n", "4", "--temp", "0"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{ty}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn a_file_of_a_type_bushu_cannot_run_is_refused_in_one_line() {
    // A tensor stored as Q8_K (llama.cpp's activation type, never a weight type bushu computes with).
    let dir = common::TempDir::new("quant-mixtures-refuse");
    let (input, out) = (dir.0.join("tied.gguf"), dir.0.join("tied-q8_k.gguf"));
    write_input("tied", &input);
    let g = Gguf::open(&input).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.set(k, v.clone());
    }
    for t in &g.tensors {
        if t.name == "blk.0.ffn_up.weight" {
            let n: usize = t.shape.iter().product();
            let bytes = kernels::DType::Q8K.bytes_for(n).unwrap();
            w.add_tensor(&t.name, t.shape.clone(), kernels::DType::Q8K, vec![0; bytes]);
        } else {
            w.add_tensor(&t.name, t.shape.clone(), t.dtype, t.bytes().to_vec());
        }
    }
    w.write(&out).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["run", "-m"])
        .arg(&out)
        .args(["-p", "t5", "-n", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("Q8_K") && err.contains("cannot compute"), "{err}");
    assert!(
        !err.contains("internal error") && err.trim().lines().count() == 1,
        "{err}"
    );
}
