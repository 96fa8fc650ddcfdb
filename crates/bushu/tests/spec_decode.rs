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
    generate_speculative, DraftLengthParams, DraftModel, DraftTree, LookupThenDraft, PromptLookup, Proposer,
    SelfSpeculation, SpecStats,
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
            (
                "lookup+draft".into(),
                Box::new(LookupThenDraft::new(
                    PromptLookup::new(3).unwrap(),
                    DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap(),
                )),
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

/// Lookup and the draft model combined: on a prompt that repeats itself both draft (lookup where a
/// 2-gram or longer recurs, the draft model elsewhere), and the output is plain greedy's, greedy and
/// with penalties.
#[test]
fn lookup_then_draft_uses_both_and_stays_exact() {
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    // A refrain to continue: lookup finds it; the draft model drafts once the text leaves it.
    let refrain = "Once more unto the breach, dear friends, once more; ";
    let prompt = f
        .tokenizer
        .encode(
            &format!("KING HENRY: {refrain}{refrain}{refrain}Once more unto the"),
            true,
        )
        .unwrap();
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams {
            repetition_penalty: 1.3,
            ..SamplingParams::greedy()
        },
    ] {
        let o = opts(sampling);
        let want = plain(&f, &m, &prompt, &o);
        let mut p = LookupThenDraft::new(
            PromptLookup::new(3).unwrap(),
            DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap(),
        );
        let (got, s) = spec(&f, &m, &prompt, &o, &mut p);
        eprintln!(
            "penalty {}: (lookup, draft model) steps {:?}, {s:?}",
            o.sampling.repetition_penalty, p.steps
        );
        assert_eq!(got, want);
        assert!(s.draft_n_accepted > 0, "{s:?}");
        if o.sampling.repetition_penalty == 1.0 {
            // Greedy continues the refrain (lookup), then leaves it (the draft model).
            assert!(p.steps.0 > 0 && p.steps.1 > 0, "{:?}", p.steps);
        }
    }
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

/// `--draft-p-min`: drafting stops after the first draft whose top probability is below it, and that
/// draft is still proposed (marked `unsure`): with `p_min = 1` (nothing is that sure) each proposal is
/// exactly one draft — the draft's own greedy token — for the draft model and self-speculation; with
/// `p_min = 0` a chain of `k`. Either way greedy output is plain greedy output.
#[test]
fn unsure_drafts_are_proposed_and_end_the_chain() {
    use bushu::model::Logits;
    use bushu::sampling::Context;
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let o = opts(SamplingParams::greedy());
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let want = plain(&f, &m, &prompt, &o);
    let (_, head) = prompt.split_last().unwrap();
    let seq = Context {
        tokens: &prompt,
        prompt_len: prompt.len(),
    };
    let mut own = dm.new_state(64);
    let first = kernels::ops::argmax(dm.forward(&mut own, &prompt, Logits::Last).unwrap()) as u32;
    let n = m.config.n_layers;
    for p_min in [1.0, 0.0] {
        let mut proposers: Vec<Box<dyn Proposer>> = vec![
            Box::new(DraftModel::new(&dm, 512, &o.sampling, p_min).unwrap()),
            Box::new(SelfSpeculation::new(2, n, &o.sampling, p_min).unwrap()),
        ];
        for (i, p) in proposers.iter_mut().enumerate() {
            let mut st = m.new_state(512);
            m.forward(&mut st, head, Logits::None).unwrap();
            let d = p.propose(&seq, 5, &m, &mut st).unwrap();
            if p_min == 1.0 {
                assert_eq!((d.len(), d.unsure), (1, 1), "proposer {i}, p_min 1: {:?}", d.tokens);
                if i == 0 {
                    assert_eq!(d.tokens[0], first, "the draft model's greedy token");
                }
            } else {
                assert_eq!((d.len(), d.unsure), (5, 0), "proposer {i}, p_min 0");
            }
        }
        let mut d = DraftModel::new(&dm, 512, &o.sampling, p_min).unwrap();
        let (got, stats) = spec(&f, &m, &prompt, &o, &mut d);
        assert_eq!(got, want, "p_min {p_min}");
        assert!(stats.draft_n > 0, "p_min {p_min}: {stats:?}");
    }
}

/// A draft model says when it read more of the sequence than one step brings before drafting
/// (`caught_up`: after plain steps it reads them all first), so that step's drafting time is not taken
/// as a cost per draft (a resumed draft's catch-up had switched speculation off on a code prompt,
/// docs/SPECULATIVE.md). A step brings one token after a rejection and two after a whole accepted
/// chain (the last draft, never fed, and the target's next token).
#[test]
fn a_draft_model_catching_up_says_so() {
    use bushu::sampling::Context;
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let o = opts(SamplingParams::greedy());
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let mut d = DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap();
    d.prefill(&prompt[..prompt.len() - 1]).unwrap();
    let mut st = m.new_state(512);
    fn ctx(tokens: &[u32], prompt_len: usize) -> Context<'_> {
        Context { tokens, prompt_len }
    }
    let first = d.propose(&ctx(&prompt, prompt.len()), 3, &m, &mut st).unwrap();
    assert_eq!((first.len(), first.caught_up), (3, false), "one new token");
    // The whole chain accepted, then the target's token: two new tokens.
    d.accepted(3);
    let mut seq = prompt.clone();
    seq.extend(&first.tokens);
    seq.push(7);
    let next = d.propose(&ctx(&seq, prompt.len()), 3, &m, &mut st).unwrap();
    assert_eq!((next.len(), next.caught_up), (3, false), "two new tokens");
    // Rejected, then three plain steps: the correction and three tokens.
    d.accepted(0);
    seq.extend([5, 6, 7, 8]);
    let after = d.propose(&ctx(&seq, prompt.len()), 3, &m, &mut st).unwrap();
    assert_eq!((after.len(), after.caught_up), (3, true), "four new tokens");
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
    one_error_line(extra, &err, expect);
}

