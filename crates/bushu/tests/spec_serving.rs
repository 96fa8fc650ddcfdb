//! Speculative decoding inside the serving engine (issue 18): with every proposer (prompt lookup, a
//! draft model in its own paged cache, self-speculation), 8 concurrent sequences generate token for
//! token what the engine generates without speculation — greedy and sampled, with and without the
//! prefix cache, under preemption — while drafts are accepted; a draft model equal to the target is
//! always accepted; lookup and a draft model combined (both drafting) change nothing either; no block
//! is leaked; `bushu serve --lookup` reports `timings.draft_n` and the
//! `spec_decode` counters.

mod common;
use bushu::engine::{Engine, EngineConfig, Request};
use bushu::model::{load, Model, ModelFile};
use bushu::sampling::SamplingParams;
use bushu::server::{ServeOptions, Server};
use bushu::spec_decode::serving::{draft_runner, Method, SpecCounters, Speculator};
use bushu::spec_decode::{DraftLengthParams, PromptLookup, SpecOptions, Speculation};
use common::http::request;
use common::shared;
use serde_json::{json, Value};

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const AMATEUR: &str = "models/shakespeare/shakespeare-amateur-f16.gguf";

const PROMPTS: [&str; 8] = [
    "ROMEO: But soft, what light through yonder window breaks? ROMEO: But soft, what light",
    "KING HENRY: Once more unto the breach, dear friends, once more;",
    "First Citizen: Before we proceed any further, hear me speak.",
    "HAMLET: To be, or not to be, that is the question. HAMLET: To be, or not",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "MACBETH: Tomorrow, and tomorrow, and tomorrow,",
    "PORTIA: The quality of mercy is not strained;",
    "BRUTUS: There is a tide in the affairs of men,",
];

fn open(rel: &str) -> ModelFile {
    load(&shared(rel)).unwrap()
}

struct Setup {
    blocks: usize,
    prefix: bool,
}

fn engine(file: &ModelFile, s: &Setup) -> Engine {
    let model = Model::new(file).unwrap();
    let mut cfg = EngineConfig::for_model(&model, 8, Some(256), None);
    // Small blocks: drafts and their rewinds cross block boundaries.
    cfg.block_size = 4;
    cfg.num_blocks = s.blocks;
    cfg.max_model_len = 256;
    cfg.prefix_caching = s.prefix;
    Engine::new(model, Vec::new(), cfg)
}

fn requests(file: &ModelFile, sampled: bool) -> Vec<Request> {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt = file.tokenizer.encode(p, true).unwrap();
            let mut r = Request::greedy(prompt, 40 + 3 * i);
            r.ignore_eos = true;
            if sampled && i % 2 == 1 {
                r.sampling = SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    seed: 7 + i as u64,
                    ..Default::default()
                };
            }
            r
        })
        .collect()
}

fn length() -> DraftLengthParams {
    DraftLengthParams {
        max: 6,
        ..DraftLengthParams::default()
    }
}

/// The proposers under test, built for an engine's runner: (name, method, p_min).
fn methods(e: &Engine) -> Vec<(&'static str, Method, f32)> {
    let draft = |rel: &str| draft_runner(Model::new(&open(rel)).unwrap(), &e.runner).unwrap();
    vec![
        ("lookup", Method::Lookup(PromptLookup::new(3).unwrap()), 0.0),
        ("draft amateur", Method::DraftModel(draft(AMATEUR)), 0.0),
        ("draft = target", Method::DraftModel(draft(EXPERT)), 0.0),
        ("self-speculation", Method::SelfSpeculate { layers: 3 }, 0.3),
        (
            "lookup then draft",
            Method::LookupThenDraft(PromptLookup::new(3).unwrap(), draft(AMATEUR)),
            0.0,
        ),
    ]
}

fn run(mut e: Engine, reqs: &[Request]) -> (Vec<Vec<u32>>, Option<SpecCounters>, usize, u64) {
    let out = e.generate(reqs.to_vec()).unwrap();
    let g = e.gauges();
    if let Some(s) = e.spec.as_ref().filter(|s| s.name() == "lookup + draft model") {
        // Both halves of the combined proposer drafted.
        assert!(
            s.combined_sources.0 > 0 && s.combined_sources.1 > 0,
            "{:?}",
            s.combined_sources
        );
    }
    (out, e.spec.map(|s| s.counters), g.kv_blocks_free, g.preemptions)
}

