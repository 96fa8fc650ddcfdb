//! LLM.int8() (issue 9): with outlier feature dimensions injected into a model — a few dimensions of the
//! RMSNorm weights scaled up by 25-60x and the matching input columns of the projections they feed
//! scaled down by as much, so the f32 function is unchanged but the activations carry outliers like
//! those of large LLMs — mixed precision keeps the logits close to the f32 model, and per-tensor int8
//! activations do not.

mod common;
use bushu::formats::Tensor;
use bushu::model::llama::Logits;
use bushu::model::{load, Model};
use bushu::quant::llm_int8::Int8Weights;
use common::shared;
use kernels::int8_mixed::{outlier_columns, ActInt8};
use kernels::Precision;
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
/// Injected outlier dimensions and their factors.
const OUTLIERS: [(usize, f32); 3] = [(7, 25.0), (100, 40.0), (200, 60.0)];

/// Divides input columns `OUTLIERS` of `t` by their factors (result in f32).
fn shrink_columns(t: &Tensor) -> Tensor {
    let mut v = t.to_f32();
    let cols = t.shape[0];
    for row in v.chunks_exact_mut(cols) {
        for &(c, f) in &OUTLIERS {
            row[c] /= f;
        }
    }
    Tensor::from_f32(&t.name, t.shape.clone(), &v)
}

/// The expert with outliers injected in every layer's attention and feed-forward inputs.
fn injected() -> Model {
    let mut m = Model::new(&load(&shared(EXPERT)).unwrap()).unwrap();
    m.precision = Precision::Exact;
    for lw in &mut m.weights.layers {
        for &(c, f) in &OUTLIERS {
            lw.attn_norm[c] *= f;
            lw.ffn_norm[c] *= f;
        }
        for t in [&mut lw.wq, &mut lw.wk, &mut lw.wv, &mut lw.w_gate, &mut lw.w_up] {
            *t = shrink_columns(t);
        }
    }
    m
}

fn tokens(vocab: usize) -> Vec<u32> {
    [
        1u32, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889, 3118,
    ]
    .iter()
    .map(|&t| t % vocab as u32)
    .collect()
}

fn logits(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(64);
    m.forward(&mut st, toks, Logits::All).unwrap().to_vec()
}

/// Root-mean-square difference.
fn rms(a: &[f32], b: &[f32]) -> f32 {
    (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt() as f32
}

#[test]
fn mixed_precision_survives_outliers_per_tensor_does_not() {
    let base = Model::new(&load(&shared(EXPERT)).unwrap()).unwrap();
    let toks = tokens(base.config.vocab_size);
    let mut base = base;
    base.precision = Precision::Exact;
    let want = logits(&base, &toks);

    let mut m = injected();
    // The injection leaves the f32 function as it was.
    let same = rms(&logits(&m, &toks), &want);
    assert!(same < 1e-3, "injected model differs from the original by {same}");

    // The normed inputs now have outliers in exactly the injected dimensions.
    let mut seen = Vec::new();
    let mut st = m.new_state(64);
    m.forward_observed(&mut st, &toks, Logits::Last, &mut |p, x| {
        if let bushu::model::llama::Probe::AttnIn(0) = p {
            seen = outlier_columns(x, 288, 6.0);
        }
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![7, 100, 200],
        "outlier dimensions of layer 0's attention input"
    );

    m.enable_llm_int8(6.0).unwrap();
    let mixed = rms(&logits(&m, &toks), &want);
    m.int8 = Some(Int8Weights::new(&m.weights, ActInt8::PerTensor).unwrap());
    let per_tensor = rms(&logits(&m, &toks), &want);
    // Plain vector-wise int8 (per-token scales, no f32 columns) for the record.
    m.enable_llm_int8(f32::INFINITY).unwrap();
    let per_token = rms(&logits(&m, &toks), &want);
    let spread = (want.iter().map(|x| x * x).sum::<f32>() / want.len() as f32).sqrt();
    println!(
        "logits RMS error vs f32 (logits RMS {spread:.3}): LLM.int8 threshold 6: {mixed:.4}, \
         per-token int8 without outliers: {per_token:.4}, per-tensor int8: {per_tensor:.4}"
    );
    assert!(mixed < 0.02 * spread, "LLM.int8 error {mixed} is not small");
    assert!(
        per_tensor > 5.0 * mixed,
        "per-tensor int8 error {per_tensor} is not several times LLM.int8's {mixed}"
    );
}

/// On the unmodified model LLM.int8 stays within int8 rounding of f32 for every input length.
#[test]
fn plain_model_close_to_f32() {
    let mut m = Model::new(&load(&shared(EXPERT)).unwrap()).unwrap();
    m.precision = Precision::Exact;
    let toks = tokens(m.config.vocab_size);
    let want = logits(&m, &toks);
    m.enable_llm_int8(6.0).unwrap();
    assert!(m.int8.as_ref().unwrap().bytes() > 0);
    let got = logits(&m, &toks);
    let err = rms(&got, &want);
    assert!(err < 0.05, "LLM.int8 on the plain expert: RMS logits error {err}");
    // Decoding one token at a time gives the logits of the whole-sequence pass (per-token scales).
    let mut st = m.new_state(64);
    let vocab = m.config.vocab_size;
    for (i, &t) in toks.iter().enumerate() {
        let step = m.forward(&mut st, &[t], Logits::Last).unwrap();
        let d = rms(step, &got[i * vocab..(i + 1) * vocab]);
        assert!(d < 0.05, "position {i}: incremental differs from full by {d}");
    }
}

#[test]
fn bad_threshold_is_one_line() {
    let model = shared(EXPERT);
    for t in ["0", "-2", "nan", "abc"] {
        let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
            .args(["run", "--model", model.to_str().unwrap(), "--prompt", "x", "-n", "1"])
            .args(["--int8-outlier-threshold", t])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "threshold {t} accepted");
        assert!(!err.contains("panicked"), "threshold {t}: {err}");
        assert!(err.contains("int8-outlier-threshold"), "threshold {t}: {err}");
        assert!(err.trim().lines().count() <= 3, "threshold {t}: {err}");
    }
    let ok = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Romeo",
            "-n",
            "4",
        ])
        .args(["--temperature", "0", "--int8-outlier-threshold", "6"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
