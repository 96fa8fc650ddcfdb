//! Speculative decoding (issue 18, `bushu run`): greedy speculative output equals plain greedy output
//! token for token with every proposer (prompt lookup, a draft model, self-speculation), with drafts
//! actually accepted; a draft equal to the target is always accepted; rejection sampling reproduces the
//! target's distribution on a toy vocabulary — and the same check fails for a wrong acceptance rule or
//! a wrong residual; sampled speculative decoding is deterministic for a seed; bad flags are refused
//! with one clear line.

mod common;
use bushu::generate::{generate, GenerateOptions};
use bushu::model::{load, Model, ModelFile};
use bushu::sampling::rng::Rng;
use bushu::sampling::SamplingParams;
use bushu::spec_decode::rejection::{verify_one, Verdict};
use bushu::spec_decode::{
    generate_speculative, DraftLengthParams, DraftModel, PromptLookup, Proposer, SelfSpeculation, SpecStats,
};
use common::shared;
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const AMATEUR: &str = "models/shakespeare/shakespeare-amateur-f16.gguf";
const TINY: &str = "models/tiny-llama-f16.gguf";
const TINY_Q8: &str = "models/tiny-llama-q8_0.gguf";

const PROMPTS: [&str; 3] = [
    // Repetition: prompt lookup has something to find.
    "ROMEO: But soft, what light through yonder window breaks? ROMEO: But soft, what light",
    "KING HENRY: Once more unto the breach, dear friends,",
    "First Citizen: Before we proceed any further, hear me speak.",
];
const N: usize = 64;

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

fn opts(sampling: SamplingParams) -> GenerateOptions {
    // No EOS: every run is N tokens long.
    GenerateOptions::new(N, sampling, Vec::new())
}

fn length() -> DraftLengthParams {
    DraftLengthParams {
        max: 6,
        ..DraftLengthParams::default()
    }
}

fn plain(f: &ModelFile, m: &Model, prompt: &[u32], o: &GenerateOptions) -> Vec<u32> {
    let mut st = m.new_state(512);
    generate(m, &f.tokenizer, &mut st, prompt, o, &mut |_| {})
        .unwrap()
        .tokens
}

fn spec(f: &ModelFile, m: &Model, prompt: &[u32], o: &GenerateOptions, p: &mut dyn Proposer) -> (Vec<u32>, SpecStats) {
    let mut st = m.new_state(512);
    let (g, s) = generate_speculative((m, &f.tokenizer, &mut st), prompt, o, p, length(), &mut |_| {}).unwrap();
    assert_eq!(g.tokens.len(), N);
    (g.tokens, s)
}

/// Each proposer, greedy, against plain greedy decoding; returns the summed stats per proposer.
fn greedy_matches(target: &str, draft: &str, self_layers: &[usize]) -> Vec<(String, SpecStats)> {
    let (f, m) = open(target);
    let (_, dm) = open(draft);
    // The draft with a classifier over the first third of the vocabulary (FR-Spec).
    let (_, mut dm_head) = open(draft);
    dm_head.head_rows = Some(dm_head.config.vocab_size / 3);
    let o = opts(SamplingParams::greedy());
    let mut totals: Vec<(String, SpecStats)> = Vec::new();
    let mut add = |name: String, s: SpecStats| match totals.iter_mut().find(|t| t.0 == name) {
        Some(t) => {
            t.1.draft_n += s.draft_n;
            t.1.draft_n_accepted += s.draft_n_accepted;
            t.1.draft_steps += s.draft_steps;
        }
        None => totals.push((name, s)),
    };
    for text in PROMPTS {
        let prompt = f.tokenizer.encode(text, true).unwrap();
        let want = plain(&f, &m, &prompt, &o);
        let mut proposers: Vec<(String, Box<dyn Proposer + '_>)> = vec![
            ("lookup".into(), Box::new(PromptLookup::new(3).unwrap())),
            (
                "draft".into(),
                Box::new(DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap()),
            ),
            (
                "draft, restricted head".into(),
                Box::new(DraftModel::new(&dm_head, 512, &o.sampling, 0.0).unwrap()),
            ),
            (
                "self=target".into(),
                Box::new(DraftModel::new(&m, 512, &o.sampling, 0.0).unwrap()),
            ),
        ];
        for &l in self_layers {
            let p = SelfSpeculation::new(l, m.config.n_layers, &o.sampling, 0.0).unwrap();
            proposers.push((format!("self-spec {l}"), Box::new(p)));
        }
        for (name, p) in &mut proposers {
            let (got, s) = spec(&f, &m, &prompt, &o, p.as_mut());
            assert_eq!(
                got, want,
                "{target}, {name}, prompt {text:?}: speculative output differs"
            );
            assert!(s.draft_n_accepted <= s.draft_n);
            add(name.clone(), s);
        }
    }
    for (name, s) in &totals {
        eprintln!(
            "{target} {name}: {} drafted, {} accepted, mean accepted length {:.2}",
            s.draft_n,
            s.draft_n_accepted,
            s.mean_accepted_length()
        );
    }
    totals
}

