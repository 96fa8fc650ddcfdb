//! The serving engine computes what the single-sequence forward pass computes, bit for bit: whatever a
//! request is batched with, however its prompt is chunked, whether its prefix comes from the cache,
//! and after preemption and recompute.

use bushu::engine::model_runner::{ModelRunner, SeqInput};
use bushu::engine::{Engine, EngineConfig, Request};
use bushu::model::llama::Logits;
use bushu::model::{load, Model, ModelFile};
use kernels::{matmul_with, Precision};
use std::path::PathBuf;

fn models() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    vec![
        dir.join("tiny-llama-q8_0.gguf"),
        dir.join("shakespeare/shakespeare-expert-f16.gguf"),
    ]
}

fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            3 + ((s >> 33) as usize % (vocab - 3)) as u32
        })
        .collect()
}

fn engine(file: &ModelFile, max_batch: usize, budget: usize, num_blocks: usize, prefix: bool) -> Engine {
    let model = Model::new(file).unwrap();
    let mut cfg = EngineConfig::for_model(&model, max_batch, Some(512), None);
    cfg.max_batched_tokens = budget;
    cfg.num_blocks = num_blocks;
    cfg.max_model_len = cfg.max_model_len.min(num_blocks * cfg.block_size);
    cfg.prefix_caching = prefix;
    Engine::new(model, file.eos_ids.clone(), cfg)
}

fn req(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        ignore_eos: true,
        ..Request::greedy(prompt, max_tokens)
    }
}