/// `err` (the stderr of a refused command with `extra`) is one line containing `expect`, no panic.
fn one_error_line(extra: &[&str], err: &str, expect: &str) {
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
        "--self-speculate cannot be combined with --draft-model or --lookup",
    );
    fails(&["--draft-model", &tiny, "--lookup"], "one shared vocabulary");
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
    fails(
        &["--lookup", "--draft-quant", "q4_0"],
        "--draft-quant re-encodes a draft model's weights: it needs --draft-model",
    );
    fails(
        &["--draft-model", &a, "--draft-quant", "q4_k"],
        "--draft-quant must be one of q4_0, q4_1, q5_0, q8_0 (got \"q4_k\")",
    );
}

/// `--draft-quant` reaches the draft as loaded (`load_draft`, for run, chat, bench and serve): the F16
/// amateur at q8_0 has only Q8_0 matrices and reads fewer bytes per token; without it, F16 ones.
#[test]
fn load_draft_requantizes() {
    use bushu::spec_decode::{load_draft, SpecOptions};
    use kernels::DType;
    let f = load(&shared(EXPERT)).unwrap();
    let o = bushu::model::ModelOptions::default();
    let plain = load_draft(&shared(AMATEUR), &f, &o, &SpecOptions::off()).unwrap();
    let spec = SpecOptions {
        draft_quant: Some(DType::Q8_0),
        ..SpecOptions::off()
    };
    let q8 = load_draft(&shared(AMATEUR), &f, &o, &spec).unwrap();
    assert!(plain.weights.matrices().all(|t| t.dtype == DType::F16));
    assert!(q8.weights.matrices().all(|t| t.dtype == DType::Q8_0));
    assert!(q8.weights.bytes_per_token() * 17 / 10 < plain.weights.bytes_per_token());
}

