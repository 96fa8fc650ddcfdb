//! Mutation fuzzing on stable Rust, kept in the project: a deterministic harness (xorshift, a fixed
//! seed per target) mutates seed inputs and feeds them to each parser, and fails on the first panic,
//! saving the input under `$CARGO_TARGET_DIR/tmp/fuzz-findings/`. Seeds: the committed corpus in
//! `tests/fuzz/corpus/` (requests, chat templates) and the test models of `../shared` (GGUF, a Hugging
//! Face directory), plus a llama2.c checkpoint made here.
//!
//! Targets and what must hold beyond "no panic":
//! - `gguf`: parse + load + one forward pass; a model that loads gives finite logits or an error.
//! - `hf`: a Hugging Face directory whose `config.json`, `tokenizer.json`, `tokenizer_config.json` or
//!   safetensors header is mutated: load + one forward pass.
//! - `llama2c`: a llama2.c checkpoint and `tokenizer.bin`: load + one forward pass.
//! - `template`: a chat template: compile + render a fixed conversation.
//! - `request`: the server's request JSON → engine parameters path ([`bushu::server::api`]); a request
//!   that passes satisfies the limits (1 <= max_tokens, prompt + max_tokens <= context, n in 1..=16,
//!   logit_bias ids in the vocabulary, at most 4 stops).
//!
//! Each target runs for `BUSHU_FUZZ_SECS` seconds (default 3; CI) or `BUSHU_FUZZ_ITERS` executions,
//! whichever ends first. The long run (docs/RELIABILITY.md):
//! `BUSHU_FUZZ_SECS=600 cargo test --release -p bushu --test fuzz -- --nocapture --test-threads 1`.

mod common;

use bushu::model::{Logits, ModelOptions};
use common::{shared, TempDir};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break sizes and counts.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    7,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// One to four byte-level mutations of `data`, within `data[..limit]` where the structure lives
/// (headers), plus now and then a truncation.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, limit: usize) {
    let limit = limit.min(data.len()).max(1);
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            data.push(0);
        }
        let at = rng.below(limit.min(data.len()));
        match rng.below(8) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = INTERESTING[rng.below(INTERESTING.len())] as u8,
            2 | 3 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1usize, 2, 4, 8][rng.below(4)];
                for (i, b) in v.to_le_bytes()[..w].iter().enumerate() {
                    if let Some(x) = data.get_mut(at + i) {
                        *x = *b;
                    }
                }
            }
            4 => {
                let n = 1 + rng.below(16);
                let end = (at + n).min(data.len());
                data.drain(at..end);
            }
            5 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            6 => {
                // Copy a chunk elsewhere (repeated structures).
                let n = 1 + rng.below(32);
                let from = rng.below(data.len());
                let chunk: Vec<u8> = data[from..(from + n).min(data.len())].to_vec();
                let to = rng.below(data.len());
                for (i, b) in chunk.into_iter().enumerate() {
                    if let Some(x) = data.get_mut(to + i) {
                        *x = b;
                    }
                }
            }
            _ => {
                let keep = rng.below(data.len());
                data.truncate(keep);
            }
        }
    }
}

/// A mutation of a JSON value: a leaf replaced by an extreme or wrongly typed value, a key renamed,
/// removed or added, an array cut or grown.
fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    let extreme = |rng: &mut Rng| -> Value {
        match rng.below(12) {
            0 => Value::Null,
            1 => serde_json::json!(-1),
            2 => serde_json::json!(0),
            3 => serde_json::json!(1e308),
            4 => serde_json::json!(-1e308),
            5 => serde_json::json!(u64::MAX),
            6 => serde_json::json!(i64::MIN),
            7 => serde_json::json!(""),
            8 => serde_json::json!("\u{1b}[31m\r\n\u{0}"),
            9 => serde_json::json!([]),
            10 => serde_json::json!({}),
            _ => serde_json::json!(2.5),
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() && depth < 4 => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(6) {
                0 => {
                    m.remove(&k);
                }
                1 => {
                    let x = m.remove(&k).unwrap();
                    m.insert(format!("{k}{}", rng.below(3)), x);
                }
                2 => {
                    m.insert(k, extreme(rng));
                }
                _ => mutate_json(rng, m.get_mut(&k).unwrap(), depth + 1),
            }
        }
        Value::Array(a) if !a.is_empty() && depth < 4 => match rng.below(4) {
            0 => a.truncate(rng.below(a.len())),
            1 => {
                let x = a[rng.below(a.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    a.push(x.clone());
                }
            }
            _ => {
                let i = rng.below(a.len());
                mutate_json(rng, &mut a[i], depth + 1)
            }
        },
        _ => *v = extreme(rng),
    }
}

