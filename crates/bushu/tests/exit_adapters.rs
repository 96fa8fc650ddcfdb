//! Trained exit adapters for early exit (the tuned lens, issue 20): zero adapters are the shared head bit
//! for bit; an adapter translates the residual stream before the final norm and classifier exactly as an
//! f64 hand computation says; the forward pass's early exit reads through it; the side file round-trips
//! and is refused for another model; bad flags get one clear line.

mod common;
use bushu::model::early_exit::EarlyExit;
use bushu::model::exit_adapters::ExitAdapters;
use bushu::model::mixture_of_depths::RoutersBase;
use bushu::model::{load, Logits, Model, ModelFile, Pass};
use bushu::tradeoff::argmax;
use common::shared;
use std::process::Command;
use std::sync::Arc;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const TINY: &str = "models/tiny-llama-q8_0.gguf";
const PROMPT: &str = "KING HENRY: Once more unto the breach, dear friends,";

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

/// Small seeded values in [-scale, scale).
fn noise(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The residual stream after every layer at each position of `tokens` (one full pass).
fn hidden(m: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let n = m.config.n_layers;
    let all: Vec<usize> = (0..n).collect();
    let rows: Vec<usize> = (0..tokens.len()).collect();
    let mut st = m.new_state(tokens.len());
    m.forward_pass(&mut st, Pass::causal(tokens, Logits::Rows(&rows)).keep_hidden(&all))
        .unwrap();
    (0..n).map(|l| st.hidden_at(l).unwrap().to_vec()).collect()
}

/// Adapters at `layers` with seeded weights.
fn random_adapters(m: &Model, layers: &[usize]) -> ExitAdapters {
    let d = m.config.dim;
    let w = layers.iter().map(|&l| noise(d * d, l as u32, 0.05)).collect();
    let b = layers.iter().map(|&l| noise(d, 100 + l as u32, 0.5)).collect();
    ExitAdapters::new(d, m.config.n_layers, layers.to_vec(), w, b).unwrap()
}

#[test]
fn zero_adapters_are_the_shared_head() {
    let (f, m) = open(EXPERT);
    let n = m.config.n_layers;
    let prompt = f.tokenizer.encode(PROMPT, true).unwrap();
    let h = hidden(&m, &prompt);
    let zero = ExitAdapters::zeros(m.config.dim, n, vec![1, 3, 5]).unwrap();
    for l in [1, 3, 5] {
        let lens = zero.at(l).unwrap();
        assert_eq!(
            m.exit_logits(&h[l - 1], Some(lens)).unwrap(),
            m.exit_logits(&h[l - 1], None).unwrap(),
            "exit after {l} layers"
        );
    }
    // Early exit through zero adapters: the same exits and logits as the shared head at every threshold.
    let zero = Arc::new(zero);
    for t in [0.0, 2.0, 3.5, 4.0, 100.0] {
        let plain = EarlyExit::new(t, Some(&[1, 3, 5]), n).unwrap();
        let adapted = EarlyExit::with_adapters(t, None, n, Some(zero.clone())).unwrap();
        assert_eq!(adapted.layers, vec![1, 3, 5], "the adapters' exit points");
        let mut got = Vec::new();
        for rule in [&plain, &adapted] {
            let mut st = m.new_state(64);
            let next = argmax(m.forward(&mut st, &prompt, Logits::Last).unwrap()) as u32;
            let logits = m
                .forward_pass(
                    &mut st,
                    Pass::causal(&[next], Logits::Last).exit_by_entropy(rule.rule()),
                )
                .unwrap()
                .to_vec();
            got.push((st.layers_run(), logits));
        }
        assert_eq!(got[0], got[1], "threshold {t}");
    }
}

#[test]
fn an_adapter_translates_the_stream_before_the_head() {
    let (f, m) = open(EXPERT);
    let (n, d) = (m.config.n_layers, m.config.dim);
    let prompt = f.tokenizer.encode(PROMPT, true).unwrap();
    let h = hidden(&m, &prompt);
    let a = random_adapters(&m, &[2, 4]);
    for (i, &l) in a.layers.iter().enumerate() {
        // h' = h + W h + b in f64, then the shared head on h': the reference.
        let rows = &h[l - 1];
        let mut moved = vec![0.0f32; rows.len()];
        for (row, out) in rows.chunks_exact(d).zip(moved.chunks_exact_mut(d)) {
            for r in 0..d {
                let wh: f64 = (0..d).map(|c| a.w[i][r * d + c] as f64 * row[c] as f64).sum();
                out[r] = (row[r] as f64 + wh + a.b[i][r] as f64) as f32;
            }
        }
        let want = m.exit_logits(&moved, None).unwrap();
        let got = m.exit_logits(rows, a.at(l)).unwrap();
        let shared_head = m.exit_logits(rows, None).unwrap();
        let err = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let moved_by = got
            .iter()
            .zip(&shared_head)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(err < 2e-3, "exit after {l}: {err} from the f64 reference");
        assert!(
            moved_by > 0.1,
            "exit after {l}: the adapter changed nothing ({moved_by})"
        );
    }
    // The forward pass's exit reads through the adapter: at a threshold above ln(vocab) every step
    // leaves at the first exit point, with the adapted logits of the stream after that many layers.
    let mut tokens = prompt.clone();
    let mut st = m.new_state(64);
    let next = argmax(m.forward(&mut st, &prompt, Logits::Last).unwrap()) as u32;
    tokens.push(next);
    let rule = EarlyExit::with_adapters(100.0, None, n, Some(Arc::new(a.clone()))).unwrap();
    let logits = m
        .forward_pass(
            &mut st,
            Pass::causal(&[next], Logits::Last).exit_by_entropy(rule.rule()),
        )
        .unwrap()
        .to_vec();
    assert_eq!(st.layers_run(), 2);
    let last = &hidden(&m, &tokens)[1][(tokens.len() - 1) * d..];
    assert_eq!(logits, m.exit_logits(last, a.at(2)).unwrap());
    // Exit points without an adapter are refused, as is an adapter set for a deeper model.
    let err = EarlyExit::with_adapters(1.0, Some(&[2, 3]), n, Some(Arc::new(a.clone()))).unwrap_err();
    assert!(err.to_string().contains("[3] have no trained adapter"), "{err}");
    assert!(EarlyExit::with_adapters(1.0, None, n + 1, Some(Arc::new(a))).is_err());
}

#[test]
fn adapter_files_round_trip_and_refuse_other_models() {
    let (f, m) = open(EXPERT);
    let a = random_adapters(&m, &[1, 4]);
    let dir = std::env::temp_dir().join(format!("bushu-exit-adapters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.gguf");
    a.to_gguf(&RoutersBase::of(&f, &m)).write(&path).unwrap();
    assert_eq!(ExitAdapters::load(&path, &f, &m).unwrap(), a);
    // The Q8_0 file of the same model has the same norms and tokenizer: the same adapters serve it.
    let (fq, mq) = open("models/shakespeare/shakespeare-expert-q8_0.gguf");
    assert_eq!(ExitAdapters::load(&path, &fq, &mq).unwrap(), a);
    let (ft, mt) = open(TINY);
    let err = ExitAdapters::load(&path, &ft, &mt).unwrap_err().to_string();
    assert!(err.contains("were trained for another model"), "{err}");
    let text = dir.join("not.gguf");
    std::fs::write(&text, "hello").unwrap();
    let err = ExitAdapters::load(&text, &f, &m).unwrap_err().to_string();
    assert!(err.contains("is not a GGUF file"), "{err}");
    let err = ExitAdapters::load(&shared(EXPERT), &f, &m).unwrap_err().to_string();
    assert!(err.contains("is not an exit adapters file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
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
fn exit_adapters_on_the_command_line() {
    let (f, m) = open(EXPERT);
    let dir = std::env::temp_dir().join(format!("bushu-exit-adapters-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.gguf");
    random_adapters(&m, &[2, 4])
        .to_gguf(&RoutersBase::of(&f, &m))
        .write(&path)
        .unwrap();
    let (model, adapters) = (shared(EXPERT), path.to_str().unwrap().to_owned());
    let model = model.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            model,
            "--prompt",
            "ROMEO:",
            "-n",
            "8",
            "--temperature",
            "0",
        ];
        args.extend_from_slice(extra);
        bushu(&args)
    };
    // Every step exits at the adapters' first exit point.
    let (code, out, err) = run(&["--early-exit-entropy", "100", "--exit-adapters", &adapters, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["early_exit"]["exit_layers"], serde_json::json!([2, 4]));
    assert_eq!(v["early_exit"]["adapters"], true);
    assert_eq!(v["early_exit"]["mean_layers"], 2.0);
    for (extra, want) in [
        (vec!["--exit-adapters", &adapters], "give --early-exit-entropy H too"),
        (
            vec![
                "--early-exit-entropy",
                "1",
                "--exit-adapters",
                &adapters,
                "--exit-layers",
                "3",
            ],
            "have no trained adapter",
        ),
        (
            vec!["--early-exit-entropy", "1", "--exit-adapters", model],
            "is not an exit adapters file",
        ),
    ] {
        let (code, out, err) = run(&extra);
        assert_ne!(code, 0, "{extra:?}");
        assert!(out.is_empty(), "{extra:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let tiny = shared(TINY);
    let (code, _, err) = bushu(&[
        "run",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "a",
        "-n",
        "2",
        "--early-exit-entropy",
        "1",
        "--exit-adapters",
        &adapters,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("trained for another model"), "{err}");
    let val = shared("testdata/shakespeare/val.txt");
    let (code, _, err) = bushu(&[
        "tradeoff",
        "--model",
        model,
        "--method",
        "mod",
        "--file",
        val.to_str().unwrap(),
        "--exit-adapters",
        &adapters,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--exit-adapters belongs to --method early-exit"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
