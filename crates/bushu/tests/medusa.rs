//! Medusa heads (issue 19) and the semi-autoregressive decoding they allow (issue 20): heads with
//! `W = 0` say exactly what the LM head says; the residual block against a hand computation; the heads
//! file round-trips and is refused for another model; Medusa greedy output is plain greedy output
//! token for token (random heads, so drafts are accepted and rejected) with its hidden-state hand-over
//! checked, also with heads restricted to the first token ids (FR-Spec), whose scores are the
//! unrestricted heads' for those ids; typical acceptance at a near-zero temperature reproduces greedy decoding; semi-AR with
//! K = 0 is plain decoding (greedy and sampled), and with zero heads repeats each token K + 1 times;
//! bad flags are refused with one clear line.

mod common;
use bushu::generate::{generate, GenerateOptions};
use bushu::model::{load, Logits, Model, ModelFile};
use bushu::sampling::rng::Rng;
use bushu::sampling::SamplingParams;
use bushu::spec_decode::medusa::BaseIdentity;
use bushu::spec_decode::semi_ar::generate_semi_ar;
use bushu::spec_decode::{generate_speculative, DraftLengthParams, Medusa, MedusaHeads, SpecStats, Typical};
use common::shared;
use std::path::PathBuf;
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const AMATEUR: &str = "models/shakespeare/shakespeare-amateur-f16.gguf";
const TINY: &str = "models/tiny-llama-f16.gguf";
const PROMPTS: [&str; 3] = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "KING HENRY: Once more unto the breach, dear friends,",
    "First Citizen: Before we proceed any further, hear me speak.",
];
const N: usize = 48;

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

/// `k` heads with N(0, s²)-ish uniform weights from `seed`.
fn random_heads(dim: usize, k: usize, s: f32, seed: u64) -> MedusaHeads {
    let mut rng = Rng::new(seed);
    let mut r = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 2.0 * s)
            .collect()
    };
    let w = (0..k).map(|_| r(dim * dim)).collect();
    let b = (0..k).map(|_| r(dim)).collect();
    MedusaHeads::new(dim, w, b).unwrap()
}

fn plain(f: &ModelFile, m: &Model, prompt: &[u32], o: &GenerateOptions) -> Vec<u32> {
    let mut st = m.new_state(512);
    generate(m, &f.tokenizer, &mut st, prompt, o, &mut |_| {})
        .unwrap()
        .tokens
}

fn medusa(
    f: &ModelFile,
    m: &Model,
    prompt: &[u32],
    o: &GenerateOptions,
    heads: &MedusaHeads,
    nodes: usize,
) -> (Vec<u32>, SpecStats) {
    let mut st = m.new_state(512);
    let typical = (!o.sampling.is_greedy()).then(Typical::default);
    let mut p = Medusa::new(heads, nodes, typical).unwrap();
    let (g, s) = generate_speculative(
        (m, &f.tokenizer, &mut st),
        prompt,
        o,
        &mut p,
        DraftLengthParams::default(),
        &mut |_| {},
    )
    .unwrap();
    (g.tokens, s)
}

#[test]
fn zero_heads_say_what_the_lm_head_says() {
    let (f, m) = open(EXPERT);
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let mut st = m.new_state(64);
    let want = m.forward(&mut st, &prompt, Logits::Last).unwrap().to_vec();
    let h = st.hidden().to_vec();
    let zero = MedusaHeads::zeros(m.config.dim, 3).unwrap();
    let mut out = Vec::new();
    zero.logits(&m, &h, 3, &mut out);
    let v = m.config.vocab_size;
    for i in 0..3 {
        assert!(
            out[i * v..(i + 1) * v]
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "head {i} with W = 0 is not the LM head"
        );
    }
    // The residual block by hand: h = (1, -2), W = [[0.5, 0], [1, 1]], b = (0, 0.5):
    // z = (0.5, -0.5), SiLU(z) = (0.5 σ(0.5), -0.5 σ(-0.5)) = (0.31123, -0.18877).
    let hs = MedusaHeads::new(2, vec![vec![0.5, 0.0, 1.0, 1.0]], vec![vec![0.0, 0.5]]).unwrap();
    let mut u = [0.0; 2];
    hs.residual(0, &[1.0, -2.0], &mut u);
    assert!(
        (u[0] - 1.311_230_8).abs() < 1e-5 && (u[1] - (-2.188_769)).abs() < 1e-5,
        "{u:?}"
    );
}