/// Runs `exec` on mutations of `seeds` until the time or iteration budget ends; panics (with the
/// saved input's path) on the first panic of `exec`. Returns the number of executions.
fn fuzz(target: &str, seeds: &[Vec<u8>], mut mutate: impl FnMut(&mut Rng, &mut Vec<u8>), exec: impl Fn(&[u8])) -> u64 {
    let secs: f64 = std::env::var("BUSHU_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let iters: u64 = std::env::var("BUSHU_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let seed = target.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed);
    let t = Instant::now();
    let mut n = 0u64;
    // The seeds themselves first, then mutations.
    let mut inputs = seeds.iter().cloned();
    while n < iters && t.elapsed() < Duration::from_secs_f64(secs) {
        let input = inputs.next().unwrap_or_else(|| {
            let mut d = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut d);
            d
        });
        if catch_unwind(AssertUnwindSafe(|| exec(&input))).is_err() {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("{target}-{n}"));
            std::fs::write(&p, &input).unwrap();
            panic!(
                "fuzz target {target}: a panic on execution {n}; input saved to {}",
                p.display()
            );
        }
        n += 1;
    }
    eprintln!(
        "fuzz {target}: {n} executions in {:.1} s, no panic",
        t.elapsed().as_secs_f64()
    );
    n
}

/// Loads a model path and, if it loads and builds, runs one token: logits finite or an error.
fn load_and_run(path: &Path) {
    let Ok(file) = bushu::model::load(path) else { return };
    let opts = ModelOptions {
        background_packing: false,
        ..ModelOptions::default()
    };
    let Ok(model) = opts.build(&file) else { return };
    let ctx = model.config.max_ctx.clamp(1, 8);
    let mut st = model.new_state(ctx);
    let token = file
        .tokenizer
        .bos_id()
        .unwrap_or(0)
        .min(model.config.vocab_size as u32 - 1);
    if let Ok(logits) = model.forward(&mut st, &[token], Logits::Last) {
        assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits returned as Ok");
    }
}

#[test]
fn fuzz_gguf() {
    let dir = TempDir::new("fuzz-gguf");
    let seeds: Vec<Vec<u8>> = [
        "models/shakespeare/shakespeare-amateur-f16.gguf",
        "models/shakespeare/shakespeare-amateur-q8_0.gguf",
    ]
    .iter()
    .map(|p| std::fs::read(shared(p)).unwrap())
    .collect();
    // Mutations go where the metadata and tensor table are: the first 200 KiB.
    let path = dir.0.join("m.gguf");
    fuzz(
        "gguf",
        &seeds,
        |r, d| mutate_bytes(r, d, 200 << 10),
        |b| {
            std::fs::write(&path, b).unwrap();
            load_and_run(&path);
        },
    );
}

#[test]
fn fuzz_hf_directory() {
    let src = shared("models/shakespeare/shakespeare-amateur-hf");
    let dir = TempDir::new("fuzz-hf");
    let names = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ];
    // A seed is one of the files, tagged by its index in the first byte.
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut v = vec![i as u8];
            v.extend(std::fs::read(src.join(n)).unwrap());
            v
        })
        .collect();
    let reset = || {
        for n in names.iter().chain(["generation_config.json", "tokenizer.model"].iter()) {
            let _ = std::fs::remove_file(dir.0.join(n));
            std::fs::copy(src.join(n), dir.0.join(n)).unwrap();
        }
    };
    reset();
    fuzz(
        "hf",
        &seeds,
        |r, d| {
            let (tag, body) = (d[0], &d[1..]);
            let mut body = body.to_vec();
            let is_json = (tag as usize) < 3;
            match serde_json::from_slice::<Value>(&body) {
                Ok(mut v) if is_json && r.below(3) > 0 => {
                    mutate_json(r, &mut v, 0);
                    body = serde_json::to_vec(&v).unwrap();
                }
                // The safetensors header (8-byte length + JSON) or the JSON text's bytes.
                _ => {
                    let limit = if is_json { body.len() } else { 8 + 4096 };
                    mutate_bytes(r, &mut body, limit)
                }
            }
            d.truncate(1);
            d.extend(body);
        },
        |b| {
            let name = names[(b[0] as usize).min(names.len() - 1)];
            std::fs::write(dir.0.join(name), &b[1..]).unwrap();
            load_and_run(&dir.0);
            std::fs::copy(src.join(name), dir.0.join(name)).unwrap();
        },
    );
}

