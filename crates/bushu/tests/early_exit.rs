//! Early exit by entropy (issue 20) and the `bushu tradeoff` report: threshold 0 is plain greedy decoding
//! token for token; the exit happens at the first exit layer whose shared-head entropy is below the
//! threshold (checked against separate exit_after passes); the skipped layers' keys and values are the
//! ones state propagation defines (checked against a model whose upper layers add nothing to the
//! residual stream, decoding plainly on the same cache); the tradeoff's measurements at the extremes and
//! its table; bad flags refused with one clear line.

mod common;
use bushu::formats::Tensor;
use bushu::generate::early_exit::generate_early_exit;
use bushu::generate::{generate, GenerateOptions};
use bushu::model::early_exit::{entropy, EarlyExit, StepCost};
use bushu::model::{load, Logits, Model, ModelFile, Pass};
use bushu::sampling::SamplingParams;
use bushu::tradeoff::early_exit::EarlyExitMethod;
use bushu::tradeoff::{argmax, measure, table, Method, Point};
use common::{chat_cli as chat, shared, small_heldout};
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const TINY: &str = "models/tiny-llama-q8_0.gguf";
const PROMPTS: [&str; 2] = [
    "KING HENRY: Once more unto the breach, dear friends,",
    "First Citizen: Before we proceed any further, hear me speak.",
];
const N: usize = 40;

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

fn greedy() -> GenerateOptions {
    // No EOS: every run is N tokens long.
    GenerateOptions::new(N, SamplingParams::greedy(), Vec::new())
}

fn early(
    f: &ModelFile,
    m: &Model,
    prompt: &[u32],
    rule: &EarlyExit,
) -> (Vec<u32>, bushu::generate::early_exit::ExitStats) {
    let mut st = m.new_state(256);
    let (g, s) = generate_early_exit((m, &f.tokenizer, &mut st), prompt, &greedy(), rule, &mut |_| {}).unwrap();
    (g.tokens, s)
}

#[test]
fn threshold_zero_is_plain_greedy_decoding() {
    for rel in [EXPERT, TINY] {
        let (f, m) = open(rel);
        let n = m.config.n_layers;
        for p in PROMPTS {
            let prompt = f.tokenizer.encode(p, true).unwrap();
            let mut st = m.new_state(256);
            let plain = generate(&m, &f.tokenizer, &mut st, &prompt, &greedy(), &mut |_| {})
                .unwrap()
                .tokens;
            let every: Vec<usize> = (1..n).collect();
            let rule = EarlyExit::new(0.0, Some(&every), n).unwrap();
            let (tokens, stats) = early(&f, &m, &prompt, &rule);
            assert_eq!(tokens, plain, "{rel} {p:?}");
            assert_eq!(stats.steps, N - 1);
            assert_eq!(stats.mean_layers(), n as f64);
            // No exit head tried: exactly the full model's compute.
            assert_eq!(stats.heads, N - 1);
            assert_eq!(stats.compute_fraction(), 1.0);
        }
    }
}

#[test]
fn threshold_above_log_vocab_exits_at_the_first_exit_layer() {
    let (f, m) = open(EXPERT);
    // No distribution over 4096 tokens has an entropy above ln 4096 = 8.32 nats.
    let h = (m.config.vocab_size as f32).ln() + 0.5;
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    for first in [1, 2, 4] {
        let rule = EarlyExit::new(h, Some(&[first, 5]), m.config.n_layers).unwrap();
        let (_, stats) = early(&f, &m, &prompt, &rule);
        assert_eq!(stats.mean_layers(), first as f64);
        assert_eq!(stats.exits.len(), 1);
        assert_eq!(stats.exits[&first], N - 1);
        // One head per step; the compute by hand from the shapes.
        let c = StepCost::of(&m.config);
        let step = first as f64 * c.layer + c.head + (6 - first) as f64 * c.kv;
        assert!((stats.compute_fraction() - step / (6.0 * c.layer + c.head)).abs() < 1e-12);
    }
}

