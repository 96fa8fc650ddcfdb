//! `train-medusa`, end to end on the Shakespeare amateur (a small real model, seconds per run): the
//! heads learn (held-out top-1 accuracy above the untrained heads', which are the LM head), the run is
//! deterministic under a seed (and another seed gives other heads), self-distillation trains on the
//! model's own text, the written heads drive Medusa decoding whose greedy output is plain greedy
//! decoding's, and bad input ends in one clear line.

mod common;
use common::{shared, text_slice, tmpdir};

use bushu::generate::{generate, GenerateOptions};
use bushu::model::{load, Model};
use bushu::sampling::SamplingParams;
use bushu::spec_decode::{generate_speculative, DraftLengthParams, Medusa, MedusaHeads};
use bushu_train::medusa::{encode_prompt, train_medusa, MedusaOptions, QuietMedusa};
use std::path::{Path, PathBuf};
use std::process::Command;

fn model_path() -> PathBuf {
    shared("models/shakespeare/shakespeare-amateur-f16.gguf")
}

fn small(dir: &Path, out: &str, seed: u64) -> MedusaOptions {
    let data = text_slice("testdata/shakespeare/train.txt", 0, 60_000, dir, "train.txt");
    let mut o = MedusaOptions::new(model_path(), 3, vec![data], dir.join(out));
    o.tokens = 12_000;
    o.ctx = 128;
    o.batch = 32;
    o.epochs = 2;
    o.lr = 3e-3;
    o.seed = seed;
    o
}