/// `bushu serve` with `extra`: exits non-zero within a minute with one error line containing `expect`,
/// never listening.
fn serve_fails(extra: &[&str], expect: &str) {
    use std::io::Read;
    let m = path(EXPERT);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["serve", "--port", "0", "-m", &m, "--ctx", "128"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bushu serve {extra:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "{extra:?}: {err}");
    assert!(!err.contains("listening"), "{extra:?}: {err}");
    one_error_line(extra, &err, expect);
}

/// The same bad speculation flags refused by `bushu serve` before it listens.
#[test]
fn serve_refuses_bad_speculation_flags() {
    let tiny = path(TINY);
    let a = path(AMATEUR);
    serve_fails(&["--draft-model", &tiny], "one shared vocabulary");
    serve_fails(&["--lookup", "--draft-max", "0"], "--draft-max must be at least 1");
    serve_fails(
        &["--lookup", "--lookup-ngram", "0"],
        "--lookup-ngram must be at least 1",
    );
    serve_fails(&["--self-speculate", "6"], "--self-speculate must be between 1 and 5");
    serve_fails(
        &["--draft-model", &a, "--draft-quant", "q3_k"],
        "--draft-quant must be one of",
    );
    serve_fails(
        &["--spec-max-batch", "4"],
        "--spec-max-batch limits speculative decoding",
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
        &["--draft-model", &a, "--lookup"],
        // The F16 draft re-encoded as Q8_0 when loaded: drafts still accepted, the output unchanged.
        &["--draft-model", &a, "--draft-p-min", "0", "--draft-quant", "q8_0"],
    ] {
        let j = run(extra);
        assert_eq!(j["tokens"], plain["tokens"], "{extra:?}");
        assert_eq!(j["text"], plain["text"], "{extra:?}");
        let (n, acc) = (&j["timings"]["draft_n"], &j["timings"]["draft_n_accepted"]);
        assert!(n.as_u64().unwrap() >= acc.as_u64().unwrap(), "{extra:?}: {j}");
        assert_eq!(&j["speculative"]["draft_n"], n);
        assert!(j["speculative"]["mean_accepted_length"].as_f64().is_some());
        if extra.contains(&"--draft-quant") {
            assert!(acc.as_u64().unwrap() > 0, "{j}");
        }
    }
}

// ---- Chat ----

/// A conversation of three turns, plain and with each proposer: the same answers (greedy, token for
/// token: the texts and the cache contents after each turn), drafts accepted, per-turn statistics.
#[test]
fn chat_with_speculation_answers_as_plain_chat() {
    use bushu::chat::session::{template_for, ChatSession};
    use std::sync::atomic::AtomicBool;
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let o = GenerateOptions::new(40, SamplingParams::greedy(), Vec::new());
    let turns = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
        "ROMEO: But soft, what light through yonder window breaks?",
    ];
    let never = AtomicBool::new(false);
    let converse = |p: Option<Box<dyn Proposer + '_>>| {
        let (template, stops, _) = template_for(&f).unwrap();
        let mut s = ChatSession::new(&m, &f.tokenizer, template, stops, 512, None).unwrap();
        if let Some(p) = p {
            s.set_speculation(p, length()).unwrap();
        }
        turns
            .iter()
            .map(|t| {
                let turn = s.reply(t, &o, &never, &mut |_| {}).unwrap();
                (turn.text.clone(), turn.generated_tokens, s.cached_tokens(), turn.spec)
            })
            .collect::<Vec<_>>()
    };
    let want = converse(None);
    assert!(want.iter().all(|t| t.3.is_none() && t.1 > 0));
    let proposers: Vec<(&str, Box<dyn Proposer + '_>)> = vec![
        ("lookup", Box::new(PromptLookup::new(3).unwrap())),
        ("draft", Box::new(DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap())),
        (
            "self-spec",
            Box::new(SelfSpeculation::new(3, m.config.n_layers, &o.sampling, 0.0).unwrap()),
        ),
        (
            "lookup+draft",
            Box::new(LookupThenDraft::new(
                PromptLookup::new(3).unwrap(),
                DraftModel::new(&dm, 512, &o.sampling, 0.0).unwrap(),
            )),
        ),
    ];
    for (name, p) in proposers {
        let got = converse(Some(p));
        let mut accepted = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!((&g.0, g.1, g.2), (&w.0, w.1, w.2), "{name}, turn {i}");
            let s = g.3.expect("speculation statistics");
            assert!(s.draft_n_accepted <= s.draft_n);
            accepted += s.draft_n_accepted;
        }
        assert!(accepted > 0, "{name}: no draft accepted in three turns");
    }
}

