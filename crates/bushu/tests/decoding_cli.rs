//! `bushu run` decoding flags: invalid values give one clear error line and a non-zero exit; beams,
//! contrastive search, contrastive decoding and stop strings work from the command line; `--json`
//! lists the beams' sequences with scores.

mod common;
use common::shared;
use std::process::Command;

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expert() -> String {
    shared("models/shakespeare/shakespeare-expert-f16.gguf")
        .to_str()
        .unwrap()
        .to_owned()
}

fn amateur() -> String {
    shared("models/shakespeare/shakespeare-amateur-f16.gguf")
        .to_str()
        .unwrap()
        .to_owned()
}

fn fails(extra: &[&str], expect: &str) {
    let m = expert();
    let mut args = vec!["run", "-m", &m, "-p", "To be", "-n", "4"];
    args.extend_from_slice(extra);
    let (code, _, err) = bushu(&args);
    assert_ne!(code, 0, "{extra:?} succeeded");
    assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains(expect)),
        "{extra:?}: expected {expect:?} in {err:?}"
    );
    assert!(lines.len() <= 3, "{extra:?}: error is not short: {err}");
}

#[test]
fn invalid_values_are_refused() {
    fails(&["--top-p", "0"], "top-p must be in (0, 1]");
    fails(&["--top-p", "1.5"], "top-p must be in (0, 1]");
    fails(&["--temperature", "-1"], "temperature must be");
    fails(&["--min-p", "2"], "min-p must be in [0, 1]");
    fails(&["--beams", "0"], "--beams must be at least 1");
    fails(
        &["--beams", "2", "--num-return", "3"],
        "--num-return must be between 1 and --beams",
    );
    fails(&["--no-repeat-ngram", "0"], "--no-repeat-ngram must be at least 1");
    fails(&["--repetition-penalty", "0"], "--repetition-penalty must be");
    fails(&["--repetition-penalty", "-2"], "--repetition-penalty must be");
    fails(&["--logit-bias", "12"], "--logit-bias wants ID=BIAS");
    fails(&["--logit-bias", "x=1"], "is not a token id");
    fails(&["--logit-bias", "5=abc"], "is not a number");
    fails(&["--logit-bias", "999999=1"], "outside the vocabulary");
    fails(&["--stop", ""], "--stop strings must not be empty");
    fails(&["--penalty-alpha", "1.5"], "--penalty-alpha must be in [0, 1]");
    fails(
        &["--penalty-alpha", "0.6", "--top-k", "0"],
        "--top-k must be at least 1 for contrastive search",
    );
    fails(&["--penalty-alpha", "0.6", "--beams", "2"], "cannot be combined");
    fails(
        &["--early-stopping", "maybe", "--beams", "2"],
        "early stopping must be true, false or never",
    );
    let a = amateur();
    fails(&["--amateur", &a, "--cd-alpha", "0"], "--cd-alpha must be in (0, 1]");
    fails(
        &["--amateur", &a, "--cd-amateur-temperature", "0"],
        "--cd-amateur-temperature must be",
    );
    let other = shared("models/tiny-llama-q8_0.gguf").to_str().unwrap().to_owned();
    fails(&["--amateur", &other], "tokenizer differs");
}

fn json_run(extra: &[&str]) -> serde_json::Value {
    let m = expert();
    let mut args = vec!["run", "-m", &m, "-p", "ROMEO: What light through yonder", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = bushu(&args);
    assert_eq!(code, 0, "{extra:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn strategies_from_the_command_line() {
    let v = json_run(&["-n", "12", "--beams", "4", "--num-return", "3"]);
    let seqs = v["sequences"].as_array().unwrap();
    assert_eq!(seqs.len(), 3);
    let scores: Vec<f64> = seqs.iter().map(|s| s["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(v["tokens"], seqs[0]["tokens"]);
    assert_eq!(v["text"], seqs[0]["text"]);

    let greedy = json_run(&["-n", "12", "--temperature", "0"]);
    let cs = json_run(&["-n", "12", "--penalty-alpha", "0", "--top-k", "4"]);
    assert_eq!(
        cs["tokens"], greedy["tokens"],
        "contrastive search with α = 0 is greedy"
    );
    let cd = json_run(&["-n", "12", "--temperature", "0", "--amateur", &amateur()]);
    assert_eq!(cd["tokens"].as_array().unwrap().len(), 12);
    let cdb = json_run(&["-n", "6", "--beams", "2", "--amateur", &amateur()]);
    assert_eq!(cdb["sequences"].as_array().unwrap().len(), 1);

    // A stop string: cut before it, finish_reason says so.
    let text = greedy["text"].as_str().unwrap();
    let stop = &text[5..8];
    let s = json_run(&["-n", "12", "--temperature", "0", "--stop", stop]);
    assert_eq!(s["finish_reason"], "stop_string");
    assert_eq!(s["text"].as_str().unwrap(), &text[..text.find(stop).unwrap()]);
    // Penalties change greedy output; seeded sampling repeats itself.
    let p = json_run(&[
        "-n",
        "12",
        "--temperature",
        "0",
        "--repetition-penalty",
        "1.5",
        "--no-repeat-ngram",
        "2",
    ]);
    assert_ne!(p["tokens"], greedy["tokens"]);
    let s1 = json_run(&[
        "-n",
        "12",
        "--seed",
        "9",
        "--min-p",
        "0.05",
        "--frequency-penalty",
        "0.3",
    ]);
    let s2 = json_run(&[
        "-n",
        "12",
        "--seed",
        "9",
        "--min-p",
        "0.05",
        "--frequency-penalty",
        "0.3",
    ]);
    assert_eq!(s1["tokens"], s2["tokens"]);
}
