//! `bushu tradeoff --method semi-ar` and `--method cascade` (issue 20): semi-AR at K = 0 is plain greedy
//! decoding (agreement 1, KL 0, `bushu run`'s tokens), its teacher-forced rows are the model's own or a
//! head's distribution as the grouping says (against one batched pass), its compute is `bushu run
//! --semi-ar K --json`'s passes per token; the cascade's rows are `bushu cascade-report`'s (one function)
//! with its neutral thresholds at the ends; its chart and table are written; and bad flags get one line.
//! On the Shakespeare expert (random Medusa heads written by the test) and the Shakespeare pair, seconds.

mod common;
use bushu::model::{load, Logits, Model, ModelFile};
use bushu::sampling::rng::Rng;
use bushu::spec_decode::medusa::BaseIdentity;
use bushu::spec_decode::MedusaHeads;
use bushu::tradeoff::semi_ar::SemiArMethod;
use bushu::tradeoff::{full_greedy, measure, Method};
use common::{shared, small_heldout};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const AMATEUR_Q8: &str = "models/shakespeare/shakespeare-amateur-q8_0.gguf";
const EXPERT_Q8: &str = "models/shakespeare/shakespeare-expert-q8_0.gguf";
const TINY: &str = "models/tiny-llama-f16.gguf";
const VAL: &str = "testdata/shakespeare/val.txt";

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

/// `k` heads with small uniform weights from `seed` (what an untrained-but-not-zero head guesses: often
/// another token than the model's).
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

/// A directory of this test process, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("bushu-tradeoff-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn s(&self, name: &str) -> String {
        self.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The last line of a successful run's stdout, as JSON.
