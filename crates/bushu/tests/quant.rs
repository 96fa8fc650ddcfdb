//! Quantization: the lecture's worked example, llama.cpp block types bit for bit against
//! `llama-quantize`, bushu's int types in their containers, and files that bushu loads and runs.

mod common;
use bushu::formats::gguf::Gguf;
use bushu::quant::affine::{AffineSpec, AffineTensor, Granularity, QuantError, Scheme};
use bushu::quant::convert::{quantize_gguf, QuantizeOptions, Target};
use common::{fixture, read_json, shared};
use std::path::{Path, PathBuf};

/// Quantizes `input` to `dir/name` (`dir` a test's [`common::TempDir`]).
fn convert(dir: &Path, input: &Path, name: &str, ty: &str, pure: bool) -> PathBuf {
    let out = dir.join(name);
    let opts = QuantizeOptions {
        target: Target::parse(ty).unwrap(),
        pure,
        hessians: None,
        gptq: Default::default(),
    };
    quantize_gguf(input, &out, &opts, |_, _, _| {}).unwrap();
    out
}

#[test]
fn lecture_worked_example() {
    // X = [[1.2, 2.4, 3.6], [11.2, 12.4, 13.6]], asymmetric int8 to [-128, 127], one (S, Z) for the tensor.
    let x = [1.2f32, 2.4, 3.6, 11.2, 12.4, 13.6];
    let t = AffineTensor::quantize(&x, 2, 3, AffineSpec::new(8, Scheme::Asymmetric, Granularity::Tensor)).unwrap();
    assert!((t.scales[0] - 0.0486).abs() < 5e-5, "S = {}", t.scales[0]);
    assert_eq!(t.zeros[0], 152);
    assert_eq!(t.q, vec![-127, -103, -78, 78, 103, 127]);
    let d = t.dequantize();
    // The slide's dequantized values; we get 13.567 for the last, which the slide prints as 13.58
    // (13.57 rounded up once more): all within 0.015, well under half a step (S/2 = 0.024).
    let slide = [1.22f32, 2.38, 3.60, 11.18, 12.40, 13.58];
    for (a, b) in d.iter().zip(slide) {
        assert!((a - b).abs() < 0.015, "{d:?}");
    }
    let e = QuantError::of(&x, &d);
    assert!(e.sq_error < 0.002 && e.max_abs < 0.034, "{e:?}");
}

fn tensor_bytes(path: &Path) -> Vec<(String, String, Vec<u8>)> {
    let g = Gguf::open(path).unwrap();
    g.tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.name().to_owned(), t.bytes().to_vec()))
        .collect()
}

fn assert_same_tensors(ours: &Path, theirs: &Path) {
    // llama-quantize writes the tensors in the model's order, not the input's: compare by name.
    let (a, b) = (tensor_bytes(ours), tensor_bytes(theirs));
    assert_eq!(a.len(), b.len());
    for x in &a {
        let y = b
            .iter()
            .find(|y| y.0 == x.0)
            .unwrap_or_else(|| panic!("{} missing", x.0));
        assert_eq!(x.1, y.1, "type of {}", x.0);
        assert!(x.2 == y.2, "{} ({}) differs from llama-quantize's", x.0, x.1);
    }
}

#[test]
fn q8_0_and_q4_0_are_bit_identical_to_llama_quantize() {
    let dir = common::TempDir::new("quant-q8_0-q4_0");
    let tiny = shared("models/tiny-llama-f16.gguf");
    assert_same_tensors(
        &convert(&dir.0, &tiny, "tiny-q8_0.gguf", "q8_0", false),
        &shared("models/tiny-llama-q8_0.gguf"),
    );
    assert_same_tensors(
        &convert(&dir.0, &tiny, "tiny-q4_0.gguf", "q4_0", false),
        &shared("models/tiny-llama-q4_0.gguf"),
    );
    let amateur = shared("models/shakespeare/shakespeare-amateur-f16.gguf");
    assert_same_tensors(
        &convert(&dir.0, &amateur, "amateur-q8_0.gguf", "q8_0", false),
        &shared("models/shakespeare/shakespeare-amateur-q8_0.gguf"),
    );
}

fn fnv1a64(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[test]
fn k_quants_are_bit_identical_to_llama_quantize() {
    let dir = common::TempDir::new("quant-k-quants");
    let refs = read_json(&fixture("quant/llama-quantize-hashes.json"));
    let expert = shared("models/shakespeare/shakespeare-expert-f16.gguf");
    for f in refs["files"].as_array().unwrap() {
        let ty = f["type"].as_str().unwrap();
        let pure = f["pure"].as_bool().unwrap();
        let ours = convert(&dir.0, &expert, &format!("expert-{ty}-{pure}.gguf"), ty, pure);
        let want = f["tensors"].as_object().unwrap();
        let mut kinds = std::collections::BTreeSet::new();
        for (name, dtype, bytes) in tensor_bytes(&ours) {
            let w = &want[&name];
            assert_eq!(dtype, w["dtype"].as_str().unwrap(), "{ty}: type of {name}");
            assert_eq!(
                fnv1a64(&bytes),
                w["fnv1a64"].as_str().unwrap(),
                "{ty}: bytes of {name} ({dtype})"
            );
            kinds.insert(dtype);
        }
        eprintln!("{ty} (pure {pure}): all tensors identical, types {kinds:?}");
    }
}

#[test]
fn int_types_load_and_run_close_to_f16() {
    use bushu::model::{llama::Logits, load, Model};
    let dir = common::TempDir::new("quant-int-types");
    let expert = shared("models/shakespeare/shakespeare-expert-f16.gguf");
    let base = Model::new(&load(&expert).unwrap()).unwrap();
    let toks: Vec<u32> = (1..65).collect();
    let mut st = base.new_state(64);
    let want = base.forward(&mut st, &toks, Logits::All).unwrap().to_vec();
    let mut errs = Vec::new();
    for ty in ["int8-sym-channel", "int4-sym-g32", "int4-asym-g128", "q4_k", "q6_k"] {
        let out = convert(&dir.0, &expert, &format!("expert-{ty}.gguf"), ty, false);
        let file = load(&out).unwrap();
        let Ok(m) = Model::new(&file) else {
            eprintln!("{ty}: bushu has no kernel for one of its tensor types (Q5_0 fallback), skipped");
            continue;
        };
        let mut st = m.new_state(64);
        let got = m.forward(&mut st, &toks, Logits::All).unwrap();
        let e = QuantError::of(&want, got);
        eprintln!("{ty}: logits rel. error {:.3e}", e.rel_error);
        errs.push((ty, e.rel_error));
    }
    let err = |n: &str| errs.iter().find(|e| e.0 == n).unwrap().1;
    assert!(err("int8-sym-channel") < 1e-3);
    assert!(err("int4-sym-g32") < 0.05);
    assert!(err("int8-sym-channel") < err("int4-sym-g32"));
}

#[test]
fn unknown_type_is_a_clear_error() {
    let e = Target::parse("int5-sym-g48").unwrap_err().to_string();
    assert!(e.contains("unknown quantization type"), "{e}");
}