#[test]
fn speculation_never_changes_outputs() {
    let expert = open(EXPERT);
    for setup in [
        Setup {
            blocks: 600,
            prefix: true,
        },
        Setup {
            blocks: 600,
            prefix: false,
        },
        // Room for about two sequences at once: preemption, recompute, draft positions reset.
        Setup {
            blocks: 60,
            prefix: true,
        },
    ] {
        for sampled in [false, true] {
            let reqs = requests(&expert, sampled);
            let (want, _, _, plain_preempted) = run(engine(&expert, &setup), &reqs);
            let probe = engine(&expert, &setup);
            for (name, method, p_min) in methods(&probe) {
                let mut e = engine(&expert, &setup);
                e.spec = Some(Speculator::new(method, length(), p_min, &e.runner).unwrap());
                let (got, counters, free, preempted) = run(e, &reqs);
                let c = counters.unwrap();
                let tag = format!(
                    "{name}, {} blocks, prefix {}, sampled {sampled}",
                    setup.blocks, setup.prefix
                );
                assert_eq!(got, want, "{tag}");
                assert_eq!(free, setup.blocks, "{tag}: blocks leaked");
                assert!(c.num_accepted_tokens > 0, "{tag}: nothing accepted ({c:?})");
                assert_eq!(
                    c.num_accepted_tokens_per_pos.iter().sum::<u64>(),
                    c.num_accepted_tokens,
                    "{tag}"
                );
                // Acceptance can only fall with the position in the draft.
                assert!(
                    c.num_accepted_tokens_per_pos.windows(2).all(|w| w[0] >= w[1]),
                    "{tag}: {c:?}"
                );
                if setup.blocks == 60 {
                    assert!(preempted > 0 && plain_preempted > 0, "{tag}: no preemption");
                }
                if name == "draft = target" && !sampled {
                    assert_eq!(
                        c.num_accepted_tokens, c.num_draft_tokens,
                        "{tag}: a draft equal to the target"
                    );
                }
            }
        }
    }
}

/// The amateur drafting for the expert, greedy: its drafts are accepted at a rate between nothing and
/// everything, and speculation saves engine steps.
#[test]
fn draft_model_saves_steps() {
    let expert = open(EXPERT);
    let setup = Setup {
        blocks: 600,
        prefix: true,
    };
    let reqs = requests(&expert, false);
    let mut plain = engine(&expert, &setup);
    plain.generate(reqs.clone()).unwrap();
    let mut e = engine(&expert, &setup);
    let amateur = draft_runner(Model::new(&open(AMATEUR)).unwrap(), &e.runner).unwrap();
    e.spec = Some(Speculator::new(Method::DraftModel(amateur), length(), 0.0, &e.runner).unwrap());
    e.generate(reqs).unwrap();
    let c = e.spec.as_ref().unwrap().counters.clone();
    let rate = c.num_accepted_tokens as f64 / c.num_draft_tokens as f64;
    assert!(rate > 0.1 && rate < 1.0, "acceptance {rate}: {c:?}");
    assert!(
        e.gauges().steps < plain.gauges().steps,
        "{} steps with drafts, {} without",
        e.gauges().steps,
        plain.gauges().steps
    );
}

/// `max_batch` (`bushu serve --spec-max-batch N`): no drafts in a step where more than N sequences
/// decode. At the engine's batch (8) it changes nothing; at 2 the steps of many sequences go without
/// drafts (fewer verifications with drafts, the output unchanged), and the last sequences, decoding
/// alone, still draft.
#[test]
fn no_drafts_above_the_batch_limit() {
    let expert = open(EXPERT);
    let setup = Setup {
        blocks: 600,
        prefix: true,
    };
    let reqs = requests(&expert, false);
    let (want, _, _, _) = run(engine(&expert, &setup), &reqs);
    let counters = |max_batch: usize| {
        let mut e = engine(&expert, &setup);
        let amateur = draft_runner(Model::new(&open(AMATEUR)).unwrap(), &e.runner).unwrap();
        let mut s = Speculator::new(Method::DraftModel(amateur), length(), 0.0, &e.runner).unwrap();
        s.max_batch = max_batch;
        e.spec = Some(s);
        let (got, c, _, _) = run(e, &reqs);
        assert_eq!(got, want, "max_batch {max_batch}");
        c.unwrap()
    };
    let any = counters(0);
    assert_eq!(counters(8), any);
    let two = counters(2);
    assert!(
        two.num_drafts > 0 && two.num_drafts < any.num_drafts / 2,
        "{two:?} against {any:?}"
    );
}

