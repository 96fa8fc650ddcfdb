//! `train-exit-adapters` (the tuned lens, issue 20), end to end on the Shakespeare expert (seconds):
//! training lowers each exit's KL to the model's final distribution, and on held-out text (bushu's own
//! inference path, the written file) the adapted exits are closer to the last layer than the shared
//! head — lower KL, at least its top-1 agreement; a seed gives the same file bit for bit; bad input ends
//! in one clear line.

mod common;
use common::{shared, tmpdir, train_cli};

use bushu::model::exit_adapters::ExitAdapters;
use bushu::model::{load, Model};
use bushu::tradeoff::early_exit::layer_profile;
use bushu_train::exit_adapters::{train_exit_adapters, AdapterOptions};

const EXPERT: &str = "models/shakespeare/shakespeare-expert-q8_0.gguf";

fn options(out: std::path::PathBuf, tokens: usize, epochs: usize) -> AdapterOptions {
    let mut o = AdapterOptions::new(shared(EXPERT), vec![shared("testdata/shakespeare/train.txt")], out);
    o.layers = Some(vec![1, 3]);
    o.tokens = tokens;
    o.ctx = 128;
    o.batch = 64;
    o.epochs = epochs;
    o
}

#[test]
fn adapters_bring_the_exits_closer_to_the_last_layer() {
    let dir = tmpdir("exit-adapters");
    let out = dir.join("a.gguf");
    let r = train_exit_adapters(&options(out.clone(), 4096, 2), &mut |_| {}).unwrap();
    assert_eq!(r.layers, vec![1, 3]);
    for (i, l) in r.layers.iter().enumerate() {
        assert!(
            r.final_kl[i] < 0.9 * r.first_kl[i],
            "exit after {l}: training KL {} -> {}",
            r.first_kl[i],
            r.final_kl[i]
        );
    }
    // Held out, through bushu's inference path and the written file.
    let f = load(&shared(EXPERT)).unwrap();
    let m = Model::new(&f).unwrap();
    let a = ExitAdapters::load(&out, &f, &m).unwrap();
    assert_eq!(a.layers, vec![1, 3]);
    let text = std::fs::read_to_string(shared("testdata/shakespeare/val.txt")).unwrap();
    let tokens = bushu::perplexity::tokenize_text(&f.tokenizer, &text).unwrap();
    let sizes = bushu::tradeoff::Sizes {
        windows: 2,
        window: 128,
        prefix: 16,
        prompts: 1,
        prompt: 16,
        n: 4,
    };
    let held = bushu::tradeoff::heldout(&m, &tokens, f.tokenizer.bos_id(), sizes).unwrap();
    let prof = layer_profile(&m, &held, Some(&a)).unwrap();
    for p in &prof {
        match p.adapted {
            Some((_, top1, kl)) => {
                assert!(a.layers.contains(&p.layers));
                eprintln!(
                    "exit after {}: shared head KL {:.3} top-1 {:.3}, adapter KL {kl:.3} top-1 {top1:.3}",
                    p.layers, p.kl, p.top1
                );
                assert!(kl < 0.8 * p.kl, "exit after {}: held-out KL {} -> {kl}", p.layers, p.kl);
                assert!(top1 >= p.top1, "exit after {}: top-1 {} -> {top1}", p.layers, p.top1);
            }
            None => assert!(!a.layers.contains(&p.layers)),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_seed_gives_the_same_adapters() {
    let dir = tmpdir("exit-adapters-seed");
    let (a, b) = (dir.join("a.gguf"), dir.join("b.gguf"));
    train_exit_adapters(&options(a.clone(), 512, 1), &mut |_| {}).unwrap();
    train_exit_adapters(&options(b.clone(), 512, 1), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_gets_one_line() {
    let dir = tmpdir("exit-adapters-bad");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let model = shared(EXPERT);
    let data = shared("testdata/shakespeare/val.txt");
    let out = dir.join("a.gguf");
    let (m, d, e, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        empty.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for (args, want) in [
        (vec!["--model", d, "--data", d, "--out", o], "is not a GGUF file"),
        (
            vec!["--model", m, "--data", e, "--out", o],
            "the data files hold no text",
        ),
        (
            vec!["--model", m, "--data", d, "--exit-layers", "0", "--out", o],
            "exit layer 0 is not between 1 and 5",
        ),
        (
            vec!["--model", m, "--data", d, "--exit-layers", "2,6", "--out", o],
            "exit layer 6 is not between 1 and 5",
        ),
        (
            vec!["--model", m, "--data", d, "--exit-layers", "x", "--out", o],
            "is not a layer number",
        ),
        (
            vec!["--model", m, "--data", d, "--batch", "0", "--out", o],
            "--batch and --epochs must be at least 1",
        ),
        (
            vec!["--model", m, "--data", d, "--lr", "0", "--out", o],
            "--lr must be a positive number",
        ),
    ] {
        let (code, err) = train_cli("train-exit-adapters", &args);
        assert!(code != 0 && err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