fn stats<'a>(t: &'a [(String, SpecStats)], name: &str) -> &'a SpecStats {
    &t.iter().find(|t| t.0 == name).unwrap().1
}

#[test]
fn greedy_speculation_equals_greedy_decoding_shakespeare() {
    let t = greedy_matches(EXPERT, AMATEUR, &[1, 3, 5]);
    // Not vacuous: every proposer had drafts accepted.
    for (name, s) in &t {
        assert!(s.draft_n_accepted > 0, "{name}: no draft accepted ({s:?})");
    }
    // The target drafting for itself is always right.
    let s = stats(&t, "self=target");
    assert_eq!(s.draft_n_accepted, s.draft_n);
    assert!(s.draft_n >= N, "{s:?}");
}

#[test]
fn greedy_speculation_equals_greedy_decoding_tiny_llama() {
    // Random weights: drafts are mostly rejected (self-speculation switches off), outputs still equal.
    let t = greedy_matches(TINY, TINY_Q8, &[3]);
    let s = stats(&t, "self=target");
    assert_eq!(s.draft_n_accepted, s.draft_n);
    assert!(s.draft_n > 0);
}

#[test]
fn greedy_with_processors_still_equal() {
    // Penalties make the target's choice depend on the history: verification must see the drafts.
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let o = opts(SamplingParams {
        repetition_penalty: 1.3,
        no_repeat_ngram: 3,
        ..SamplingParams::greedy()
    });
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let want = plain(&f, &m, &prompt, &o);
    let mut d = DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap();
    assert_eq!(spec(&f, &m, &prompt, &o, &mut d).0, want);
    let mut l = PromptLookup::new(2).unwrap();
    assert_eq!(spec(&f, &m, &prompt, &o, &mut l).0, want);
    let mut s = SelfSpeculation::new(2, m.config.n_layers, &o.sampling, 0.0).unwrap();
    assert_eq!(spec(&f, &m, &prompt, &o, &mut s).0, want);
}

#[test]
fn sampled_speculation_is_deterministic_for_a_seed() {
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let prompt = f.tokenizer.encode(PROMPTS[1], true).unwrap();
    for seed in [1, 42] {
        let o = opts(SamplingParams {
            temperature: 0.8,
            seed,
            ..SamplingParams::default()
        });
        let runs: Vec<(Vec<u32>, SpecStats)> = (0..2)
            .map(|_| {
                let mut d = DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap();
                spec(&f, &m, &prompt, &o, &mut d)
            })
            .collect();
        assert_eq!(runs[0], runs[1], "seed {seed}");
        assert!(runs[0].1.draft_n_accepted > 0, "seed {seed}: {:?}", runs[0].1);
        for mk in [0, 1] {
            let mut p: Box<dyn Proposer> = match mk {
                0 => Box::new(PromptLookup::new(3).unwrap()),
                _ => Box::new(SelfSpeculation::new(3, m.config.n_layers, &o.sampling, 0.0).unwrap()),
            };
            let a = spec(&f, &m, &prompt, &o, p.as_mut());
            let mut p: Box<dyn Proposer> = match mk {
                0 => Box::new(PromptLookup::new(3).unwrap()),
                _ => Box::new(SelfSpeculation::new(3, m.config.n_layers, &o.sampling, 0.0).unwrap()),
            };
            assert_eq!(a, spec(&f, &m, &prompt, &o, p.as_mut()), "seed {seed}, proposer {mk}");
        }
    }
}