#[test]
fn heads_learn_and_decode_exactly() {
    let dir = tmpdir("learn");
    let mut o = small(&dir, "heads.gguf", 0);
    o.val = Some(text_slice("testdata/shakespeare/val.txt", 0, 20_000, &dir, "val.txt"));
    o.val_tokens = 1500;
    let r = train_medusa(&o, &mut QuietMedusa).unwrap();
    assert!(r.positions > 10_000 && r.steps > 0);
    assert_eq!(r.val_heads.len(), 3);
    // Head 1 (token t + 2) must beat what the LM head guesses for t + 2 by a margin.
    assert!(
        r.val_heads[0] > r.val_untrained[0] + 0.03,
        "trained {:?} vs untrained {:?}",
        r.val_heads,
        r.val_untrained
    );
    // Each head is harder than the one before, and all below the model's own next-token accuracy.
    assert!(r.val_heads[0] < r.val_base && r.val_heads[2] <= r.val_heads[0], "{r:?}");

    // The written heads in Medusa decoding: greedy output is plain greedy output.
    let f = load(&model_path()).unwrap();
    let m = Model::new(&f).unwrap();
    let heads = MedusaHeads::load(&o.out, &f).unwrap();
    let opts = GenerateOptions::new(40, SamplingParams::greedy(), Vec::new());
    let (mut accepted, mut steps) = (0, 0);
    for text in ["HAMLET: To be, or not to be,", "KING: My lord, the queen"] {
        let prompt = f.tokenizer.encode(text, true).unwrap();
        let mut st = m.new_state(256);
        let want = generate(&m, &f.tokenizer, &mut st, &prompt, &opts, &mut |_| {})
            .unwrap()
            .tokens;
        let mut p = Medusa::new(&heads, 10, None).unwrap();
        let mut st = m.new_state(256);
        let (g, s) = generate_speculative(
            (&m, &f.tokenizer, &mut st),
            &prompt,
            &opts,
            &mut p,
            DraftLengthParams::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(g.tokens, want, "{text}");
        accepted += s.draft_n_accepted;
        steps += s.draft_steps;
    }
    assert!(
        accepted > 0 && steps > 0,
        "the trained heads' drafts were never accepted"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `head_vocab` (FR-Spec): the heads learn the first rows of the classifier only, the file says so,
/// the held-out labels past them count as misses, and decoding with them stays plain greedy decoding.
#[test]
fn restricted_heads_learn_and_are_stored() {
    let dir = tmpdir("vocab");
    let mut o = small(&dir, "heads.gguf", 0);
    o.tokens = 6_000;
    o.epochs = 1;
    o.head_vocab = Some(1024);
    o.val = Some(text_slice("testdata/shakespeare/val.txt", 0, 8_000, &dir, "val.txt"));
    o.val_tokens = 800;
    let r = train_medusa(&o, &mut QuietMedusa).unwrap();
    let f = load(&model_path()).unwrap();
    let m = Model::new(&f).unwrap();
    let heads = MedusaHeads::load(&o.out, &f).unwrap();
    assert_eq!(heads.vocab, Some(1024));
    assert_eq!(heads.rows_on(&m), 1024);
    // Some held-out labels are past the first 1,024 ids (the vocabulary has 4,096), most are not.
    for &x in &r.val_in_vocab {
        assert!(x > 0.5 && x < 1.0, "{:?}", r.val_in_vocab);
    }
    // The heads' accuracy cannot exceed the share of labels they can name.
    for (a, x) in r.val_heads.iter().zip(&r.val_in_vocab) {
        assert!(a <= x, "{r:?}");
    }
    assert!(r.val_heads[0] > r.val_untrained[0], "{r:?}");
    let opts = GenerateOptions::new(32, SamplingParams::greedy(), Vec::new());
    let prompt = f.tokenizer.encode("HAMLET: To be, or not to be,", true).unwrap();
    let mut st = m.new_state(256);
    let want = generate(&m, &f.tokenizer, &mut st, &prompt, &opts, &mut |_| {})
        .unwrap()
        .tokens;
    let mut p = Medusa::new(&heads, 8, None).unwrap();
    let mut st = m.new_state(256);
    let (g, s) = generate_speculative(
        (&m, &f.tokenizer, &mut st),
        &prompt,
        &opts,
        &mut p,
        DraftLengthParams::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens, want);
    assert!(s.draft_steps > 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn deterministic_under_a_seed_and_self_distills() {
    let dir = tmpdir("seed");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "ROMEO:\nJULIET: O Romeo,\n").unwrap();
    let run = |out: &str, seed: u64| {
        let mut o = small(&dir, out, seed);
        o.tokens = 2_000;
        o.epochs = 1;
        o.self_distill_prompts = Some(prompts.clone());
        o.self_distill_tokens = 24;
        let r = train_medusa(&o, &mut QuietMedusa).unwrap();
        (std::fs::read(&o.out).unwrap(), r)
    };
    let (a, ra) = run("a.gguf", 7);
    let (b, _) = run("b.gguf", 7);
    let (c, _) = run("c.gguf", 8);
    assert_eq!(a, b, "same seed, different heads");
    assert_ne!(a, c, "another seed (batch order) gave the same heads");
    // Every generated token but the last `heads + 1` of each continuation is a training position.
    assert_eq!(ra.self_distilled_positions, 2 * (24 - 3), "{ra:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--chat` prompts: a user message in the model's chat template (ChatML for the Shakespeare model,
/// which has none), tokenized as `bushu chat` does, without BOS.
#[test]
fn chat_prompts_use_the_template() {
    let f = load(&model_path()).unwrap();
    let (t, _, own) = bushu::chat::session::template_for(&f).unwrap();
    assert!(!own);
    let got = encode_prompt(&f, Some(&t), "ROMEO: speak").unwrap();
    let want = f
        .tokenizer
        .encode_with(
            "<|im_start|>user\nROMEO: speak<|im_end|>\n<|im_start|>assistant\n",
            false,
            true,
        )
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(
        encode_prompt(&f, None, "ROMEO: speak").unwrap(),
        f.tokenizer.encode("ROMEO: speak", true).unwrap()
    );
}

fn train_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu-train"))
        .arg("train-medusa")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tmpdir("bad");
    let data = text_slice("testdata/shakespeare/train.txt", 0, 2_000, &dir, "d.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let m = model_path();
    let (m, d, e) = (m.to_str().unwrap(), data.to_str().unwrap(), empty.to_str().unwrap());
    let out = dir.join("h.gguf");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "--model",
                m,
                "--heads",
                "3",
                "--data",
                d,
                "--head-vocab",
                "0",
                "--out",
                o,
            ],
            "--head-vocab must be at least 1",
        ),
        (
            &["--model", m, "--heads", "0", "--data", d, "--out", o],
            "--heads must be between 1 and 8",
        ),
        (
            &["--model", m, "--heads", "9", "--data", d, "--out", o],
            "--heads must be between 1 and 8",
        ),
        (&["--model", m, "--heads", "3", "--data", e, "--out", o], "hold no text"),
        (
            &["--model", d, "--heads", "3", "--data", d, "--out", o],
            "is not a GGUF file",
        ),
        (
            &[
                "--model",
                m,
                "--heads",
                "3",
                "--data",
                d,
                "--self-distill-prompts",
                e,
                "--out",
                o,
            ],
            "has no prompt",
        ),
    ];
    for (args, expect) in cases {
        let (code, _, err) = train_cli(args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(expect), "{args:?}: {err}");
    }
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// `eval-medusa` end to end on the amateur with zero heads (each says what the LM head says): every
/// Medusa run is checked identical to plain greedy (2/2 in the table), for the file's vocabulary and a
/// restricted one; the drafting cost line names each vocabulary; a zero tree budget is one clear line.
#[test]
fn eval_medusa_runs_and_checks_identity() {
    let dir = tmpdir("eval");
    let f = load(&model_path()).unwrap();
    let heads = dir.join("zero.gguf");
    MedusaHeads::zeros(f.config.dim, 2)
        .unwrap()
        .to_gguf(&bushu::spec_decode::medusa::BaseIdentity::of(&f))
        .write(&heads)
        .unwrap();
    let prompts = dir.join("p.txt");
    std::fs::write(&prompts, "ROMEO: O\nJULIET: Ay me\n").unwrap();
    let m = model_path();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bushu-train"))
            .args(["eval-medusa", "--model", m.to_str().unwrap(), "--heads"])
            .arg(&heads)
            .arg("--prompts")
            .arg(&prompts)
            .args(["-n", "8", "--greedy-only"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--trees", "2,3", "--vocabs", "0,512"]);
    assert_eq!(code, 0, "{err}");
    for row in [
        "| Medusa tree of 2 | 4096 | 2/2 |",
        "| Medusa tree of 2 | 512 | 2/2 |",
        "| Medusa tree of 3 | 512 | 2/2 |",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.contains("4096 ids") && out.contains("512 ids"), "{out}");
    let (code, _, err) = run(&["--trees", "0"]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("--trees"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
