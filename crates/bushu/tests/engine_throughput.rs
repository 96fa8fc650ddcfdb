//! Decode throughput of the engine at batch 1, 4 and 16 against the single-sequence loop (ignored by
//! default: `cargo test --release -p bushu --test engine_throughput -- --ignored --nocapture`;
//! `BUSHU_BENCH_MODEL=path` for another model).

use bushu::engine::{Engine, EngineConfig, Request};
use bushu::model::llama::Logits;
use bushu::model::{load, Model};
use std::path::PathBuf;
use std::time::Instant;

#[test]
#[ignore]
fn throughput_batch_1_4_16() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models");
    let paths = match std::env::var("BUSHU_BENCH_MODEL") {
        Ok(p) => vec![PathBuf::from(p)],
        Err(_) => vec![
            dir.join("tiny-llama-q8_0.gguf"),
            dir.join("shakespeare/shakespeare-expert-f16.gguf"),
        ],
    };
    let (prompt_len, gen) = (128, 128);
    for path in paths {
        let file = load(&path).unwrap();
        let vocab = file.config.vocab_size as u32;
        let prompt = |i: u32| {
            (0..prompt_len as u32)
                .map(|t| 3 + (t * 7919 + i * 104729) % (vocab - 3))
                .collect::<Vec<u32>>()
        };
        // Baseline: Model::forward, one sequence.
        let model = Model::new(&file).unwrap();
        let mut state = model.new_state(prompt_len + gen + 1);
        let t0 = Instant::now();
        let mut t = kernels::ops::argmax(model.forward(&mut state, &prompt(0), Logits::Last).unwrap()) as u32;
        let t1 = Instant::now();
        for _ in 1..gen {
            t = kernels::ops::argmax(model.forward(&mut state, &[t], Logits::Last).unwrap()) as u32;
        }
        let base = (gen - 1) as f64 / t1.elapsed().as_secs_f64();
        println!(
            "{}: Model::forward alone: prefill {:.0} tok/s, decode {base:.1} tok/s",
            path.file_name().unwrap().to_string_lossy(),
            prompt_len as f64 / (t1 - t0).as_secs_f64()
        );
        for batch in [1usize, 4, 16] {
            let model = Model::new(&file).unwrap();
            let mut cfg = EngineConfig::for_model(&model, batch, Some(prompt_len + gen + 16), None);
            cfg.max_batched_tokens = 512;
            let mut e = Engine::new(model, Vec::new(), cfg);
            let reqs: Vec<Request> = (0..batch as u32)
                .map(|i| Request {
                    ignore_eos: true,
                    ..Request::greedy(prompt(i + 1), gen)
                })
                .collect();
            for r in reqs {
                e.add(r).unwrap();
            }
            let t0 = Instant::now();
            let (mut decoded, mut t_first) = (0usize, None);
            while e.has_work() {
                let out = e.step().unwrap();
                // Steps after every prompt is in: pure decode.
                if t_first.is_none() && e.sched.seqs.values().all(|s| s.num_generated() > 0) {
                    t_first = Some(Instant::now());
                    continue;
                }
                if t_first.is_some() {
                    decoded += out.iter().map(|o| o.tokens.len()).sum::<usize>();
                }
            }
            let total = t0.elapsed().as_secs_f64();
            let dec = decoded as f64 / t_first.unwrap().elapsed().as_secs_f64();
            println!(
                "  engine batch {batch:2}: decode {dec:7.1} tok/s ({:.2}x alone), end to end {:7.1} tok/s generated",
                dec / base,
                (batch * gen) as f64 / total
            );
        }
    }
}