// ---- Rejection sampling on a toy vocabulary ----

const DRAWS: usize = 50_000;

fn p_toy() -> Vec<f32> {
    vec![0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
}

fn q_toy() -> Vec<f32> {
    vec![0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.2, 0.1]
}

/// Total-variation distance between the frequencies of `DRAWS` outputs of `step` and `p`.
fn tv_of(p: &[f32], mut step: impl FnMut(&mut Rng) -> u32) -> f64 {
    let mut rng = Rng::new(1234);
    let mut count = vec![0usize; p.len()];
    for _ in 0..DRAWS {
        count[step(&mut rng) as usize] += 1;
    }
    let tv = 0.5
        * count
            .iter()
            .zip(p)
            .map(|(&c, &p)| (c as f64 / DRAWS as f64 - p as f64).abs())
            .sum::<f64>();
    eprintln!("frequencies {count:?}, TV {tv:.4}");
    tv
}

fn token(v: Verdict, x: u32) -> u32 {
    match v {
        Verdict::Accept => x,
        Verdict::Reject(t) => t,
    }
}

/// Statistical noise of TV at 50k draws over 8 tokens is about 0.004: 0.015 is a wide margin, and each
/// wrong rule below lands at 0.2 or more.
const TV_OK: f64 = 0.015;

#[test]
fn rejection_sampling_reproduces_the_target_distribution() {
    let (p, q) = (p_toy(), q_toy());
    // The draft drawn from q, verified: the output is distributed as p.
    assert!(
        tv_of(&p, |rng| {
            let x = rng.categorical(&q) as u32;
            token(verify_one(&p, Some(&q), x, rng), x)
        }) < TV_OK
    );
    // A deterministic proposer (q one-hot on a fixed draft), likely and unlikely drafts alike.
    for x in [0, 4] {
        assert!(
            tv_of(&p, |rng| token(verify_one(&p, None, x, rng), x)) < TV_OK,
            "draft {x}"
        );
    }
    // q giving zero to tokens p likes, and p banning tokens q proposes (top-k, min-p).
    let p2 = vec![0.0, 0.5, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0];
    let q2 = vec![0.3, 0.0, 0.3, 0.2, 0.0, 0.1, 0.1, 0.0];
    assert!(
        tv_of(&p2, |rng| {
            let x = rng.categorical(&q2) as u32;
            token(verify_one(&p2, Some(&q2), x, rng), x)
        }) < TV_OK
    );
    // Greedy: p one-hot, every draft leads to the argmax.
    let g = vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    for x in 0..8 {
        let mut rng = Rng::new(0);
        assert_eq!(token(verify_one(&g, None, x, &mut rng), x), 2);
        assert_eq!(token(verify_one(&g, Some(&q), x, &mut rng), x), 2);
    }
}

#[test]
fn the_distribution_check_catches_wrong_rules() {
    let (p, q) = (p_toy(), q_toy());
    let residual = |rng: &mut Rng| {
        let r: Vec<f32> = p.iter().zip(&q).map(|(a, b)| (a - b).max(0.0)).collect();
        rng.categorical(&r) as u32
    };
    // Accepting with min(1, q/p) instead of min(1, p/q).
    let tv = tv_of(&p, |rng| {
        let x = rng.categorical(&q) as u32;
        let a = (q[x as usize] / p[x as usize]).min(1.0);
        if rng.next_f32() < a {
            x
        } else {
            residual(rng)
        }
    });
    assert!(tv > 5.0 * TV_OK, "a wrong acceptance rule went unnoticed (TV {tv})");
    // Resampling from p instead of max(0, p − q) after a rejection.
    let tv = tv_of(&p, |rng| {
        let x = rng.categorical(&q) as u32;
        let a = (p[x as usize] / q[x as usize]).min(1.0);
        if rng.next_f32() < a {
            x
        } else {
            rng.categorical(&p) as u32
        }
    });
    assert!(tv > 5.0 * TV_OK, "a wrong residual went unnoticed (TV {tv})");
    // Taking the draft whenever q proposes it (no verification at all): q, not p.
    let tv = tv_of(&p, |rng| rng.categorical(&q) as u32);
    assert!(tv > 5.0 * TV_OK);
}

// ---- Command line ----

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(rel: &str) -> String {
    shared(rel).to_str().unwrap().to_owned()
}

fn fails(extra: &[&str], expect: &str) {
    let m = path(EXPERT);
    let mut args = vec!["run", "-m", &m, "-p", "To be", "-n", "4", "-t", "1"];
    args.extend_from_slice(extra);
    let (code, out, err) = bushu(&args);
    assert_ne!(code, 0, "{extra:?} succeeded");
    assert!(out.trim().is_empty(), "{extra:?} generated: {out}");
    assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{extra:?}: not one line: {err}");
    assert!(lines[0].contains(expect), "{extra:?}: expected {expect:?} in {err:?}");
}

#[test]
fn bad_speculation_flags_are_refused() {
    let tiny = path(TINY);
    fails(&["--draft-model", &tiny], "one shared vocabulary");
    fails(&["--lookup", "--draft-max", "0"], "--draft-max must be at least 1");
    fails(
        &["--lookup", "--draft-max", "2", "--draft-min", "3"],
        "--draft-min (3) must not exceed --draft-max (2)",
    );
    fails(
        &["--lookup", "--lookup-ngram", "0"],
        "--lookup-ngram must be at least 1",
    );
    fails(&["--self-speculate", "0"], "--self-speculate must be at least 1");
    fails(
        &["--self-speculate", "6"],
        "--self-speculate must be between 1 and 5 (the model has 6 layers)",
    );
    fails(
        &["--lookup", "--self-speculate", "2"],
        "cannot be combined: choose one proposer",
    );
    fails(&["--lookup", "--beams", "2"], "--beams cannot be combined");
    fails(
        &["--lookup", "--penalty-alpha", "0.6"],
        "--penalty-alpha (contrastive search) cannot be combined",
    );
    let a = path(AMATEUR);
    fails(
        &["--lookup", "--amateur", &a],
        "--amateur (contrastive decoding) cannot be combined",
    );
    fails(
        &["--draft-model", &a, "--draft-p-min", "1.5"],
        "--draft-p-min must be in [0, 1]",
    );
    fails(
        &["--lookup", "--draft-vocab", "100"],
        "--draft-vocab restricts a draft model's classifier",
    );
}

/// A restricted classifier (FR-Spec's draft head) gives the first `n` logits of the whole one and
/// `-inf` for the others.
#[test]
fn restricted_head_logits() {
    let (f, m) = open(EXPERT);
    let (_, mut r) = open(EXPERT);
    let n = 1000;
    r.head_rows = Some(n);
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let (mut a, mut b) = (m.new_state(64), r.new_state(64));
    let full = m.forward(&mut a, &prompt, bushu::model::Logits::All).unwrap().to_vec();
    let part = r.forward(&mut b, &prompt, bushu::model::Logits::All).unwrap().to_vec();
    let vocab = m.config.vocab_size;
    for (fr, pr) in full.chunks_exact(vocab).zip(part.chunks_exact(vocab)) {
        for (x, y) in fr[..n].iter().zip(&pr[..n]) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
        }
        assert!(pr[n..].iter().all(|&v| v == f32::NEG_INFINITY));
    }
}

#[test]
fn json_reports_drafts_and_output_is_plain_greedy() {
    let m = path(EXPERT);
    let base = [
        "run",
        "-m",
        &m,
        "-p",
        PROMPTS[0],
        "-n",
        "32",
        "-t",
        "1",
        "--temperature",
        "0",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (code, out, err) = bushu(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let plain = run(&[]);
    assert!(plain.get("speculative").is_none() && plain["timings"].get("draft_n").is_none());
    let a = path(AMATEUR);
    for extra in [
        &["--lookup"][..],
        &["--draft-model", &a, "--draft-p-min", "0"],
        &["--self-speculate", "3"],
    ] {
        let j = run(extra);
        assert_eq!(j["tokens"], plain["tokens"], "{extra:?}");
        assert_eq!(j["text"], plain["text"], "{extra:?}");
        let (n, acc) = (&j["timings"]["draft_n"], &j["timings"]["draft_n_accepted"]);
        assert!(n.as_u64().unwrap() >= acc.as_u64().unwrap(), "{extra:?}: {j}");
        assert_eq!(&j["speculative"]["draft_n"], n);
        assert!(j["speculative"]["mean_accepted_length"].as_f64().is_some());
    }
}