/// `bushu chat` with each proposer answers as plain `bushu chat` and reports each turn's drafts.
#[test]
fn chat_cli_speculation_and_its_errors() {
    use std::io::Write;
    use std::process::Stdio;
    let m = path(EXPERT);
    let chat = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
            .args(["chat", "-m", &m, "-n", "24", "-t", "1", "--verbose"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = format!("{}\n{}\n", PROMPTS[0], PROMPTS[1]);
        // A refused command line exits before reading its input: the write may then find the pipe
        // closed, which is not the test's failure (the exit code and stderr are checked below).
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, plain, err) = chat(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("draft_n"), "{err}");
    let a = path(AMATEUR);
    for extra in [
        &["--lookup"][..],
        &["--draft-model", &a, "--draft-p-min", "0"],
        &["--self-speculate", "3"],
        &["--draft-model", &a, "--lookup"],
    ] {
        let (code, out, err) = chat(extra);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(out, plain, "{extra:?}");
        let counts: Vec<(u64, u64)> = err
            .lines()
            .filter(|l| l.starts_with("[draft_n "))
            .map(|l| {
                let w: Vec<&str> = l.split([' ', ';']).collect();
                (w[1].parse().unwrap(), w[3].parse().unwrap())
            })
            .collect();
        assert_eq!(counts.len(), 2, "{extra:?}: one line per turn: {err}");
        assert!(counts.iter().all(|(n, a)| a <= n), "{counts:?}");
    }
    // Bad input: one line, nothing answered.
    let tiny = path(TINY);
    for (extra, expect) in [
        (&["--lookup", "--draft-max", "0"][..], "--draft-max must be at least 1"),
        (
            &["--lookup", "--lookup-ngram", "0"],
            "--lookup-ngram must be at least 1",
        ),
        (
            &["--self-speculate", "6"],
            "--self-speculate must be between 1 and 5 (the model has 6 layers)",
        ),
        (&["--draft-model", &tiny], "one shared vocabulary"),
    ] {
        let (code, out, err) = chat(extra);
        assert_ne!(code, 0, "{extra:?} succeeded");
        assert!(out.trim().is_empty(), "{extra:?} answered: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: not one line: {err}");
        assert!(lines[0].contains(expect), "{extra:?}: {err}");
    }
}

// ---- Bench ----

/// `bushu bench -f PROMPT` with each proposer: a `tg` row measured on that prompt with the drafts'
/// statistics, its output checked against plain greedy decoding; bad input is one line.
#[test]
fn bench_tg_with_speculation() {
    let dir = common::TempDir::new("bench-spec");
    let prompt = dir.0.join("prompt.txt");
    std::fs::write(&prompt, PROMPTS[0]).unwrap();
    let (m, p, a) = (path(EXPERT), prompt.to_str().unwrap().to_owned(), path(AMATEUR));
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "-m", &m, "-t", "1", "-p", "0", "-n", "24", "-r", "1", "--json"];
        args.extend_from_slice(extra);
        bushu(&args)
    };
    let (code, out, err) = bench(&["-f", &p]);
    assert_eq!(code, 0, "{err}");
    let plain: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plain[0]["test"], "tg24");
    assert!(plain[0]["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(plain[0].get("speculative").is_none());
    for (extra, proposer) in [
        (&["--lookup"][..], "lookup"),
        (&["--draft-model", &a, "--draft-p-min", "0"], "draft model"),
        (&["--self-speculate", "3"], "self-speculation"),
        (&["--draft-model", &a, "--lookup"], "lookup + draft model"),
    ] {
        let mut args = vec!["-f", &p];
        args.extend_from_slice(extra);
        let (code, out, err) = bench(&args);
        assert_eq!(code, 0, "{extra:?}: {err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let row = &r[0];
        assert_eq!(row["test"], "tg24 spec", "{extra:?}");
        assert!(row["avg_ts"].as_f64().unwrap() > 0.0);
        let s = &row["speculative"];
        assert_eq!(s["proposer"], proposer);
        assert_eq!(s["same_output_as_plain"], true, "{extra:?}: {row}");
        let (n, acc) = (s["draft_n"].as_u64().unwrap(), s["draft_n_accepted"].as_u64().unwrap());
        assert!(n > 0 && acc <= n, "{extra:?}: {s}");
        assert!(s["acceptance_rate"].as_f64().is_some() && s["mean_accepted_length"].as_f64().is_some());
    }
    let tiny = path(TINY);
    for (extra, expect) in [
        (&["--lookup"][..], "give one with --file FILE"),
        (
            &["-f", &p, "--lookup", "--draft-max", "0"],
            "--draft-max must be at least 1",
        ),
        (
            &["-f", &p, "--lookup", "--lookup-ngram", "0"],
            "--lookup-ngram must be at least 1",
        ),
        (
            &["-f", &p, "--self-speculate", "6"],
            "--self-speculate must be between 1 and 5 (the model has 6 layers)",
        ),
        (&["-f", &p, "--draft-model", &tiny], "one shared vocabulary"),
        (&["-f", &p, "--lookup", "-b", "2"], "cannot be combined with -b"),
    ] {
        let (code, out, err) = bench(extra);
        assert_ne!(code, 0, "{extra:?} succeeded");
        assert!(out.trim().is_empty(), "{extra:?}: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: not one line: {err}");
        assert!(lines[0].contains(expect), "{extra:?}: {err}");
    }
}

// ---- Token trees ----

fn tree_draft<'a>(dm: &'a Model, o: &GenerateOptions, extra: usize, p_branch: f32, p_min: f32) -> DraftModel<'a> {
    DraftModel::new(dm, 512, &o.sampling, p_min)
        .unwrap()
        .with_tree(DraftTree { extra, p_branch })
        .unwrap()
}