/// Methods that cannot work for the target are refused when built.
#[test]
fn bad_speculators_are_refused() {
    let expert = open(EXPERT);
    let e = engine(
        &expert,
        &Setup {
            blocks: 100,
            prefix: true,
        },
    );
    let n = e.runner.model.config.n_layers;
    for layers in [0, n, n + 3] {
        let err = Speculator::new(Method::SelfSpeculate { layers }, length(), 0.5, &e.runner)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--self-speculate"), "{err}");
    }
    let tiny = Model::new(&open("models/tiny-llama-f16.gguf")).unwrap();
    let err = draft_runner(tiny, &e.runner).err().unwrap();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let bad = DraftLengthParams { max: 0, ..length() };
    assert!(Speculator::new(Method::Lookup(PromptLookup::new(2).unwrap()), bad, 0.5, &e.runner).is_err());
    assert!(Speculator::new(Method::Lookup(PromptLookup::new(2).unwrap()), length(), 1.5, &e.runner).is_err());
}

/// `bushu serve --lookup`: a completion of a repetitive prompt comes back with the same text as
/// without speculation, `timings.draft_n` / `draft_n_accepted`, and `/metrics` counts the drafts.
#[test]
fn serve_with_lookup_reports_drafts() {
    let prompt = PROMPTS[5];
    let body = json!({"prompt": prompt, "max_tokens": 48, "temperature": 0});
    let mut texts = Vec::new();
    for spec in [
        SpecOptions::off(),
        SpecOptions {
            method: Speculation::Lookup { ngram: 3 },
            length: length(),
            p_min: 0.75,
            draft_vocab: None,
            draft_quant: None,
            tree: None,
        },
    ] {
        let mut o = ServeOptions::new(shared(EXPERT));
        o.port = 0;
        o.ctx = Some(256);
        o.max_batch = 4;
        o.spec = spec.clone();
        let server = Server::start(o).unwrap();
        let (status, b) = request(server.addr, "POST", "/v1/completions", Some(&body), None);
        assert_eq!(status, 200, "{b}");
        // A body without chunked encoding (axum sends JSON with a length).
        let v: Value = serde_json::from_str(b.trim()).unwrap_or_else(|_| panic!("{b}"));
        texts.push(v["choices"][0]["text"].as_str().unwrap().to_owned());
        let (_, metrics) = request(server.addr, "GET", "/metrics", None, None);
        if spec.method == Speculation::Off {
            assert!(v.get("timings").is_none());
            assert!(!metrics.contains("spec_decode"));
        } else {
            let t = &v["timings"];
            let (n, a) = (t["draft_n"].as_u64().unwrap(), t["draft_n_accepted"].as_u64().unwrap());
            assert!(n > 0 && a > 0 && a <= n, "{t}");
            assert!(
                metrics.contains(&format!("bushu_spec_decode_num_draft_tokens_total {n}")),
                "{metrics}"
            );
            assert!(
                metrics.contains(&format!("bushu_spec_decode_num_accepted_tokens_total {a}")),
                "{metrics}"
            );
            assert!(metrics.contains("bushu_spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"}"));
        }
        server.shutdown().unwrap();
    }
    assert_eq!(texts[0], texts[1]);
}

/// With a draft model, `--kv-memory` holds both caches: the blocks are sized by the two models' bytes
/// per position together.
#[test]
fn kv_memory_covers_the_draft_cache() {
    use bushu::engine::model_runner::PagedCache;
    let per = |rel: &str| PagedCache::bytes_per_position(&Model::new(&open(rel)).unwrap());
    let (t, d) = (per(EXPERT), per(AMATEUR));
    let budget = 4 << 20;
    let mut o = ServeOptions::new(shared(EXPERT));
    o.port = 0;
    o.kv_memory = Some(budget);
    o.spec = SpecOptions {
        method: Speculation::DraftModel(shared(AMATEUR)),
        ..SpecOptions::off()
    };
    let server = Server::start(o).unwrap();
    let e = &server.engine;
    let used = e.num_blocks * e.block_size * (t + d);
    assert!(
        used <= budget && used + e.block_size * (t + d) > budget,
        "{used} of {budget}"
    );
    assert!(server.speculation.as_deref().unwrap().contains("KV cache"));
    server.shutdown().unwrap();
}
