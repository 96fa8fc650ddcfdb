//! Agreement with llama.cpp and with the exact model on the shared GGUF files (fixtures made by
//! scripts/refs/make_gguf_refs.py): 64 greedy tokens from a fixed prompt with top-5 log-probabilities.
//!
//! The exact model is the file's weights dequantized with gguf-py and run in f32 by HF transformers.
//! llama.cpp rounds activations (to F16 for F16 weights, to 8-bit blocks for quantized ones), so it
//! drifts from the exact model; bushu must be at least as close as llama.cpp — on both its paths: f32
//! activations, and 8-bit activation blocks like llama.cpp's (with an f32 classifier) — in top-5 log-prob error
//! and in greedy agreement length (counted up to the first near-tie of the exact model), and on F16
//! files give llama.cpp's greedy tokens.

mod common;
use bushu::model::llama::Logits;
use bushu::model::{load, Model};
use common::{fixture, log_softmax, read_json, shared, teacher_forced, u32s};
use kernels::Precision;
use serde_json::Value;

fn argmax(v: &[f64]) -> u32 {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a)))
        .unwrap() as u32
}

/// Free-running greedy tokens of bushu.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut st = model.new_state(prompt.len() + n + 1);
    let mut lp = log_softmax(model.forward(&mut st, prompt, Logits::Last).unwrap());
    let mut toks = Vec::new();
    for _ in 0..n {
        let t = argmax(&lp);
        toks.push(t);
        lp = log_softmax(model.forward(&mut st, &[t], Logits::Last).unwrap());
    }
    toks
}

fn agree_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

struct Closeness {
    agree: usize,
    max_err: f64,
    mean_err: f64,
}

/// bushu against the exact model: greedy agreement, and the top-5 log-prob error over the steps
/// before the first disagreement.
fn closeness(model: &Model, r: &Value) -> Closeness {
    let prompt = u32s(&r["prompt_ids"]);
    let exact = u32s(&r["exact"]["tokens"]);
    let ours = greedy(model, &prompt, exact.len());
    let agree = agree_len(&ours, &exact);
    let lps = teacher_forced(model, &prompt, &exact);
    let mut errs = Vec::new();
    for (s, top5) in r["exact"]["top5"].as_array().unwrap().iter().enumerate().take(agree) {
        for e in top5.as_array().unwrap() {
            let (id, lp) = (e[0].as_u64().unwrap() as usize, e[1].as_f64().unwrap());
            errs.push((lps[s][id] - lp).abs());
        }
    }
    let max_err = errs.iter().copied().fold(0.0, f64::max);
    let mean_err = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    Closeness {
        agree,
        max_err,
        mean_err,
    }
}

fn check(stem: &str, is_f16: bool) {
    let r = read_json(&fixture(&format!("gguf/{stem}.json")));
    let path = if stem.starts_with("shakespeare") {
        shared(&format!("models/shakespeare/{stem}.gguf"))
    } else {
        shared(&format!("models/{stem}.gguf"))
    };
    let file = load(&path).unwrap();
    let prompt = u32s(&r["prompt_ids"]);
    // The tokenizer agrees with llama-tokenize on the prompt.
    let text = r["prompt"].as_str().unwrap();
    assert_eq!(
        file.tokenizer.encode(text, true).unwrap(),
        prompt,
        "{stem}: prompt tokenization"
    );

    let n = u32s(&r["exact"]["tokens"]).len();
    let tie = r["first_near_tie_step"].as_u64().map(|v| v as usize).unwrap_or(n);
    let lc_agree = r["llamacpp_agree_len"].as_u64().unwrap() as usize;
    let lc_max = r["llamacpp_top5_max_abs_err"].as_f64().unwrap_or(0.0);
    let lc_mean = r["llamacpp_top5_mean_abs_err"].as_f64().unwrap_or(0.0);

    let mut model = Model::new(&file).unwrap();
    for precision in [Precision::Exact, Precision::Fast] {
        model.precision = precision;
        let c = closeness(&model, &r);
        eprintln!(
            "{stem} {precision:?}: agree {} (llama.cpp {lc_agree}, near-tie at {tie}), top-5 error max {:.5} mean {:.5} \
             (llama.cpp {lc_max:.5} / {lc_mean:.5})",
            c.agree, c.max_err, c.mean_err
        );
        assert!(
            c.agree.min(tie) >= lc_agree.min(tie),
            "{stem} {precision:?}: greedy agreement with the exact model {} < llama.cpp's {lc_agree}",
            c.agree
        );
        assert!(
            c.max_err <= lc_max.max(1e-3),
            "{stem} {precision:?}: max top-5 error {} > llama.cpp's {lc_max}",
            c.max_err
        );
        assert!(
            c.mean_err <= lc_mean.max(1e-4),
            "{stem} {precision:?}: mean top-5 error {} > llama.cpp's {lc_mean}",
            c.mean_err
        );
        if is_f16 {
            let lc = u32s(&r["llamacpp"]["tokens"]);
            let ours = greedy(&model, &prompt, lc.len());
            let lc_tie = tie.min(lc.len());
            assert_eq!(
                ours[..lc_tie],
                lc[..lc_tie],
                "{stem}: greedy tokens differ from llama.cpp's"
            );
        }
    }
}

/// `--precision bf16` on an F16 file (F16 weights rounded to bf16 where the CPU has AVX512_BF16;
/// elsewhere it is `fast`): the top-5 log-prob error against the exact model, teacher-forced over all
/// its steps, within `max_bound` (its cost, stated in docs/PRECISION.md).
fn bf16_cost(stem: &str, path: std::path::PathBuf, max_bound: f64) {
    let r = read_json(&fixture(&format!("gguf/{stem}.json")));
    let file = load(&path).unwrap();
    let mut model = Model::new(&file).unwrap();
    model.precision = Precision::Bf16;
    let (prompt, exact) = (u32s(&r["prompt_ids"]), u32s(&r["exact"]["tokens"]));
    let lps = teacher_forced(&model, &prompt, &exact);
    let mut errs = Vec::new();
    for (s, top5) in r["exact"]["top5"].as_array().unwrap().iter().enumerate() {
        for e in top5.as_array().unwrap() {
            let (id, lp) = (e[0].as_u64().unwrap() as usize, e[1].as_f64().unwrap());
            errs.push((lps[s][id] - lp).abs());
        }
    }
    let max = errs.iter().copied().fold(0.0, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    let agree = agree_len(&greedy(&model, &prompt, exact.len()), &exact);
    eprintln!(
        "{stem} Bf16 (AVX512_BF16: {}): top-5 error over {} steps max {max:.5} mean {mean:.5}; greedy agreement {agree}",
        kernels::bf16::active(),
        exact.len()
    );
    assert!(max <= max_bound, "{stem} Bf16: max top-5 error {max} > {max_bound}");
}

#[test]
fn tiny_llama_f16() {
    check("tiny-llama-f16", true);
    bf16_cost("tiny-llama-f16", shared("models/tiny-llama-f16.gguf"), 0.5);
}

#[test]
fn tiny_llama_q8_0() {
    check("tiny-llama-q8_0", false);
}

#[test]
fn tiny_llama_q4_0() {
    check("tiny-llama-q4_0", false);
}

#[test]
fn shakespeare_expert_f16() {
    check("shakespeare-expert-f16", true);
    bf16_cost(
        "shakespeare-expert-f16",
        shared("models/shakespeare/shakespeare-expert-f16.gguf"),
        0.05,
    );
}

#[test]
fn shakespeare_expert_q8_0() {
    check("shakespeare-expert-q8_0", false);
}