/// Greedy decoding with draft trees equals plain greedy decoding token for token (shakespeare, with
/// and without penalties; the random tiny model), second choices of the draft get accepted, and the
/// cache after generation holds bit for bit what plain decoding's holds.
#[test]
fn tree_speculation_equals_greedy_decoding_and_leaves_the_plain_cache() {
    for (target, draft) in [(EXPERT, AMATEUR), (TINY, TINY_Q8)] {
        let (f, m) = open(target);
        let (_, dm) = open(draft);
        let mut second = 0;
        for sampling in [
            SamplingParams::greedy(),
            SamplingParams {
                repetition_penalty: 1.3,
                ..SamplingParams::greedy()
            },
        ] {
            let o = opts(sampling);
            for text in PROMPTS {
                let prompt = f.tokenizer.encode(text, true).unwrap();
                let mut plain_state = m.new_state(512);
                let want = generate(&m, &f.tokenizer, &mut plain_state, &prompt, &o, &mut |_| {})
                    .unwrap()
                    .tokens;
                for (extra, p_branch, p_min) in [(4, 0.9, 0.75), (8, 1.0, 0.3)] {
                    let mut d = tree_draft(&dm, &o, extra, p_branch, p_min);
                    let mut st = m.new_state(512);
                    let (g, s) =
                        generate_speculative((&m, &f.tokenizer, &mut st), &prompt, &o, &mut d, length(), &mut |_| {})
                            .unwrap();
                    let tag = format!("{target}, {text:?}, tree ({extra}, {p_branch}, {p_min})");
                    assert_eq!(g.tokens, want, "{tag}");
                    assert!(s.tree_steps > 0, "{tag}: {s:?}");
                    second += s.tree_second_choices;
                    // The cache: every layer's keys and values at every position plain decoding filled.
                    let len = plain_state.pos();
                    assert!(st.pos() >= len, "{tag}");
                    st.rewind(len);
                    let kv = m.config.kv_dim();
                    let (mut a, mut b, mut c, mut d2) = (vec![0.0; kv], vec![0.0; kv], vec![0.0; kv], vec![0.0; kv]);
                    for layer in 0..m.config.n_layers {
                        for pos in 0..len {
                            plain_state.cache.read(layer, pos, &mut a, &mut b);
                            st.cache.read(layer, pos, &mut c, &mut d2);
                            let same = a
                                .iter()
                                .chain(&b)
                                .zip(c.iter().chain(&d2))
                                .all(|(x, y)| x.to_bits() == y.to_bits());
                            assert!(same, "{tag}: layer {layer} position {pos} differs");
                        }
                    }
                }
            }
        }
        if target == EXPERT {
            assert!(second > 0, "{target}: no second choice of the draft was ever accepted");
        }
    }
}

