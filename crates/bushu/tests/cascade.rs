//! Cascade decoding (`--cascade M1,M2`): the neutral thresholds reproduce one model exactly (threshold 1
//! is the largest model token for token, threshold 0 the smallest), with and without a fitted
//! classifier; the logistic regression against closed forms and finite differences; the threshold
//! sweep against a hand count; the refusals (vocabulary, threshold, classifier for other models, one
//! model); and `bushu serve --cascade`, which says which stage answered and counts it in /metrics.
//! On the Shakespeare pair (amateur 1.4M → expert 7.7M), seconds in all.

mod common;

use bushu::cascade::classifier::Logistic;
use bushu::cascade::features::Step;
use bushu::cascade::{Answer, Judge, PromptRun};
use bushu::generate::{FinishReason, Generation, Timings};
use bushu::server::{CascadeOptions, ServeOptions, Server};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const AMATEUR: &str = "models/shakespeare/shakespeare-amateur-q8_0.gguf";
const EXPERT: &str = "models/shakespeare/shakespeare-expert-q8_0.gguf";
const TINY: &str = "models/tiny-llama-q8_0.gguf";

fn path(rel: &str) -> String {
    common::shared(rel).display().to_string()
}

fn pair() -> String {
    format!("{},{}", path(AMATEUR), path(EXPERT))
}

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(args: &[&str]) -> Value {
    let (code, out, err) = bushu(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

const PROMPTS: [&str; 3] = ["ROMEO:\n", "KING HENRY:\nWhat say you, lords", "To be, or not"];

/// `run --json` greedy tokens of one model.
fn plain(model: &str, prompt: &str) -> Vec<u64> {
    let v = json_of(&[
        "run",
        "-m",
        model,
        "-p",
        prompt,
        "-n",
        "24",
        "--temperature",
        "0",
        "-t",
        "1",
        "--json",
    ]);
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// `run --cascade --json` with `extra` flags: its tokens and the stage that answered.
fn cascade(prompt: &str, extra: &[&str]) -> (Vec<u64>, u64) {
    let p = pair();
    let mut args = vec![
        "run",
        "--cascade",
        &p,
        "-p",
        prompt,
        "-n",
        "24",
        "--temperature",
        "0",
        "-t",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let v = json_of(&args);
    let tokens = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    (tokens, v["cascade"]["stage"].as_u64().unwrap())
}

/// A directory of this test process, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("bushu-cascade-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A classifier fitted by `bushu cascade-train` on a few prompts, written into a temp dir.
fn trained(dir: &TempDir) -> PathBuf {
    let prompts = dir.path().join("prompts.txt");
    let lines: Vec<String> = [
        "ROMEO:\n",
        "JULIET:\nO Romeo",
        "HAMLET:\n",
        "KING LEAR:\nBlow, winds",
        "First Citizen:\n",
        "MACBETH:\nIs this a dagger",
        "PORTIA:\nThe quality of mercy",
        "OTHELLO:\n",
    ]
    .iter()
    .map(|p| serde_json::to_string(p).unwrap())
    .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let out = dir.path().join("c.json");
    let (code, _, err) = bushu(&[
        "cascade-train",
        "--cascade",
        &pair(),
        "--prompts",
        prompts.to_str().unwrap(),
        "-n",
        "8",
        "--agreement-cut",
        "0.5",
        "-t",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "cascade-train: {err}");
    out
}

#[test]
fn always_defer_is_the_largest_model_and_threshold_zero_the_smallest() {
    let dir = TempDir::new("defer");
    let c = trained(&dir);
    let c = c.to_str().unwrap();
    for prompt in PROMPTS {
        let (expert, amateur) = (plain(&path(EXPERT), prompt), plain(&path(AMATEUR), prompt));
        assert_ne!(
            expert, amateur,
            "{prompt:?}: the two models agree, the test proves nothing"
        );
        for judge in [&[][..], &["--cascade-classifier", c][..]] {
            fn with<'a>(judge: &[&'a str], t: &'a str) -> Vec<&'a str> {
                [judge, &["--cascade-threshold", t][..]].concat()
            }
            assert_eq!(
                cascade(prompt, &with(judge, "1")),
                (expert.clone(), 2),
                "{prompt:?} {judge:?}"
            );
            assert_eq!(
                cascade(prompt, &with(judge, "0")),
                (amateur.clone(), 1),
                "{prompt:?} {judge:?}"
            );
        }
    }
    // The saved classifier names its features and the models it was fitted for.
    let v = common::read_json(std::path::Path::new(c));
    assert_eq!(v["kind"], "bushu-cascade-classifier");
    assert_eq!(v["features"].as_array().unwrap().len(), 5);
    assert_eq!(v["models"][0]["name"], "shakespeare-amateur-q8_0.gguf");
    assert_eq!(v["models"][1]["name"], "shakespeare-expert-q8_0.gguf");
    assert_eq!(v["stages"][0]["train"]["examples"], 8);
}

#[test]
fn an_intermediate_threshold_follows_the_reported_reliability() {
    // Without a classifier the reliability is exp(mean token logprob) of the small model's answer: the
    // threshold just above it defers, the one at it keeps.
    let prompt = PROMPTS[0];
    let p = pair();
    let v = json_of(&[
        "run",
        "--cascade",
        &p,
        "-p",
        prompt,
        "-n",
        "24",
        "--temperature",
        "0",
        "-t",
        "1",
        "--json",
    ]);
    let r = v["cascade"]["stages"][0]["reliability"].as_f64().unwrap();
    let mean_lp = v["cascade"]["stages"][0]["features"]["mean_logprob"].as_f64().unwrap();
    assert!((r - mean_lp.exp()).abs() < 1e-12);
    assert!(r > 0.0 && r < 1.0, "{r}");
    let at = format!("{r}");
    let above = format!("{}", r + 1e-9);
    assert_eq!(cascade(prompt, &["--cascade-threshold", &at]).1, 1);
    assert_eq!(cascade(prompt, &["--cascade-threshold", &above]).1, 2);
}

fn fails(args: &[&str], expect: &str) {
    let (code, out, err) = bushu(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(out.trim().is_empty(), "{args:?} printed: {out}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    assert!(lines[0].contains(expect), "{args:?}: expected {expect:?} in {err:?}");
}

#[test]
fn bad_cascades_are_refused_with_one_line() {
    let p = pair();
    fn run<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [&["run", "-p", "To be", "-n", "4", "-t", "1"][..], extra].concat()
    }
    // Vocabulary: the Llama-2 tiny model and the Shakespeare expert, both named.
    let mixed = format!("{},{}", path(TINY), path(EXPERT));
    let (code, _, err) = bushu(&run(&["--cascade", &mixed]));
    assert_ne!(code, 0);
    assert!(
        err.contains("tiny-llama-q8_0.gguf")
            && err.contains("shakespeare-expert-q8_0.gguf")
            && err.contains("do not share a vocabulary"),
        "{err}"
    );
    fails(&run(&["--cascade", &mixed]), "do not share a vocabulary");
    for t in ["NaN", "-0.1", "1.5", "inf"] {
        fails(
            &run(&["--cascade", &p, "--cascade-threshold", t]),
            "--cascade-threshold must be a number in [0, 1]",
        );
    }
    fails(
        &run(&["--cascade", &path(EXPERT)]),
        "--cascade needs at least two models",
    );
    fails(
        &run(&["-m", &path(EXPERT), "--cascade-threshold", "0.5"]),
        "--cascade-threshold needs --cascade",
    );
    fails(
        &run(&["--cascade", &p, "--beams", "2"]),
        "--cascade and --beams cannot be combined",
    );
    fails(
        &run(&["--cascade", &p, "--lookup"]),
        "--cascade and speculative decoding",
    );
    // serve refuses the same way before it listens.
    fails(
        &["serve", "--port", "0", "--cascade", &path(EXPERT)],
        "--cascade needs at least two models",
    );
    fails(
        &["serve", "--port", "0", "--cascade", &p, "--cascade-threshold", "NaN"],
        "--cascade-threshold must be",
    );
    fails(
        &["serve", "--port", "0", "--cascade", &mixed],
        "do not share a vocabulary",
    );
    // A classifier made for other models (the F16 files of the same pair) is refused, as is a file that
    // is no classifier.
    let dir = TempDir::new("refuse");
    let c = trained(&dir);
    let f16 = format!(
        "{},{}",
        path("models/shakespeare/shakespeare-amateur-f16.gguf"),
        path("models/shakespeare/shakespeare-expert-f16.gguf")
    );
    fails(
        &run(&["--cascade", &f16, "--cascade-classifier", c.to_str().unwrap()]),
        "was fitted for the models shakespeare-amateur-q8_0.gguf → shakespeare-expert-q8_0.gguf",
    );
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"weights\": [1]}").unwrap();
    fails(
        &run(&["--cascade", &p, "--cascade-classifier", junk.to_str().unwrap()]),
        "is not a bushu cascade classifier",
    );
}

// ---- The classifier ----

#[test]
fn logistic_regression_matches_closed_forms() {
    // No features: the maximum-likelihood bias is logit(mean label) (the bias is not penalised).
    let y = [true, true, true, false];
    let x = vec![Vec::new(); 4];
    let (m, _) = Logistic::fit(&x, &y, 1.0).unwrap();
    assert!((m.bias - (0.75f64 / 0.25).ln()).abs() < 1e-9, "{}", m.bias);
    // One binary feature, no penalty: the fitted probability in each group is the group's share of
    // positives (3/4 and 1/4).
    let x: Vec<Vec<f64>> = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
        .iter()
        .map(|&v| vec![v])
        .collect();
    let y = [true, true, true, false, true, false, false, false];
    let (m, _) = Logistic::fit(&x, &y, 0.0).unwrap();
    assert!((m.score(&[0.0]) - 0.75).abs() < 1e-7, "{}", m.score(&[0.0]));
    assert!((m.score(&[1.0]) - 0.25).abs() < 1e-7, "{}", m.score(&[1.0]));
}

#[test]
fn logistic_gradient_matches_finite_differences() {
    let z = vec![
        vec![0.3, -1.2],
        vec![-0.7, 0.4],
        vec![1.5, 0.9],
        vec![-0.2, -0.1],
        vec![0.8, -0.6],
    ];
    let y = [true, false, true, false, true];
    let (w, b, l2) = (vec![0.4, -0.3], 0.2, 0.7);
    let (gw, gb) = Logistic::gradient(&z, &y, &w, b, l2);
    let h = 1e-6;
    for j in 0..2 {
        let (mut up, mut down) = (w.clone(), w.clone());
        up[j] += h;
        down[j] -= h;
        let num = (Logistic::loss(&z, &y, &up, b, l2) - Logistic::loss(&z, &y, &down, b, l2)) / (2.0 * h);
        assert!((num - gw[j]).abs() < 1e-6, "w{j}: {num} vs {}", gw[j]);
    }
    let num = (Logistic::loss(&z, &y, &w, b + h, l2) - Logistic::loss(&z, &y, &w, b - h, l2)) / (2.0 * h);
    assert!((num - gb).abs() < 1e-6, "bias: {num} vs {gb}");
    // At the fit the gradient (of the standardised problem) vanishes: the loss is no lower nearby.
}

#[test]
fn a_separable_feature_set_gets_the_expected_decisions() {
    // Reliable answers have a high mean logprob and a low entropy; unreliable ones the reverse; the
    // other three features are noise that does not separate them.
    let row = |lp: f64, h: f64, k: f64| vec![lp, lp - 1.0, h, 0.3 + 0.01 * k, 0.5 + 0.02 * k];
    let mut x = Vec::new();
    let mut y = Vec::new();
    for k in 0..10 {
        let k = k as f64;
        x.push(row(-0.2 - 0.03 * k, 0.5 + 0.05 * k, k));
        y.push(true);
        x.push(row(-2.0 - 0.1 * k, 2.5 + 0.1 * k, 9.0 - k));
        y.push(false);
    }
    let (m, stats) = Logistic::fit(&x, &y, 0.1).unwrap();
    assert_eq!(stats.accuracy, 1.0);
    assert_eq!(stats.positives, 10);
    // New answers on either side, and the weights' signs: logprob up → more reliable, entropy up → less.
    assert!(m.score(&row(-0.1, 0.4, 3.0)) > 0.9);
    assert!(m.score(&row(-3.0, 3.0, 3.0)) < 0.1);
    assert!(m.weights[0] > 0.0 && m.weights[2] < 0.0, "{:?}", m.weights);
    // Threshold semantics on the fitted scores: 0 keeps every answer, 1 none.
    for r in &x {
        let s = m.score(r);
        assert!(bushu::cascade::accepts(s, 0.0));
        assert!(!bushu::cascade::accepts(s, 1.0));
    }
}

// ---- The threshold sweep ----

/// An answer of `tokens` whose token probability is `p`, generated in `ms`, with a summed negative
/// log-likelihood `nll` under the largest model and a summed KL `kl` from it.
fn answer(tokens: &[u32], p: f32, ms: f64, nll: f64, kl: f64) -> Answer {
    let steps: Vec<Step> = tokens
        .iter()
        .map(|_| Step {
            logprob: p.ln(),
            top: vec![p.ln()],
        })
        .collect();
    let features = bushu::cascade::features::features(&steps, 4);
    Answer {
        generation: Generation {
            tokens: tokens.to_vec(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            logprobs: Vec::new(),
            chosen_logprobs: Vec::new(),
            sequences: Vec::new(),
            timings: Timings::default(),
        },
        steps,
        features,
        ms,
        largest_nll: (nll, tokens.len()),
        largest_kl: kl,
    }
}

#[test]
fn the_sweep_counts_stages_time_and_agreement_by_hand() {
    use bushu::tradeoff::cascade::{pick, sweep};
    // Three prompts: the small model (1 ms) is confident and right, confident and half wrong, unsure
    // and wrong; the large one takes 4 ms. Reliability without a classifier: the token probability.
    let runs = vec![
        PromptRun {
            answers: vec![
                answer(&[1, 2, 3, 4], 0.9, 1.0, 4.0, 0.4),
                answer(&[1, 2, 3, 4], 0.9, 4.0, 4.0, 0.0),
            ],
        },
        PromptRun {
            answers: vec![
                answer(&[1, 2, 9, 9], 0.7, 1.0, 8.0, 1.2),
                answer(&[1, 2, 3, 4], 0.9, 4.0, 4.0, 0.0),
            ],
        },
        PromptRun {
            answers: vec![
                answer(&[5, 5, 5, 5], 0.3, 1.0, 20.0, 3.0),
                answer(&[1, 2, 3, 4], 0.9, 4.0, 4.0, 0.0),
            ],
        },
    ];
    // The largest model's perplexity of the kept answers: exp(summed NLL / tokens).
    let ppl = |nll: f64| (nll / 12.0f64).exp();
    let rows = sweep(&Judge::MeanProbability, &runs, &[0.0, 0.5, 0.8, 1.0]);
    let r = &rows[0]; // everything kept
    assert_eq!(r.answered, vec![1.0, 0.0]);
    assert!((r.speedup - 12.0 / 3.0).abs() < 1e-12);
    assert!((r.agreement - 100.0 * (1.0 + 0.5 + 0.0) / 3.0).abs() < 1e-9);
    assert!((r.own_ppl - ppl(4.0 + 8.0 + 20.0)).abs() < 1e-9);
    assert!((r.kl - (0.4 + 1.2 + 3.0) / 12.0).abs() < 1e-12);
    let r = &rows[1]; // 0.9 and 0.7 kept, 0.3 deferred: 3 + 4 ms
    assert!((r.answered[0] - 2.0 / 3.0).abs() < 1e-12);
    assert!((r.speedup - 12.0 / 7.0).abs() < 1e-12);
    assert!((r.agreement - 100.0 * 2.5 / 3.0).abs() < 1e-9);
    assert!((r.own_ppl - ppl(4.0 + 8.0 + 4.0)).abs() < 1e-9);
    assert!((r.kl - (0.4 + 1.2) / 12.0).abs() < 1e-12);
    let r = &rows[2]; // only 0.9 kept: 3 + 8 ms, agreement 100 %
    assert!((r.answered[0] - 1.0 / 3.0).abs() < 1e-12);
    assert!((r.speedup - 12.0 / 11.0).abs() < 1e-12);
    assert!((r.agreement - 100.0).abs() < 1e-9);
    assert!((r.exact - 100.0).abs() < 1e-9);
    let r = &rows[3]; // all deferred: 15 ms
    assert_eq!(r.answered, vec![0.0, 1.0]);
    assert!((r.speedup - 12.0 / 15.0).abs() < 1e-12);
    assert!((r.own_ppl - std::f64::consts::E).abs() < 1e-9);
    assert_eq!(r.kl, 0.0);
    // Within 1 point of agreement, the most small-model answers: threshold 0.8.
    assert_eq!(pick(&rows, 1.0).unwrap().threshold, 0.8);
}

// ---- serve --cascade ----

fn start(threshold: f64) -> Server {
    let mut o = ServeOptions::new(common::shared(EXPERT));
    o.port = 0;
    o.ctx = Some(256);
    o.max_batch = 4;
    o.grace = Duration::from_secs(5);
    o.cascade = Some(CascadeOptions {
        models: vec![common::shared(AMATEUR), common::shared(EXPERT)],
        threshold,
        classifier: None,
    });
    Server::start(o).unwrap()
}

/// Status, lower-cased head and body of one request.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), rest.to_string())
}

/// The greedy text of one model for `prompt` (the library's decoder; the engine reproduces it).
fn greedy_text(rel: &str, prompt: &str, n: usize) -> String {
    use bushu::generate::{generate, GenerateOptions};
    use bushu::sampling::SamplingParams;
    let f = bushu::model::load(&common::shared(rel)).unwrap();
    let m = bushu::model::ModelOptions::default().build(&f).unwrap();
    let ids = f.tokenizer.encode(prompt, true).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let opts = GenerateOptions::new(n, greedy, f.eos_ids.clone());
    let mut st = m.new_state(256);
    generate(&m, &f.tokenizer, &mut st, &ids, &opts, &mut |_| {})
        .unwrap()
        .text
}

#[test]
fn serve_cascade_answers_and_reports_the_stage() {
    let prompt = "ROMEO:\n";
    let (small, large) = (greedy_text(AMATEUR, prompt, 16), greedy_text(EXPERT, prompt, 16));
    assert_ne!(small, large);
    for (threshold, stage, text) in [(0.0, 1, &small), (1.0, 2, &large)] {
        let server = start(threshold);
        let addr = server.addr;
        let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0});
        let (status, head, b) = request(addr, "POST", "/v1/completions", Some(&body));
        assert_eq!(status, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            text.as_str(),
            "threshold {threshold}"
        );
        assert_eq!(v["cascade"]["stage"], stage);
        assert!(v["choices"][0]["logprobs"].is_null(), "logprobs nobody asked for: {v}");
        assert!(head.contains(&format!("x-bushu-cascade-stage: {stage}")), "{head}");
        // Streamed: the same text, every chunk names the stage.
        let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": true});
        let (status, _, b) = request(addr, "POST", "/v1/completions", Some(&body));
        assert_eq!(status, 200);
        let mut streamed = String::new();
        for line in b.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                continue;
            }
            let c: Value = serde_json::from_str(line).unwrap();
            assert_eq!(c["cascade"]["stage"], stage, "{line}");
            streamed += c["choices"][0]["text"].as_str().unwrap_or("");
        }
        assert_eq!(&streamed, text);
        // Logprobs asked for: as many alternatives as asked, not the classifier's 20.
        let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 2});
        let (_, _, b) = request(addr, "POST", "/v1/completions", Some(&body));
        let v: Value = serde_json::from_str(&b).unwrap();
        let top = v["choices"][0]["logprobs"]["top_logprobs"].as_array().unwrap();
        assert!(top.iter().all(|t| t.as_object().unwrap().len() <= 2), "{v}");
        // /metrics: three answers by this stage, none by the other.
        let (_, _, m) = request(addr, "GET", "/metrics", None);
        let count = |s: usize| {
            m.lines()
                .find(|l| l.starts_with(&format!("bushu_cascade_answers_total{{stage=\"{s}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(count(stage), Some(3), "{m}");
        assert_eq!(count(3 - stage), Some(0), "{m}");
        server.shutdown().unwrap();
    }
}
