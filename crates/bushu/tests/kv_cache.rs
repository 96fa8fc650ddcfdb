//! Incremental decoding with the KV cache gives the logits of recomputing the whole sequence
//! (lecture §2), on GGUF models of every stored type.

mod common;
use bushu::model::llama::Logits;
use bushu::model::{load, Model};
use common::shared;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(file: &str) {
    let f = load(&shared(file)).unwrap();
    let model = Model::new(&f).unwrap();
    let vocab = model.config.vocab_size;
    let ids = [
        1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889, 3118,
    ];
    let tokens: Vec<u32> = ids.iter().map(|&t: &u32| t % vocab as u32).collect();
    // Whole sequence at once.
    let mut full = model.new_state(64);
    let all = model.forward(&mut full, &tokens, Logits::All).unwrap().to_vec();
    // Prefill of the first 5, then one token at a time.
    let mut inc = model.new_state(64);
    let first = model.forward(&mut inc, &tokens[..5], Logits::All).unwrap().to_vec();
    assert!(max_abs(&first, &all[..5 * vocab]) <= 1e-4);
    for (i, &t) in tokens.iter().enumerate().skip(5) {
        let step = model.forward(&mut inc, &[t], Logits::Last).unwrap();
        let err = max_abs(step, &all[i * vocab..(i + 1) * vocab]);
        assert!(
            err <= 1e-4,
            "{file}: position {i}: incremental differs from full by {err}"
        );
    }
    assert_eq!(inc.pos(), tokens.len());
}

#[test]
fn incremental_equals_full_f16() {
    check("models/tiny-llama-f16.gguf");
}

#[test]
fn incremental_equals_full_q8_0() {
    check("models/tiny-llama-q8_0.gguf");
}

#[test]
fn incremental_equals_full_q4_0() {
    check("models/tiny-llama-q4_0.gguf");
}

#[test]
fn incremental_equals_full_gqa() {
    check("models/shakespeare/shakespeare-expert-f16.gguf");
}

#[test]
fn context_overflow_is_an_error() {
    let f = load(&shared("models/tiny-llama-f16.gguf")).unwrap();
    let model = Model::new(&f).unwrap();
    let mut s = model.new_state(4);
    let e = model.forward(&mut s, &[1, 2, 3, 4, 5], Logits::Last).err().unwrap();
    assert!(e.to_string().contains("context is full"), "{e}");
    let e = model.forward(&mut s, &[40000], Logits::Last).err().unwrap();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}
