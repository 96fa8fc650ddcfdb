//! `train-routers`, end to end on the Shakespeare expert (a small real model, seconds to a minute per
//! run): the candle model with every layer computes bushu's distribution (KL ~ 0), training lowers the
//! routed model's KL to the full model (on a fixed batch, by at least 5 % in 18 steps), the written file
//! loads for the model (and its quantiles give about the trained capacity per layer on the training
//! text), and bad input ends in one clear line.

mod common;
use common::{shared, tmpdir};

use bushu::model::mixture_of_depths::{Routers, Routing};
use bushu::model::{load, Logits, Model};
use bushu_train::routers::{train_routers, RouterOptions};
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-q8_0.gguf";

#[test]
fn routers_train_and_load() {
    let dir = tmpdir("train");
    let out = dir.join("r.gguf");
    let mut o = RouterOptions::new(
        shared(EXPERT),
        vec![shared("testdata/shakespeare/train.txt")],
        0.5,
        out.clone(),
    );
    o.tokens = 64 * 24;
    o.ctx = 64;
    o.batch = 4;
    o.epochs = 3;
    o.lr = 2e-2;
    o.calib_windows = 8;
    let mut lines = Vec::new();
    let r = train_routers(&o, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(r.full_kl < 1e-3, "candle and bushu disagree: KL {}", r.full_kl);
    assert_eq!(r.steps, 18);
    assert!(
        r.batch_kl_after < 0.95 * r.batch_kl_before,
        "{} -> {}",
        r.batch_kl_before,
        r.batch_kl_after
    );
    let f = load(&shared(EXPERT)).unwrap();
    let mut m = Model::new(&f).unwrap();
    let routers = Routers::load(&out, &f, &m).unwrap();
    assert_eq!(routers.trained_capacity, 0.5);
    // At the trained capacity, on the calibration text, each layer runs for about half the tokens.
    m.routing = Some(Routing::new(routers, 0.5, &m.config).unwrap());
    let text = std::fs::read_to_string(shared("testdata/shakespeare/train.txt")).unwrap();
    let text: String = text.chars().take(3000).collect();
    let tokens = f.tokenizer.encode(&text, true).unwrap();
    let tokens = &tokens[..tokens.len().min(256)];
    let mut st = m.new_state(tokens.len());
    m.forward(&mut st, tokens, Logits::None).unwrap();
    for (l, &k) in st.runs_by_layer().iter().enumerate() {
        let frac = k as f64 / tokens.len() as f64;
        assert!((0.3..=0.7).contains(&frac), "layer {l} ran for {frac} of the tokens");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_one_line() {
    let dir = tmpdir("bad");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "To be").unwrap();
    let model = shared(EXPERT);
    let data = shared("testdata/shakespeare/val.txt");
    let out = dir.join("r.gguf");
    let (m, d, e, s, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        empty.to_str().unwrap(),
        short.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", m, "--data", d, "--capacity", "0", "--out", o], "(0, 1]"),
        (
            vec!["--model", m, "--data", d, "--capacity", "1.5", "--out", o],
            "(0, 1]",
        ),
        (
            vec!["--model", m, "--data", d, "--capacity", "-0.5", "--out", o],
            "(0, 1]",
        ),
        (
            vec!["--model", m, "--data", e, "--capacity", "0.5", "--out", o],
            "no text",
        ),
        (
            vec!["--model", m, "--data", s, "--capacity", "0.5", "--out", o],
            "fewer than one window",
        ),
        (
            vec!["--model", d, "--data", d, "--capacity", "0.5", "--out", o],
            "not a GGUF file",
        ),
    ];
    for (args, want) in cases {
        let r = Command::new(env!("CARGO_BIN_EXE_bushu-train"))
            .arg("train-routers")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
