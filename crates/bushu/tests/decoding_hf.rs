//! Decoding strategies against Hugging Face transformers on the random HF fixtures
//! (tests/fixtures/decoding/hf_generate.json, made by scripts/refs/make_decoding_refs.py): greedy with
//! each penalty, logit bias, n-gram blocking, beam search with 2/3/4 beams (tokens and scores, with EOS,
//! length penalties, early stopping), and contrastive search give identical tokens.

mod common;

use bushu::generate::{generate, GenerateOptions, Strategy};
use bushu::model::{load, Model};
use bushu::sampling::beam::{BeamParams, EarlyStopping};
use bushu::sampling::SamplingParams;
use common::{fixture, read_json, u32s};
use serde_json::Value;

fn options(kw: &Value, n: usize) -> GenerateOptions {
    let f = |k: &str| kw.get(k).and_then(|v| v.as_f64());
    let mut s = SamplingParams::greedy();
    if let Some(x) = f("repetition_penalty") {
        s.repetition_penalty = x as f32;
    }
    if let Some(x) = f("presence_penalty") {
        s.presence_penalty = x as f32;
    }
    if let Some(x) = f("frequency_penalty") {
        s.frequency_penalty = x as f32;
    }
    if let Some(x) = kw.get("no_repeat_ngram_size").and_then(|v| v.as_u64()) {
        s.no_repeat_ngram = x as usize;
    }
    if let Some(b) = kw.get("logit_bias").and_then(|v| v.as_array()) {
        s.logit_bias = b
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
            .collect();
    }
    let eos = kw
        .get("eos_token_id")
        .and_then(|v| v.as_u64())
        .map(|e| vec![e as u32])
        .unwrap_or_default();
    let mut o = GenerateOptions::new(n, s, eos);
    if let Some(b) = kw.get("num_beams").and_then(|v| v.as_u64()) {
        let early_stopping = match kw.get("early_stopping") {
            Some(Value::Bool(true)) => EarlyStopping::True,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        };
        o.strategy = Strategy::Beam(BeamParams {
            num_beams: b as usize,
            num_return: kw["num_return_sequences"].as_u64().unwrap() as usize,
            length_penalty: f("length_penalty").unwrap_or(1.0) as f32,
            early_stopping,
        });
    }
    if let Some(a) = f("penalty_alpha") {
        o.strategy = Strategy::ContrastiveSearch {
            penalty_alpha: a as f32,
            top_k: kw["top_k"].as_u64().unwrap() as usize,
        };
    }
    o
}

#[test]
fn decoding_matches_transformers() {
    let refs = read_json(&fixture("decoding/hf_generate.json"));
    let mut failures = Vec::new();
    let mut checked = 0;
    for m in refs["models"].as_array().unwrap() {
        let name = m["model"].as_str().unwrap();
        let file = load(&fixture(&format!("hf/{name}"))).unwrap();
        let model = Model::new(&file).unwrap();
        let prompt = u32s(&m["prompt_ids"]);
        let n = m["max_new_tokens"].as_u64().unwrap() as usize;
        for case in m["cases"].as_array().unwrap() {
            let cname = case["name"].as_str().unwrap();
            let opts = options(&case["kwargs"], n);
            let mut state = model.new_state(256);
            let g = generate(&model, &file.tokenizer, &mut state, &prompt, &opts, &mut |_| {}).unwrap();
            // HF pads sequences that ended early with the pad id (0 is falsy there, so the EOS): cut
            // each after its first EOS.
            let eos = &opts.eos_ids;
            let want: Vec<Vec<u32>> = case["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let t = u32s(t);
                    match t.iter().position(|x| eos.contains(x)) {
                        Some(p) => t[..=p].to_vec(),
                        None => t,
                    }
                })
                .collect();
            let got: Vec<Vec<u32>> = if g.sequences.is_empty() {
                vec![g.tokens.clone()]
            } else {
                g.sequences.iter().map(|s| s.tokens.clone()).collect()
            };
            if got != want {
                failures.push(format!("{name} {cname}: tokens\n  got  {got:?}\n  want {want:?}"));
            }
            if let Some(scores) = case.get("scores") {
                for (s, w) in g.sequences.iter().zip(scores.as_array().unwrap()) {
                    let w = w.as_f64().unwrap() as f32;
                    if (s.score - w).abs() > 1e-3 * w.abs().max(1.0) {
                        failures.push(format!("{name} {cname}: score {} vs {w}", s.score));
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 30);
}