/// `matmul_with` over n tokens gives each token's row exactly as a call with that token alone.
#[test]
fn matmul_rows_do_not_depend_on_batch() {
    for path in models() {
        let file = load(&path).unwrap();
        let model = Model::new(&file).unwrap();
        let lw = &model.weights.layers[0];
        for w in [&lw.wq, &lw.wk, &lw.w_down, &model.weights.output] {
            let m = w.matrix();
            for precision in [Precision::Fast, Precision::Exact] {
                for n in [2, 5, 16] {
                    let x: Vec<f32> = tokens(n as u64, n * m.cols, 1000)
                        .iter()
                        .map(|&t| t as f32 / 500.0 - 1.0)
                        .collect();
                    let mut y = vec![0.0; n * m.rows];
                    matmul_with(&m, &x, &mut y, precision);
                    for t in 0..n {
                        let mut y1 = vec![0.0; m.rows];
                        matmul_with(&m, &x[t * m.cols..(t + 1) * m.cols], &mut y1, precision);
                        let row = &y[t * m.rows..(t + 1) * m.rows];
                        assert!(
                            row.iter().zip(&y1).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{}: row {t} of {n}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}

/// The runner's logits equal `Model::forward`'s bit for bit: a prompt in three chunks batched with
/// another sequence, then decode steps.
#[test]
fn runner_logits_equal_model_forward() {
    for path in models() {
        let file = load(&path).unwrap();
        let model = Model::new(&file).unwrap();
        let vocab = model.config.vocab_size;
        let prompt = tokens(1, 40, vocab);
        let other = tokens(2, 70, vocab);
        let mut state = model.new_state(256);
        let all = model.forward(&mut state, &prompt, Logits::All).unwrap().to_vec();

        let mut runner = ModelRunner::new(Model::new(&file).unwrap(), 16, 32);
        let (ta, tb): (Vec<u32>, Vec<u32>) = ((10..20).rev().collect(), (0..10).collect());
        for (lo, hi) in [(0, 13), (13, 29), (29, 40)] {
            let other_chunk = &other[lo..hi + 20];
            let out = runner
                .forward(&[
                    SeqInput {
                        tokens: other_chunk,
                        pos0: lo,
                        block_table: &tb,
                        logits: Logits::Last,
                        tree: None,
                    },
                    SeqInput {
                        tokens: &prompt[lo..hi],
                        pos0: lo,
                        block_table: &ta,
                        logits: Logits::Last,
                        tree: None,
                    },
                ])
                .unwrap();
            let want = &all[(hi - 1) * vocab..hi * vocab];
            assert!(
                out[vocab..].iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} prefill to {hi}",
                path.display()
            );
        }
        let mut next = kernels::ops::argmax(&all[39 * vocab..]) as u32;
        for step in 0..8 {
            let want = model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
            let pos = 40 + step;
            let out = runner
                .forward(&[
                    SeqInput {
                        tokens: &[next],
                        pos0: pos,
                        block_table: &ta,
                        logits: Logits::Last,
                        tree: None,
                    },
                    SeqInput {
                        tokens: &other[pos..pos + 1],
                        pos0: pos,
                        block_table: &tb,
                        logits: Logits::Last,
                        tree: None,
                    },
                ])
                .unwrap();
            assert!(
                out[..vocab].iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} decode {step}",
                path.display()
            );
            next = kernels::ops::argmax(&want) as u32;
        }
    }
}

/// 16 requests together (chunked, mixed with decodes) give each request's output alone, and the
/// output of the plain `Model::forward` greedy loop.
#[test]
fn batched_equals_alone() {
    for path in models() {
        let file = load(&path).unwrap();
        let vocab = file.config.vocab_size;
        let reqs: Vec<Request> = (0..16)
            .map(|i| req(tokens(100 + i, 5 + 7 * i as usize, vocab), 12 + i as usize % 5))
            .collect();
        let together = engine(&file, 16, 48, 128, true).generate(reqs.clone()).unwrap();
        let mut alone_engine = engine(&file, 1, 512, 128, false);
        for (r, got) in reqs.iter().zip(&together) {
            let alone = alone_engine.generate(vec![r.clone()]).unwrap().remove(0);
            assert_eq!(&alone, got, "{}", path.display());
            assert_eq!(got.len(), r.max_tokens);
        }
        // And the single-sequence forward pass, for two of them.
        let model = Model::new(&file).unwrap();
        for i in [0, 15] {
            let mut state = model.new_state(512);
            let mut t = kernels::ops::argmax(model.forward(&mut state, &reqs[i].prompt, Logits::Last).unwrap()) as u32;
            let mut out = vec![t];
            while out.len() < reqs[i].max_tokens {
                t = kernels::ops::argmax(model.forward(&mut state, &[t], Logits::Last).unwrap()) as u32;
                out.push(t);
            }
            assert_eq!(out, together[i], "{}: Model::forward vs engine", path.display());
        }
    }
}

/// Requests sharing a long prefix give the same output with the prefix cache on and off; with it on,
/// most of their prompts come from the cache.
#[test]
fn prefix_cache_on_off_identical() {
    for path in models() {
        let file = load(&path).unwrap();
        let vocab = file.config.vocab_size;
        let shared = tokens(7, 50, vocab);
        let reqs: Vec<Request> = (0..6)
            .map(|i| {
                let mut p = shared.clone();
                p.extend(tokens(200 + i, 3 + i as usize, vocab));
                req(p, 10)
            })
            .collect();
        let mut on = engine(&file, 8, 64, 64, true);
        let first = on.generate(vec![reqs[0].clone()]).unwrap();
        let rest = on.generate(reqs[1..].to_vec()).unwrap();
        let hits = on.gauges().prefix_hit_tokens;
        assert!(hits >= 5 * 48, "prefix cache hit only {hits} tokens");
        let off = engine(&file, 8, 64, 64, false).generate(reqs.clone()).unwrap();
        assert_eq!(first[0], off[0]);
        assert_eq!(rest, off[1..].to_vec(), "{}", path.display());
        // The same prompt again: everything but its last block comes from the cache.
        let again = on.generate(vec![reqs[3].clone()]).unwrap();
        assert_eq!(again[0], off[3]);
    }
}

/// A KV cache far smaller than the load: sequences are preempted and recomputed, and still produce
/// exactly their outputs alone; every block is free at the end.
#[test]
fn preemption_under_tiny_kv_budget() {
    for path in models() {
        let file = load(&path).unwrap();
        let vocab = file.config.vocab_size;
        let reqs: Vec<Request> = (0..8)
            .map(|i| req(tokens(300 + i, 20 + 3 * i as usize, vocab), 30))
            .collect();
        for prefix in [true, false] {
            // 8 blocks of 16 = 128 positions for 8 sequences of ~70.
            let mut e = engine(&file, 8, 64, 8, prefix);
            let got = e.generate(reqs.clone()).unwrap();
            let g = e.gauges();
            assert!(g.preemptions > 0, "no preemption happened");
            assert_eq!(g.kv_blocks_free, 8);
            let mut alone = engine(&file, 1, 512, 8, false);
            for (r, out) in reqs.iter().zip(&got) {
                assert_eq!(
                    out,
                    &alone.generate(vec![r.clone()]).unwrap()[0],
                    "{} prefix {prefix}",
                    path.display()
                );
            }
        }
    }
}

/// Cancelling a sequence mid-generation frees its blocks at once.
#[test]
fn abort_frees_blocks() {
    let file = load(&models()[0]).unwrap();
    let mut e = engine(&file, 4, 64, 32, false);
    let a = e.add(req(tokens(1, 40, 1000), 100)).unwrap();
    let b = e.add(req(tokens(2, 40, 1000), 5)).unwrap();
    for _ in 0..3 {
        e.step().unwrap();
    }
    assert!(e.gauges().kv_blocks_free < 32 - 4);
    assert!(e.abort(a));
    assert!(!e.abort(a));
    while e.has_work() {
        e.step().unwrap();
    }
    let _ = b;
    assert_eq!(e.gauges().kv_blocks_free, 32);
}