/// A hand-built tree on the trained model, whose accepted branch is known from plain greedy decoding:
/// the right branch under a wrong sibling, a right token under a wrong parent (not accepted), the
/// target's own token after the last right node; the cache keeps exactly that branch.
#[test]
fn hand_built_tree_accepts_the_known_branch() {
    use bushu::model::Logits;
    use bushu::sampling::Sampler;
    use bushu::spec_decode::verify::verify_tree;
    use bushu::spec_decode::Proposal;
    let (f, m) = open(EXPERT);
    let vocab = m.config.vocab_size as u32;
    let prompt = f.tokenizer.encode(PROMPTS[1], true).unwrap();
    let o = GenerateOptions::new(4, SamplingParams::greedy(), Vec::new());
    let g = plain(&f, &m, &prompt, &o);
    let (g1, g2, g3) = (g[0], g[1], g[2]);
    let wrong = |t: u32| (t + 1) % vocab;
    // Drafts:       0 w(g1)  1 g1   2 g2 (under g1)  3 w(g2) (under g1)  4 w(g3) (under g2)  5 g2 (under 0)
    let p = Proposal {
        tokens: vec![wrong(g1), g1, g2, wrong(g2), wrong(g3), g2],
        q: None,
        parent: vec![None, None, Some(1), Some(1), Some(2), Some(0)],
        unsure: 0,
        caught_up: false,
    };
    let (last, head) = prompt.split_last().unwrap();
    let mut st = m.new_state(128);
    m.forward(&mut st, head, Logits::None).unwrap();
    let pos0 = st.pos();
    let mut sampler = Sampler::new(&SamplingParams::greedy()).unwrap();
    sampler.set_prompt(&prompt);
    let mut rows = Vec::new();
    let step = verify_tree(&m, &mut st, &mut sampler, *last, &p, &mut rows).unwrap();
    assert_eq!(step.tokens, [g1, g2, g3]);
    assert_eq!(step.accepted, 2);
    assert!(step.off_first, "g1 is the second child of the root");
    assert_eq!(st.pos(), pos0 + 3, "the cache keeps last, g1, g2");
    assert_eq!(sampler.history().len(), prompt.len() + 3);
    // The rows the tokens were chosen from, and the next step, as plain causal decoding gives them.
    let mut alone = m.new_state(128);
    let want_rows = m
        .forward(&mut alone, &[&prompt[..], &[g1, g2]].concat(), Logits::All)
        .unwrap()
        .to_vec();
    let v = vocab as usize;
    let n = prompt.len();
    assert_eq!(rows.len(), 3 * v);
    for i in 0..3 {
        let (a, b) = (&rows[i * v..(i + 1) * v], &want_rows[(n - 1 + i) * v..(n + i) * v]);
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "row {i}");
    }
    let next = m.forward(&mut st, &[g3], Logits::Last).unwrap().to_vec();
    let want = m.forward(&mut alone, &[g3], Logits::Last).unwrap().to_vec();
    assert!(
        next.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
        "next logits"
    );

    // Every child of the root wrong: the target's token only, the cache one position longer.
    let p = Proposal {
        tokens: vec![wrong(g1), wrong(wrong(g1))],
        q: None,
        parent: vec![None, None],
        unsure: 0,
        caught_up: false,
    };
    let mut st = m.new_state(128);
    m.forward(&mut st, head, Logits::None).unwrap();
    let mut sampler = Sampler::new(&SamplingParams::greedy()).unwrap();
    sampler.set_prompt(&prompt);
    let step = verify_tree(&m, &mut st, &mut sampler, *last, &p, &mut rows).unwrap();
    assert_eq!((step.tokens, step.accepted, st.pos()), (vec![g1], 0, pos0 + 1));
    // A sampling target is refused (trees are verified greedily).
    let mut s = Sampler::new(&SamplingParams {
        temperature: 0.8,
        ..SamplingParams::default()
    })
    .unwrap();
    assert!(verify_tree(&m, &mut st, &mut s, *last, &p, &mut rows).is_err());
}

#[test]
fn tree_flags_on_the_command_line() {
    let m = path(EXPERT);
    let a = path(AMATEUR);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            &m,
            "-p",
            PROMPTS[1],
            "-n",
            "32",
            "-t",
            "1",
            "--temperature",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = bushu(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let plain = run(&[]);
    for extra in [
        &["--draft-model", &a, "--draft-tree", "4"][..],
        &[
            "--draft-model",
            &a,
            "--draft-tree",
            "6",
            "--draft-tree-p",
            "1",
            "--lookup",
        ],
    ] {
        let j = run(extra);
        assert_eq!(j["tokens"], plain["tokens"], "{extra:?}");
        assert!(j["speculative"]["tree_steps"].as_u64().unwrap() > 0, "{extra:?}: {j}");
    }
    fails(
        &["--lookup", "--draft-tree", "2"],
        "--draft-tree grows a draft model's token tree",
    );
    fails(
        &["--draft-model", &a, "--draft-tree", "2", "--temperature", "0.8"],
        "--draft-tree verifies greedy decoding only",
    );
    fails(
        &["--draft-model", &a, "--draft-tree", "2", "--draft-tree-p", "2"],
        "--draft-tree-p must be in [0, 1]",
    );
    let (code, _, err) = bushu(&[
        "serve",
        "-m",
        &m,
        "--draft-model",
        &a,
        "--draft-tree",
        "2",
        "--port",
        "0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--draft-tree is for bushu run and chat"), "{err}");
}