/// A llama2.c checkpoint (v0: a header of 7 i32, then f32 weights; shared classifier when the vocab
/// size is positive) with dim 8, one layer, 32 tokens, and a `tokenizer.bin` for its 32 tokens.
fn llama2c_seed() -> (Vec<u8>, Vec<u8>) {
    let (dim, hidden, layers, heads, kv, vocab, seq) = (8usize, 16usize, 1usize, 2usize, 2usize, 32usize, 16usize);
    let mut out = Vec::new();
    for v in [dim, hidden, layers, heads, kv, vocab, seq] {
        out.extend((v as i32).to_le_bytes());
    }
    let head = dim / heads;
    let n = vocab * dim
        + layers * (dim + dim * dim + 2 * dim * kv * head + dim * dim + dim + 3 * dim * hidden)
        + dim
        + seq * head; // the unused RoPE tables
    let mut rng = Rng(7);
    for _ in 0..n {
        out.extend(((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes());
    }
    let mut tok = Vec::new();
    tok.extend(8u32.to_le_bytes());
    for i in 0..vocab {
        let text = match i {
            0 => "<unk>".to_string(),
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            i => format!("t{i}"),
        };
        tok.extend((i as f32).to_le_bytes());
        tok.extend((text.len() as i32).to_le_bytes());
        tok.extend(text.as_bytes());
    }
    (out, tok)
}

#[test]
fn fuzz_llama2c() {
    let dir = TempDir::new("fuzz-llama2c");
    let (model, tok) = llama2c_seed();
    // Tag 0: the checkpoint, 1: the tokenizer.
    let seeds = vec![[&[0u8][..], &model].concat(), [&[1u8][..], &tok].concat()];
    let (mp, tp) = (dir.0.join("model.bin"), dir.0.join("tokenizer.bin"));
    let n = fuzz(
        "llama2c",
        &seeds,
        |r, d| {
            let mut body = d[1..].to_vec();
            let limit = if d[0] == 0 { 64 } else { body.len() };
            mutate_bytes(r, &mut body, limit);
            d.truncate(1);
            d.extend(body);
        },
        |b| {
            let (m, t) = if b[0] == 0 {
                (&b[1..], &tok[..])
            } else {
                (&model[..], &b[1..])
            };
            std::fs::write(&mp, m).unwrap();
            std::fs::write(&tp, t).unwrap();
            load_and_run(&mp);
        },
    );
    // The seed itself loads and runs (the harness exercises the real path, not an early error).
    assert!(n >= 2);
    std::fs::write(&mp, &model).unwrap();
    std::fs::write(&tp, &tok).unwrap();
    let f = bushu::model::load(&mp).expect("the llama2.c seed loads");
    assert_eq!(f.config.vocab_size, 32);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn fuzz_chat_template() {
    use bushu::chat::{ChatTemplate, Message};
    let mut seeds = corpus("template");
    for e in std::fs::read_dir(shared("testdata/templates")).unwrap() {
        seeds.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hello {{ there }} {% raw %}"),
        Message::new("assistant", "Hi."),
        Message::new("user", "\u{1b}[2J and \r\n"),
    ];
    fuzz(
        "template",
        &seeds,
        |r, d| mutate_bytes(r, d, usize::MAX),
        |b| {
            let Ok(src) = std::str::from_utf8(b) else { return };
            if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
                let _ = t.render(&conversation, true);
                let _ = t.render(&conversation[..1], false);
            }
        },
    );
}

#[test]
fn fuzz_request() {
    use bushu::server::api::{self, ChatRequest, CompletionRequest, Prompted};
    let seeds = corpus("request");
    assert!(
        seeds.iter().all(|s| serde_json::from_slice::<Value>(s).is_ok()),
        "the request corpus is JSON"
    );
    let (max_model_len, vocab) = (64usize, 100usize);
    fuzz(
        "request",
        &seeds,
        |r, d| match serde_json::from_slice::<Value>(d) {
            Ok(mut v) if r.below(4) > 0 => {
                for _ in 0..1 + r.below(3) {
                    mutate_json(r, &mut v, 0);
                }
                *d = serde_json::to_vec(&v).unwrap();
            }
            _ => mutate_bytes(r, d, usize::MAX),
        },
        |b| {
            let prompted = |tokens: Vec<u32>| Prompted {
                tokens,
                max_default: 16,
                max_model_len,
                vocab,
                generation: Default::default(),
                prompt_name: "prompt",
                logprobs: None,
                stop_ids: Vec::new(),
            };
            let plan = if let Ok(r) = api::parse_request::<CompletionRequest>(b, api::COMPLETION_FIELDS) {
                api::plan(&r.common, prompted(vec![1; 1 + b.len() % 70]))
            } else if let Ok(r) = api::parse_request::<ChatRequest>(b, api::CHAT_FIELDS) {
                for m in &r.messages {
                    let _ = (m.role(), m.text());
                }
                api::plan(&r.common, prompted(vec![1; 1 + b.len() % 70]))
            } else {
                return;
            };
            if let Ok(p) = plan {
                assert!((1..=16).contains(&p.n) && p.requests.len() == p.n);
                assert!(p.stops.len() <= 4 && p.stops.iter().all(|s| !s.is_empty()));
                for q in &p.requests {
                    assert!(
                        q.max_tokens >= 1 && q.prompt.len() + q.max_tokens <= max_model_len,
                        "{}",
                        q.max_tokens
                    );
                    assert!(q.sampling.validate().is_ok());
                    assert!(q
                        .sampling
                        .logit_bias
                        .iter()
                        .all(|&(id, b)| (id as usize) < vocab && b.abs() <= 100.0));
                }
            }
        },
    );
}

/// The harness itself: a target that panics on some inputs is reported, with the input saved.
#[test]
#[should_panic(expected = "fuzz target selftest: a panic on execution")]
fn harness_reports_a_panic() {
    let seeds = vec![vec![1u8, 2, 3, 4]];
    fuzz(
        "selftest",
        &seeds,
        |r, d| mutate_bytes(r, d, usize::MAX),
        |b| {
            assert!(!b.contains(&0xff), "found it");
        },
    );
}