fn last_json(args: &[&str]) -> Value {
    let (code, out, err) = bushu(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn path(rel: &str) -> String {
    shared(rel).to_str().unwrap().to_owned()
}

// ---- semi-AR ----

#[test]
fn semi_ar_k0_is_plain_and_k_counts_passes() {
    let (f, m) = open(EXPERT);
    let held = small_heldout(&f, &m);
    let mut method = SemiArMethod::new(&m, random_heads(m.config.dim, 3, 0.02, 5)).unwrap();
    assert_eq!(method.default_points(), [0.0, 1.0, 2.0, 3.0]);
    let neutral = measure(&mut method, &m, &held, 0.0).unwrap();
    assert!(neutral.kl < 1e-9, "{neutral:?}");
    assert_eq!(neutral.agreement, 1.0);
    assert_eq!(neutral.compute_fraction, 1.0);
    assert!((neutral.own_ppl - held.full.own_ppl).abs() < 1e-9 * held.full.own_ppl);
    for p in &held.prompts {
        let (want, _) = full_greedy(&m, p, 12).unwrap();
        assert_eq!(method.generate(0.0, p, 12).unwrap().0, want);
    }
    // K = 2 over 12 tokens: groups of 3, so 4 passes (the prompt's and three more) for 12 tokens.
    let k2 = measure(&mut method, &m, &held, 2.0).unwrap();
    assert!((k2.compute_fraction - 4.0 / 12.0).abs() < 1e-12, "{k2:?}");
    assert!(k2.kl > 0.01 && k2.agreement < 1.0, "{k2:?}");
    let (_, c) = method.generate(2.0, &held.prompts[0], 12).unwrap();
    assert_eq!((c.macs, c.full_macs, c.tokens), (4.0, 12.0, 9));
    // The knob's range: 0 to the number of heads, whole numbers.
    for bad in [4.0, -1.0, 1.5, f64::NAN] {
        assert!(method.check_point(bad).is_err(), "{bad}");
    }
    assert!(method
        .check_point(4.0)
        .unwrap_err()
        .to_string()
        .contains("the heads file has 3 heads"));
}

#[test]
fn semi_ar_teacher_forced_rows_follow_the_groups() {
    // Against one batched pass over the window: row i (the distribution of token i + 1) is the model's
    // own logits at the last position q of the pass it follows when i = q, else head i - q - 1 on the
    // hidden state at q; q runs from `from - 1` in steps of K + 1.
    let (f, m) = open(EXPERT);
    let held = small_heldout(&f, &m);
    let heads = random_heads(m.config.dim, 3, 0.02, 7);
    let mut method = SemiArMethod::new(&m, heads.clone()).unwrap();
    let w = &held.windows[0];
    let (toks, from) = (&w.tokens, w.from);
    let vocab = m.config.vocab_size;
    let dim = m.config.dim;
    let mut st = m.new_state(toks.len());
    let all = m
        .forward(&mut st, &toks[..toks.len() - 1], Logits::All)
        .unwrap()
        .to_vec();
    let hidden = st.hidden().to_vec();
    for k in [1usize, 3] {
        let mut rows = Vec::new();
        method
            .score(k as f64, toks, from, &mut |i, row| rows.push((i, row.to_vec())))
            .unwrap();
        assert_eq!(rows.len(), toks.len() - 1 - from);
        let mut heads_seen = 0;
        for (i, row) in rows {
            let q = from - 1 + (k + 1) * ((i + 1 - from) / (k + 1));
            let want = if i == q {
                all[q * vocab..(q + 1) * vocab].to_vec()
            } else {
                heads_seen += 1;
                let mut out = Vec::new();
                heads.logits(&m, &hidden[q * dim..(q + 1) * dim], i - q, &mut out);
                out[(i - q - 1) * vocab..(i - q) * vocab].to_vec()
            };
            let diff = row.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 2e-3, "K = {k}, row {i}: max |diff| {diff}");
        }
        assert!(heads_seen > 0);
    }
}

#[test]
fn semi_ar_on_the_command_line() {
    let (f, m) = open(EXPERT);
    let dir = TempDir::new("semi-ar");
    random_heads(m.config.dim, 3, 0.02, 2)
        .to_gguf(&BaseIdentity::of(&f))
        .write(&dir.join("heads.gguf"))
        .unwrap();
    let heads = dir.s("heads.gguf");
    let (expert, val) = (path(EXPERT), path(VAL));
    let (md, svg) = (dir.s("sub/semi.md"), dir.s("sub/semi.svg"));
    let v = last_json(&[
        "tradeoff",
        "-m",
        &expert,
        "--method",
        "semi-ar",
        "--medusa",
        &heads,
        "-f",
        &val,
        "--windows",
        "1",
        "--window",
        "48",
        "--prefix",
        "16",
        "--prompts",
        "2",
        "--prompt-tokens",
        "16",
        "-n",
        "24",
        "--points",
        "0,2",
        "--out-md",
        &md,
        "--out-svg",
        &svg,
        "-t",
        "1",
        "--json",
    ]);
    assert_eq!(v["method"], "semi-ar");
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3, "{v}");
    assert_eq!(pts[1]["knob"], 0.0);
    assert_eq!(pts[1]["agreement"], 1.0);
    assert!(pts[1]["kl"].as_f64().unwrap() < 1e-9);
    assert_eq!(pts[1]["compute_fraction"], 1.0);
    // `bushu run --semi-ar 2 --json` on a 24-token answer: its tokens per pass are 1 / compute.
    let text = "ROMEO: But soft, what light through yonder window breaks?";
    let run = |extra: &[&str]| {
        last_json(
            &[
                &[
                    "run", "-m", &expert, "-p", text, "-n", "24", "--temp", "0", "-t", "1", "--json",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let r = run(&["--medusa", &heads, "--semi-ar", "2"]);
    assert_eq!(r["tokens"].as_array().unwrap().len(), 24);
    let tpp = r["semi_ar"]["tokens_per_pass"].as_f64().unwrap();
    assert!(
        (pts[2]["compute_fraction"].as_f64().unwrap() - 1.0 / tpp).abs() < 1e-12,
        "{v} {r}"
    );
    // K = 0 continues a prompt as plain `bushu run` does.
    let plain = run(&[]);
    let prompt = f.tokenizer.encode(text, true).unwrap();
    let mut method = SemiArMethod::new(&m, random_heads(m.config.dim, 3, 0.02, 2)).unwrap();
    let (mine, _) = method.generate(0.0, &prompt, 24).unwrap();
    let want: Vec<u32> = plain["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(want.len(), 24);
    assert_eq!(mine, want);
    // The table and the chart.
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| K (head tokens per pass) | forward passes per token (fraction of plain) |"));
    assert!(table.contains("| 0 | 1.000 |"), "{table}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("forward passes per generated token"));
}

// ---- cascade ----

fn prompts_file(dir: &TempDir) -> String {
    let lines: Vec<String> = [
        "ROMEO:\n",
        "JULIET:\nO Romeo",
        "HAMLET:\n",
        "KING LEAR:\nBlow, winds",
        "First Citizen:\n",
        "MACBETH:\nIs this a dagger",
    ]
    .iter()
    .map(|p| serde_json::to_string(p).unwrap())
    .collect();
    std::fs::write(dir.join("prompts.txt"), lines.join("\n")).unwrap();
    dir.s("prompts.txt")
}

/// A sweep's rows without their timings (which differ from run to run).
fn untimed(rows: &Value) -> Vec<Value> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for k in ["cascade_ms", "largest_ms", "speedup"] {
                r.as_object_mut().unwrap().remove(k);
            }
            r
        })
        .collect()
}

#[test]
fn cascade_rows_are_cascade_reports() {
    let dir = TempDir::new("cascade");
    let prompts = prompts_file(&dir);
    let pair = format!("{},{}", path(AMATEUR_Q8), path(EXPERT_Q8));
    let common = ["--cascade", &pair, "--prompts", &prompts, "-n", "8", "-t", "1"];
    let report = last_json(
        &[
            &["cascade-report"][..],
            &common,
            &["--thresholds", "0,0.05,0.1,1", "--json"],
        ]
        .concat(),
    );
    let out = dir.s("out");
    let v = last_json(
        &[
            &["tradeoff", "--method", "cascade"][..],
            &common,
            &["--thresholds", "0,0.05,0.1,1", "--out", &out, "--json"],
        ]
        .concat(),
    );
    assert_eq!(v["method"], "cascade");
    for k in ["models", "judge", "prompts", "max_tokens"] {
        assert_eq!(v[k], report[k], "{k}");
    }
    assert_eq!(untimed(&v["rows"]), untimed(&report["rows"]));
    // The neutral ends: threshold 0 keeps every amateur answer, 1 defers every prompt to the expert.
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["answered"], serde_json::json!([1.0, 0.0]));
    assert_eq!(rows[3]["answered"], serde_json::json!([0.0, 1.0]));
    assert_eq!(rows[3]["agreement"], 100.0);
    assert_eq!(rows[3]["exact"], 100.0);
    // The largest model's own answers are 0 nats from it; the amateur's are not.
    assert_eq!(rows[3]["kl"], 0.0);
    assert!(rows[0]["kl"].as_f64().unwrap() > 0.1, "{}", rows[0]);
    assert!(rows[0]["own_ppl"].as_f64().unwrap() > rows[3]["own_ppl"].as_f64().unwrap());
    // `--points` is the same list as `--thresholds`.
    let p = last_json(
        &[
            &["tradeoff", "--method", "cascade"][..],
            &common,
            &["--points", "0,0.05,0.1,1", "--out", &out, "--json"],
        ]
        .concat(),
    );
    assert_eq!(untimed(&p["rows"]), untimed(&report["rows"]));
    let md = std::fs::read_to_string(dir.join("out/tradeoff-cascade.md")).unwrap();
    assert!(md.starts_with("# cascade: shakespeare-amateur-q8_0.gguf → shakespeare-expert-q8_0.gguf"));
    assert!(md.contains("| 1.00 | 0.0 % | 100.0 % |"), "{md}");
    assert!(md.contains("within 1 point(s) of agreement"), "{md}");
    let svg = std::fs::read_to_string(dir.join("out/tradeoff-cascade.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("agreement with the largest model"));
    assert!(svg.contains("answered by shakespeare-amateur-q8_0.gguf"));
}

// ---- bad input ----

#[test]
fn bad_tradeoff_flags_get_one_line() {
    let (f, m) = open(EXPERT);
    let (tf, tm) = open(TINY);
    let dir = TempDir::new("bad");
    random_heads(m.config.dim, 3, 0.02, 3)
        .to_gguf(&BaseIdentity::of(&f))
        .write(&dir.join("heads.gguf"))
        .unwrap();
    MedusaHeads::zeros(tm.config.dim, 2)
        .unwrap()
        .to_gguf(&BaseIdentity::of(&tf))
        .write(&dir.join("tiny-heads.gguf"))
        .unwrap();
    let (heads, tiny_heads) = (dir.s("heads.gguf"), dir.s("tiny-heads.gguf"));
    let prompts = prompts_file(&dir);
    let (expert, val) = (path(EXPERT), path(VAL));
    let pair = format!("{},{}", path(AMATEUR_Q8), path(EXPERT_Q8));
    let mixed = format!("{},{}", path(TINY), path(EXPERT_Q8));
    let out = dir.s("out");
    let per_token = |method: &'static str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["tradeoff", "-m", &expert, "--method", method, "-f", &val, "--out", &out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cascade = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["tradeoff", "--method", "cascade", "--out", &out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            cascade(&["--prompts", &prompts]),
            "--method cascade needs --cascade SMALL,LARGE",
        ),
        (cascade(&["--cascade", &pair]), "--method cascade needs --prompts FILE"),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "-m", &expert]),
            "not --model",
        ),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "-f", &val]),
            "--file belongs to the per-token methods",
        ),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "--window", "64"]),
            "--window belongs to the per-token methods",
        ),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "--medusa", &heads]),
            "--medusa belongs to --method semi-ar, not --method cascade",
        ),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "--thresholds", "0,1.5"]),
            "must be a number in [0, 1]",
        ),
        (
            cascade(&["--cascade", &mixed, "--prompts", &prompts]),
            "do not share a vocabulary",
        ),
        (
            cascade(&["--cascade", &pair, "--prompts", &prompts, "--out-svg", "/tmp/x.png"]),
            "written as .svg",
        ),
        (
            per_token("early-exit", &["--cascade", &pair]),
            "--cascade belongs to --method cascade, not --method early-exit",
        ),
        (
            per_token("semi-ar", &["--medusa", &heads, "--cascade-classifier", "c.json"]),
            "--cascade-classifier belongs to --method cascade",
        ),
        (
            per_token("early-exit", &["--medusa", &heads]),
            "--medusa belongs to --method semi-ar, not --method early-exit",
        ),
        (
            per_token("mod", &["--medusa", &heads]),
            "--medusa belongs to --method semi-ar",
        ),
        (per_token("semi-ar", &[]), "--method semi-ar needs --medusa HEADS.gguf"),
        (
            per_token("semi-ar", &["--medusa", &heads, "--points", "0,4"]),
            "K = 4 but the heads file has 3 heads",
        ),
        (
            per_token("semi-ar", &["--medusa", &heads, "--points", "1.5"]),
            "K is a whole number",
        ),
        (
            per_token("semi-ar", &["--medusa", &tiny_heads]),
            "trained for another model",
        ),
        (
            per_token("early-exit", &["--prompts", &prompts]),
            "is not a number of prompts",
        ),
        (
            vec![
                "tradeoff".into(),
                "-m".into(),
                expert.clone(),
                "--method".into(),
                "early-exit".into(),
            ],
            "--method early-exit needs --file TEXT",
        ),
        (
            per_token("semi-ar", &["--medusa", &heads, "--out-svg", "/tmp/x.png"]),
            "written as .svg",
        ),
    ];
    for (args, expect) in &cases {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, stdout, err) = bushu(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(stdout.trim().is_empty(), "{args:?} printed: {stdout}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
        assert!(lines[0].contains(expect), "{args:?}: expected {expect:?} in {err:?}");
    }
    assert!(!dir.join("out").exists(), "a refused run wrote its outputs");
}