#[test]
fn the_exit_is_the_first_exit_layer_below_the_threshold() {
    let (f, m) = open(EXPERT);
    let n = m.config.n_layers;
    let prompt = f.tokenizer.encode(PROMPTS[1], true).unwrap();
    let next = {
        let mut st = m.new_state(64);
        argmax(m.forward(&mut st, &prompt, Logits::Last).unwrap()) as u32
    };
    // The shared head's distribution after each number of layers, by separate exit_after passes.
    let mut per_layer = Vec::new();
    for l in 1..=n {
        let mut st = m.new_state(64);
        m.forward(&mut st, &prompt, Logits::None).unwrap();
        let tokens = [next];
        let pass = Pass::causal(&tokens, Logits::Last);
        let pass = if l < n { pass.exit_after(l) } else { pass };
        per_layer.push(m.forward_pass(&mut st, pass).unwrap().to_vec());
    }
    let ent: Vec<f64> = per_layer.iter().map(|r| entropy(r)).collect();
    eprintln!("entropies after 1..{n} layers: {ent:?}");
    let exits: Vec<usize> = (1..n).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut thresholds: Vec<f32> = ent.iter().map(|&e| e as f32 + 1e-3).collect();
    thresholds.push(0.0);
    thresholds.push(1e-3);
    for h in thresholds {
        let rule = EarlyExit::new(h, Some(&exits), n).unwrap();
        let want = (1..n).find(|&l| ent[l - 1] < h as f64).unwrap_or(n);
        let mut st = m.new_state(64);
        m.forward(&mut st, &prompt, Logits::None).unwrap();
        let logits = m
            .forward_pass(
                &mut st,
                Pass::causal(&[next], Logits::Last).exit_by_entropy(rule.rule()),
            )
            .unwrap()
            .to_vec();
        assert_eq!(st.layers_run(), want, "threshold {h}");
        assert_eq!(logits, per_layer[want - 1], "threshold {h}: the exit's logits");
        seen.insert(want);
    }
    assert!(
        seen.len() >= 3,
        "the thresholds exercised too few exit points: {seen:?}"
    );
}

/// The model with layers `from..` adding nothing to the residual stream (output and down projections
/// zero): its full pass computes what an exit after `from` layers computes, and its upper layers'
/// keys and values are computed from the exit layer's residual stream — state propagation, independently.
fn upper_layers_silenced(f: &ModelFile, from: usize) -> Model {
    let mut m = Model::new(f).unwrap();
    for lw in &mut m.weights.layers[from..] {
        for t in [&mut lw.wo, &mut lw.w_down] {
            *t = Tensor::from_f32(&t.name.clone(), t.shape.clone(), &vec![0.0; t.numel()]);
        }
    }
    m
}

