//! Logits and greedy tokens of random-weight Hugging Face models (Llama with GQA and llama3 RoPE
//! scaling, Llama with linear scaling, Qwen2 with biases and tied embeddings, Mistral) against
//! HF transformers (fixtures made by scripts/refs/make_hf_fixtures.py), and a Gemma 3 (local and global
//! layers, QK-norm, sandwich norms, GeGLU, query_pre_attn_scalar; scripts/refs/make_gemma3_refs.py).

mod common;
use bushu::model::llama::Logits;
use bushu::model::{load, Model};
use common::{f32s, fixture, read_json, u32s};

fn check(name: &str) {
    check_dir(name, &fixture(&format!("hf/{name}")));
}

fn check_dir(name: &str, dir: &std::path::Path) {
    let r = read_json(&dir.join("reference.json"));
    let f = load(dir).unwrap();
    let model = Model::new(&f).unwrap();
    let vocab = model.config.vocab_size;
    let prompt = u32s(&r["prompt_ids"]);
    let mut state = model.new_state(128);
    let all = model.forward(&mut state, &prompt, Logits::All).unwrap().to_vec();
    let positions = u32s(&r["logits_positions"]);
    let mut worst = 0.0f32;
    for (p, expect) in positions.iter().zip(r["logits"].as_array().unwrap()) {
        let expect = f32s(expect);
        let got = &all[*p as usize * vocab..(*p as usize + 1) * vocab];
        let err = got.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        worst = worst.max(err);
    }
    assert!(worst <= 1e-3, "{name}: logits differ from transformers by {worst}");

    // Greedy continuation.
    let expect = u32s(&r["greedy"]);
    let mut state = model.new_state(128);
    let mut logits = model.forward(&mut state, &prompt, Logits::Last).unwrap().to_vec();
    let mut got = Vec::new();
    for _ in 0..expect.len() {
        let next = kernels::ops::argmax(&logits) as u32;
        got.push(next);
        logits = model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
    }
    assert_eq!(got, expect, "{name}: greedy tokens differ from transformers");
}

#[test]
fn llama3_gqa_rope_scaling() {
    check("llama3-gqa");
}

#[test]
fn llama_linear_rope_scaling() {
    check("llama-linear");
}

#[test]
fn qwen2_bias_tied() {
    check("qwen2-tied");
}

#[test]
fn mistral() {
    check("mistral");
}

#[test]
fn mistral_sliding_window() {
    check("mistral-swa");
    // The window matters on this prompt: attending to everything gives other logits.
    let mut f = load(&fixture("hf/mistral-swa")).unwrap();
    assert_eq!(f.config.sliding_window, Some(5));
    let r = read_json(&fixture("hf/mistral-swa/reference.json"));
    let prompt = u32s(&r["prompt_ids"]);
    let last = f32s(&r["logits"][2]);
    f.config.sliding_window = None;
    let model = Model::new(&f).unwrap();
    let mut st = model.new_state(64);
    let got = model.forward(&mut st, &prompt, Logits::Last).unwrap();
    let diff = got.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(
        diff > 1e-2,
        "full attention gives the windowed logits (diff {diff}): the fixture does not test the window"
    );
}

/// Gemma3ForCausalLM: layer 0 local (window 4, RoPE base 10000), layer 1 global (base 1e6), queries
/// scaled by query_pre_attn_scalar^-1/2 (not head_dim's), norms stored minus one.
#[test]
fn gemma3_local_global() {
    let dir = fixture("gemma3/hf");
    check_dir("gemma3-tiny", &dir);
    let f = load(&dir).unwrap();
    let c = &f.config;
    assert_eq!((c.sliding_window, c.rope_theta), (Some(4), 1e6));
    assert_eq!(c.block.rope_theta_local, Some(1e4));
    assert_eq!(c.block.local_layers, [true, false]);
    // The window matters on this prompt (12 tokens, window 4): without it the logits differ.
    let r = read_json(&dir.join("reference.json"));
    let prompt = u32s(&r["prompt_ids"]);
    let last = f32s(&r["logits"][2]);
    let mut f = f;
    f.config.sliding_window = None;
    let model = Model::new(&f).unwrap();
    let mut st = model.new_state(64);
    let got = model.forward(&mut st, &prompt, Logits::Last).unwrap();
    let diff = got.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff > 1e-2, "full attention gives the windowed logits (diff {diff})");
}