/// Heads restricted to the first `n` token ids score what the unrestricted heads score for those ids
/// (one classifier product over fewer rows), and `logits` pads the rest with `-inf`.
#[test]
fn restricted_heads_score_the_first_ids() {
    for model in [EXPERT, TINY] {
        let (f, m) = open(model);
        let prompt = f.tokenizer.encode(PROMPTS[1], true).unwrap();
        let mut st = m.new_state(64);
        m.forward(&mut st, &prompt, Logits::Last).unwrap();
        let h = st.hidden().to_vec();
        let v = m.config.vocab_size;
        let full = random_heads(m.config.dim, 3, 0.05, 4);
        for n in [1, 100, 1000, v, v + 7] {
            let part = full.clone().with_vocab(Some(n)).unwrap();
            let rows = n.min(v);
            assert_eq!(part.rows_on(&m), rows);
            let (mut all, mut some, mut padded) = (Vec::new(), Vec::new(), Vec::new());
            full.scores(&m, &h, 3, &mut all);
            part.scores(&m, &h, 3, &mut some);
            part.logits(&m, &h, 3, &mut padded);
            assert_eq!((all.len(), some.len(), padded.len()), (3 * v, 3 * rows, 3 * v));
            for i in 0..3 {
                let (a, s) = (&all[i * v..i * v + rows], &some[i * rows..(i + 1) * rows]);
                let worst = a.iter().zip(s).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                // Bit for bit in the classifier's packed groups of rows; the kernels' rounding past them.
                assert!(worst <= 2e-3, "{model} n {n} head {i}: {worst}");
                assert_eq!(&padded[i * v..i * v + rows], s);
                assert!(padded[i * v + rows..(i + 1) * v]
                    .iter()
                    .all(|&x| x == f32::NEG_INFINITY));
            }
        }
        assert!(full.clone().with_vocab(Some(0)).is_err());
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bushu-medusa-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn heads_file_round_trips_and_names_its_model() {
    let (f, m) = open(EXPERT);
    let heads = random_heads(m.config.dim, 3, 0.05, 1);
    let dir = tmp("file");
    let p = dir.join("heads.gguf");
    heads.to_gguf(&BaseIdentity::of(&f)).write(&p).unwrap();
    assert_eq!(MedusaHeads::load(&p, &f).unwrap(), heads);
    // A restricted vocabulary is stored with the heads.
    let narrow = heads.clone().with_vocab(Some(300)).unwrap();
    narrow.to_gguf(&BaseIdentity::of(&f)).write(&p).unwrap();
    let back = MedusaHeads::load(&p, &f).unwrap();
    assert_eq!(back.vocab, Some(300));
    assert_eq!(back, narrow);
    // Another model (the amateur shares the tokenizer but not the width; tiny-llama neither).
    for other in [AMATEUR, TINY] {
        let (of, _) = open(other);
        let e = MedusaHeads::load(&p, &of).unwrap_err().to_string();
        assert!(e.contains("trained for another model"), "{e}");
    }
    // Not GGUF; GGUF but not heads.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file").unwrap();
    assert!(MedusaHeads::load(&junk, &f)
        .unwrap_err()
        .to_string()
        .contains("not a GGUF file"));
    assert!(MedusaHeads::load(&shared(EXPERT), &f)
        .unwrap_err()
        .to_string()
        .contains("not a Medusa heads file"));
    assert!(MedusaHeads::new(4, vec![], vec![]).is_err());
    assert!(MedusaHeads::zeros(4, 9).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn medusa_greedy_equals_plain_greedy() {
    for (model, scale) in [(EXPERT, 0.02f32), (TINY, 0.02)] {
        let (f, m) = open(model);
        let o = GenerateOptions::new(N, SamplingParams::greedy(), Vec::new());
        let mut total = SpecStats::default();
        for (i, text) in PROMPTS.iter().enumerate() {
            let prompt = f.tokenizer.encode(text, true).unwrap();
            let want = plain(&f, &m, &prompt, &o);
            // The last: heads scoring only the first quarter of the vocabulary (FR-Spec).
            let quarter = Some(m.config.vocab_size / 4);
            for (heads, nodes) in [
                (MedusaHeads::zeros(m.config.dim, 3).unwrap(), 4),
                (random_heads(m.config.dim, 4, scale, i as u64), 12),
                (
                    random_heads(m.config.dim, 4, scale, i as u64)
                        .with_vocab(quarter)
                        .unwrap(),
                    12,
                ),
            ] {
                let (got, s) = medusa(&f, &m, &prompt, &o, &heads, nodes);
                assert_eq!(got, want, "{model}: prompt {i}, {nodes} nodes");
                total.draft_n += s.draft_n;
                total.draft_n_accepted += s.draft_n_accepted;
                total.tree_steps += s.tree_steps;
                total.target_passes += s.target_passes;
            }
        }
        assert!(total.tree_steps > 0 && total.draft_n > 0, "{model}: no trees verified");
        assert!(total.draft_n_accepted > 0, "{model}: nothing accepted: {total:?}");
        assert!(
            total.draft_n_accepted < total.draft_n,
            "{model}: everything accepted, the check is not exercised"
        );
    }
}

#[test]
fn typical_acceptance_at_near_zero_temperature_is_greedy() {
    // p is one-hot to within float precision at T = 0.01 on these peaked models: only the target's
    // top token passes the typical rule, and the sampled ending token is the top token too.
    let (f, m) = open(EXPERT);
    let heads = random_heads(m.config.dim, 3, 0.02, 5);
    let greedy = GenerateOptions::new(N, SamplingParams::greedy(), Vec::new());
    let cold = GenerateOptions::new(
        N,
        SamplingParams {
            temperature: 0.01,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
            ..SamplingParams::default()
        },
        Vec::new(),
    );
    let mut acc = 0;
    for text in PROMPTS {
        let prompt = f.tokenizer.encode(text, true).unwrap();
        let want = plain(&f, &m, &prompt, &greedy);
        let (got, s) = medusa(&f, &m, &prompt, &cold, &heads, 8);
        assert_eq!(got, want, "{text}");
        acc += s.draft_n_accepted;
        // Deterministic for a seed.
        assert_eq!(medusa(&f, &m, &prompt, &cold, &heads, 8).0, got);
    }
    assert!(acc > 0, "typical acceptance never accepted a draft");
}

#[test]
fn semi_ar_k0_is_plain_decoding_and_zero_heads_repeat() {
    let (f, m) = open(EXPERT);
    let heads = random_heads(m.config.dim, 3, 0.02, 9);
    let sampled = SamplingParams {
        temperature: 0.8,
        seed: 11,
        ..SamplingParams::default()
    };
    for sp in [SamplingParams::greedy(), sampled] {
        let o = GenerateOptions::new(N, sp, Vec::new());
        for text in PROMPTS {
            let prompt = f.tokenizer.encode(text, true).unwrap();
            let want = plain(&f, &m, &prompt, &o);
            let mut st = m.new_state(512);
            let (g, passes) =
                generate_semi_ar((&m, &f.tokenizer, &mut st), &prompt, &o, &heads, 0, &mut |_| {}).unwrap();
            assert_eq!(g.tokens, want, "K = 0 {text}");
            assert_eq!(passes, N - 1);
        }
    }
    // Zero heads guess what the LM head says at the same position: every group is one token K + 1 times.
    let zero = MedusaHeads::zeros(m.config.dim, 3).unwrap();
    let o = GenerateOptions::new(12, SamplingParams::greedy(), Vec::new());
    let prompt = f.tokenizer.encode(PROMPTS[1], true).unwrap();
    let want = plain(&f, &m, &prompt, &o);
    let mut st = m.new_state(512);
    let (g, passes) = generate_semi_ar((&m, &f.tokenizer, &mut st), &prompt, &o, &zero, 2, &mut |_| {}).unwrap();
    assert_eq!(g.tokens.len(), 12);
    assert_eq!(passes, 3, "12 tokens in groups of 3: the prefill and 3 passes");
    assert_eq!(g.tokens[0], want[0]);
    for c in g.tokens.chunks(3) {
        assert!(c.iter().all(|&t| t == c[0]), "{:?}", g.tokens);
    }
    // The cache holds the prompt and every fed group (the last group is not fed).
    assert_eq!(st.pos(), prompt.len() + 9);
    // More guesses than heads.
    let mut st = m.new_state(64);
    assert!(generate_semi_ar((&m, &f.tokenizer, &mut st), &prompt, &o, &zero, 4, &mut |_| {}).is_err());
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

#[test]
fn medusa_on_the_command_line() {
    let (f, m) = open(EXPERT);
    let dir = tmp("cli");
    let hp = dir.join("heads.gguf");
    random_heads(m.config.dim, 3, 0.02, 2)
        .to_gguf(&BaseIdentity::of(&f))
        .write(&hp)
        .unwrap();
    let heads = hp.to_str().unwrap().to_owned();
    let (tf, tm) = open(TINY);
    let tiny_heads = dir.join("tiny-heads.gguf");
    MedusaHeads::zeros(tm.config.dim, 2)
        .unwrap()
        .to_gguf(&BaseIdentity::of(&tf))
        .write(&tiny_heads)
        .unwrap();
    let expert = path(EXPERT);
    let base = [
        "run",
        "-m",
        expert.as_str(),
        "-p",
        PROMPTS[2],
        "-n",
        "24",
        "-t",
        "1",
        "--temp",
        "0",
        "--json",
    ];
    let (code, plain_out, err) = bushu(&base);
    assert_eq!(code, 0, "{err}");
    let plain: serde_json::Value = serde_json::from_str(&plain_out).unwrap();
    let (code, out, err) = bushu(&[&base[..], &["--medusa", &heads, "--medusa-tree", "10"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], plain["tokens"]);
    assert_eq!(v["speculative"]["proposer"], "medusa");
    assert!(v["speculative"]["draft_n"].as_u64().unwrap() > 0);
    assert!(v["speculative"]["mean_accepted_length"].as_f64().unwrap() >= 1.0);
    // A restricted heads' vocabulary changes the drafts, not the output.
    let (code, out, err) = bushu(&[&base[..], &["--medusa", &heads, "--medusa-vocab", "500"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], plain["tokens"]);
    assert!(v["speculative"]["draft_n"].as_u64().unwrap() > 0);
    // Semi-AR K = 0 is plain; K = 2 is one pass per 3 tokens.
    let (code, out, err) = bushu(&[&base[..], &["--medusa", &heads, "--semi-ar", "0"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], plain["tokens"]);
    let (code, out, err) = bushu(&[&base[..], &["--medusa", &heads, "--semi-ar", "2"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = v["tokens"].as_array().unwrap().len() as u64;
    assert_eq!(v["semi_ar"]["passes_after_prefill"], n.div_ceil(3) - 1, "{v}");
    assert_eq!(v["tokens"][0], plain["tokens"][0]);
    // Non-AR: one pass, heads + 1 tokens.
    let (code, out, err) = bushu(&[&base[..], &["--medusa", &heads, "--non-ar"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(v["semi_ar"]["passes_after_prefill"], 0);

    let fails = |extra: &[&str], expect: &str| {
        let mut args = vec!["run", "-m", expert.as_str(), "-p", "To be", "-n", "4", "-t", "1"];
        args.extend_from_slice(extra);
        let (code, out, err) = bushu(&args);
        assert_ne!(code, 0, "{extra:?} succeeded");
        assert!(out.trim().is_empty(), "{extra:?} generated: {out}");
        assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: not one line: {err}");
        assert!(lines[0].contains(expect), "{extra:?}: expected {expect:?} in {err:?}");
    };
    fails(&["--medusa", tiny_heads.to_str().unwrap()], "trained for another model");
    fails(&["--medusa", &expert], "not a Medusa heads file");
    fails(&["--medusa", "/etc/hostname"], "not a GGUF file");
    fails(
        &["--medusa", &heads, "--medusa-tree", "0"],
        "--medusa-tree must be at least 1",
    );
    fails(&["--medusa", &heads, "--medusa-epsilon", "2"], "--medusa-epsilon");
    fails(&["--medusa", &heads, "--medusa-delta", "0"], "--medusa-delta");
    fails(&["--semi-ar", "2"], "need --medusa");
    fails(&["--medusa-vocab", "100"], "needs --medusa HEADS");
    fails(&["--medusa", &heads, "--semi-ar", "4"], "has 3 heads");
    fails(
        &["--medusa", &heads, "--semi-ar", "1", "--non-ar"],
        "cannot be combined",
    );
    fails(&["--medusa", &heads, "--lookup"], "choose one proposer");
    fails(&["--medusa", &heads, "--beams", "2"], "cannot be combined");
    let _ = std::fs::remove_dir_all(dir);
}