#[test]
fn skipped_layers_get_state_propagated_keys_and_values() {
    for rel in [EXPERT, TINY] {
        let (f, m) = open(rel);
        let n = m.config.n_layers;
        let h = (m.config.vocab_size as f32).ln() + 0.5;
        for exit in [2, n - 1] {
            let silenced = upper_layers_silenced(&f, exit);
            let rule = EarlyExit::new(h, Some(&[exit]), n).unwrap();
            for p in PROMPTS {
                let prompt = f.tokenizer.encode(p, true).unwrap();
                // Every step exiting at `exit`, through the decoder.
                let (tokens, stats) = early(&f, &m, &prompt, &rule);
                assert_eq!(stats.mean_layers(), exit as f64);
                // Reference: the prompt through the real model, then plain greedy decoding by the
                // silenced one on the same cache.
                let mut st = m.new_state(256);
                let mut t = argmax(m.forward(&mut st, &prompt, Logits::Last).unwrap()) as u32;
                let mut want = vec![t];
                while want.len() < N {
                    t = argmax(silenced.forward(&mut st, &[t], Logits::Last).unwrap()) as u32;
                    want.push(t);
                }
                assert_eq!(tokens, want, "{rel} exit {exit} {p:?}");

                // Exits and full-depth steps alternating: the full steps' upper layers attend to the
                // exited positions' propagated keys and values, which must be the silenced model's.
                let (mut a, mut b) = (m.new_state(256), m.new_state(256));
                let mut ta = argmax(m.forward(&mut a, &prompt, Logits::Last).unwrap()) as u32;
                let mut tb = argmax(m.forward(&mut b, &prompt, Logits::Last).unwrap()) as u32;
                for step in 0..N {
                    let (ia, ib) = ([ta], [tb]);
                    let (la, lb) = if step % 3 == 2 {
                        (
                            m.forward(&mut a, &ia, Logits::Last).unwrap().to_vec(),
                            m.forward(&mut b, &ib, Logits::Last).unwrap().to_vec(),
                        )
                    } else {
                        let pass = Pass::causal(&ia, Logits::Last).exit_by_entropy(rule.rule());
                        let la = m.forward_pass(&mut a, pass).unwrap().to_vec();
                        assert_eq!(a.layers_run(), exit);
                        (la, silenced.forward(&mut b, &ib, Logits::Last).unwrap().to_vec())
                    };
                    assert_eq!(la, lb, "{rel} exit {exit} {p:?} step {step}");
                    (ta, tb) = (argmax(&la) as u32, argmax(&lb) as u32);
                }
                // And the keys and values of every layer and position are the same.
                for l in 0..n {
                    let len = a.pos() * m.config.kv_dim();
                    let (mut ka, mut va) = (vec![0.0; len], vec![0.0; len]);
                    let (mut kb, mut vb) = (vec![0.0; len], vec![0.0; len]);
                    a.cache.layers[l].read(0, &mut ka, &mut va);
                    b.cache.layers[l].read(0, &mut kb, &mut vb);
                    assert!(ka == kb && va == vb, "{rel} exit {exit}: layer {l}'s cache differs");
                }
            }
        }
    }
}

/// A wrong fill of the skipped layers is caught: without the propagated keys and values (the rows left
/// as a plain exit_after pass leaves them), the alternating run departs from the reference.
#[test]
fn skipped_layers_left_unfilled_would_differ() {
    let (f, m) = open(EXPERT);
    let (n, exit) = (m.config.n_layers, 2);
    let silenced = upper_layers_silenced(&f, exit);
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let (mut a, mut b) = (m.new_state(256), m.new_state(256));
    let mut ta = argmax(m.forward(&mut a, &prompt, Logits::Last).unwrap()) as u32;
    let mut tb = argmax(m.forward(&mut b, &prompt, Logits::Last).unwrap()) as u32;
    let mut differs = false;
    for step in 0..N {
        let (ia, ib) = ([ta], [tb]);
        let (la, lb) = if step % 3 == 2 {
            (
                m.forward(&mut a, &ia, Logits::Last).unwrap().to_vec(),
                m.forward(&mut b, &ib, Logits::Last).unwrap().to_vec(),
            )
        } else {
            let la = m
                .forward_pass(&mut a, Pass::causal(&ia, Logits::Last).exit_after(exit))
                .unwrap()
                .to_vec();
            (la, silenced.forward(&mut b, &ib, Logits::Last).unwrap().to_vec())
        };
        differs |= la != lb;
        (ta, tb) = (argmax(&la) as u32, argmax(&lb) as u32);
    }
    assert!(differs && n > exit);
}

#[test]
fn early_exit_rule_bad_input() {
    let (f, m) = open(EXPERT);
    let prompt = f.tokenizer.encode(PROMPTS[0], true).unwrap();
    let mut st = m.new_state(64);
    // A multi-token pass cannot exit per token; an exit layer outside the model is refused.
    let rule = EarlyExit::new(1.0, Some(&[2]), 6).unwrap();
    assert!(m
        .forward_pass(
            &mut st,
            Pass::causal(&prompt, Logits::Last).exit_by_entropy(rule.rule())
        )
        .is_err());
    let bad = bushu::model::early_exit::ExitRule {
        threshold: 1.0,
        layers: &[6],
        adapters: None,
    };
    assert!(m
        .forward_pass(&mut st, Pass::causal(&prompt[..1], Logits::Last).exit_by_entropy(bad))
        .is_err());
}

fn point(knob: Option<f64>, c: f64, ml: f64, tps: f64, kl: f64, agree: f64, ppl: f64) -> Point {
    Point {
        knob,
        compute_fraction: c,
        mean_layers: Some(ml),
        tokens_per_s: tps,
        kl,
        agreement: agree,
        own_ppl: ppl,
    }
}

#[test]
fn tradeoff_table_and_plot() {
    let (_, m) = open(EXPERT);
    let method = EarlyExitMethod::new(&m, None, None).unwrap();
    let rows = [
        point(None, 1.0, 6.0, 812.25, 0.0, 1.0, 3.5),
        point(Some(2.0), 0.61234, 3.5, 1000.0, 0.12345, 0.8125, 4.125),
    ];
    let t = table(&method, &rows);
    let want = "| entropy threshold H (nats) | compute (fraction of full) | mean layers / token | tokens/s | KL(full ‖ method) (nats) | greedy agreement | own-output perplexity (full model) |\n\
                |---|---|---|---|---|---|---|\n\
                | full model | 1.000 | 6.00 | 812.2 | 0.0000 | 1.000 | 3.50 |\n\
                | 2 | 0.612 | 3.50 | 1000.0 | 0.1235 | 0.812 | 4.12 |\n";
    assert_eq!(t, want);
    let dir = std::env::temp_dir().join(format!("bushu-tradeoff-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("t.svg");
    bushu::tradeoff::plot(&svg, "early-exit: test", &rows).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("early-exit: test") && s.contains("greedy agreement"));
    assert!(bushu::tradeoff::plot(&dir.join("t.png"), "x", &rows).is_err());
    // An infinite KL (heads over a restricted vocabulary give some tokens no probability) is left out of
    // the KL panel instead of stretching its axis to infinity (plotters then never finished).
    let with_inf = [
        rows[0].clone(),
        point(Some(3.0), 0.3, 2.0, 900.0, f64::INFINITY, 0.5, 9.0),
    ];
    bushu::tradeoff::plot(&svg, "semi-ar: test", &with_inf).unwrap();
    assert!(table(&method, &with_inf).contains("| inf |"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tradeoff_measures_the_extremes() {
    let (f, m) = open(EXPERT);
    let held = small_heldout(&f, &m);
    assert_eq!(held.full_rows[0].len(), (48 - 1 - 16) * m.config.vocab_size);
    let mut method = EarlyExitMethod::new(&m, Some(vec![2, 4]), None).unwrap();
    let neutral = measure(&mut method, &m, &held, 0.0).unwrap();
    assert!(neutral.kl < 1e-9, "{neutral:?}");
    assert_eq!(neutral.agreement, 1.0);
    assert_eq!(neutral.compute_fraction, 1.0);
    assert_eq!(neutral.mean_layers, Some(6.0));
    assert!((neutral.own_ppl - held.full.own_ppl).abs() < 1e-9 * held.full.own_ppl);
    let all_out = measure(&mut method, &m, &held, 20.0).unwrap();
    assert_eq!(all_out.mean_layers, Some(2.0));
    assert!(all_out.kl > 0.01 && all_out.compute_fraction < 0.6, "{all_out:?}");
    // The per-layer profile: the last layer's exit is the model itself.
    let prof = bushu::tradeoff::early_exit::layer_profile(&m, &held, None).unwrap();
    assert_eq!(prof.len(), 6);
    assert_eq!(prof[5].top1, 1.0);
    assert!(prof[5].kl < 1e-9);
    assert!(method.notes(&held).unwrap().contains("| 6 |"));
    assert!(method.check_point(-1.0).is_err());
}

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_json_reports_mean_layers() {
    let model = shared(EXPERT);
    let (code, out, err) = bushu(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "-n",
        "12",
        "--temperature",
        "0",
        "--early-exit-entropy",
        "100",
        "--exit-layers",
        "3,5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["early_exit"];
    assert_eq!(e["mean_layers"], 3.0);
    assert_eq!(e["exit_layers"], serde_json::json!([3, 5]));
    assert_eq!(e["layers"], 6);
    assert_eq!(
        e["decode_steps"].as_u64().unwrap() + 1,
        v["tokens"].as_array().unwrap().len() as u64
    );
}

#[test]
fn bad_flags_get_one_clear_line() {
    let model = shared(EXPERT);
    let m = model.to_str().unwrap();
    let text = shared("testdata/shakespeare/val.txt");
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "-m", m, "-p", "x", "--early-exit-entropy", "-1"],
            "--early-exit-entropy must be",
        ),
        (
            &["run", "-m", m, "-p", "x", "--early-exit-entropy", "NaN"],
            "--early-exit-entropy must be",
        ),
        (
            &[
                "run",
                "-m",
                m,
                "-p",
                "x",
                "--early-exit-entropy",
                "1",
                "--exit-layers",
                "0",
            ],
            "--exit-layers: 0",
        ),
        (
            &[
                "run",
                "-m",
                m,
                "-p",
                "x",
                "--early-exit-entropy",
                "1",
                "--exit-layers",
                "2,6",
            ],
            "--exit-layers: 6",
        ),
        (
            &[
                "run",
                "-m",
                m,
                "-p",
                "x",
                "--early-exit-entropy",
                "1",
                "--exit-layers",
                "2,x",
            ],
            "--exit-layers",
        ),
        (
            &["run", "-m", m, "-p", "x", "--exit-layers", "2"],
            "give --early-exit-entropy",
        ),
        (
            &[
                "run",
                "-m",
                m,
                "-p",
                "x",
                "--early-exit-entropy",
                "1",
                "--self-speculate",
                "2",
            ],
            "cannot be combined",
        ),
        (
            &["run", "-m", m, "-p", "x", "--early-exit-entropy", "1", "--lookup"],
            "cannot be combined",
        ),
        (
            &["run", "-m", m, "-p", "x", "--early-exit-entropy", "1", "--beams", "2"],
            "cannot be combined",
        ),
        (
            &["chat", "-m", m, "--early-exit-entropy", "-2"],
            "--early-exit-entropy must be",
        ),
        (
            &["chat", "-m", m, "--early-exit-entropy", "1", "--draft-model", m],
            "cannot be combined",
        ),
        (
            &[
                "tradeoff",
                "-m",
                m,
                "--method",
                "early-exit",
                "-f",
                text.to_str().unwrap(),
                "--points",
                "0,-1",
                "--out",
                "/tmp",
            ],
            "--points: an entropy threshold",
        ),
        (
            &[
                "tradeoff",
                "-m",
                m,
                "--method",
                "early-exit",
                "-f",
                text.to_str().unwrap(),
                "--exit-layers",
                "9",
            ],
            "--exit-layers: 9",
        ),
    ];
    for (args, expect) in cases {
        let (code, _, err) = bushu(args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(expect), "{args:?}: expected {expect:?} in {err:?}");
    }
}

#[test]
fn chat_with_early_exit() {
    let model = shared(EXPERT);
    let m = model.to_str().unwrap();
    let input = "ROMEO: speak\nJULIET: again\n";
    let base = ["-m", m, "-n", "16", "--temperature", "0", "--verbose"];
    let (plain, _) = chat(&base, input);
    // Threshold 0: the same two answers, with full depth reported.
    let (neutral, err) = chat(&[&base[..], &["--early-exit-entropy", "0"]].concat(), input);
    assert_eq!(neutral, plain);
    assert_eq!(
        err.matches("[early exit: 6.00 layers per decode step").count(),
        2,
        "{err}"
    );
    // Every step at layer 2, on both turns (the second reuses the first turn's cache).
    let (_, err) = chat(
        &[&base[..], &["--early-exit-entropy", "100", "--exit-layers", "2"]].concat(),
        input,
    );
    assert_eq!(
        err.matches("[early exit: 2.00 layers per decode step").count(),
        2,
        "{err}"
    );
}
