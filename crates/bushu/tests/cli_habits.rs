//! The command line as a new user meets it (issue 22): llama.cpp's flag spellings parse to the same
//! options (`-c/--ctx-size`, `--temp`, `-f FILE`, `-s/--seed`, `-ngl N` with a CPU-only note), output into
//! a closed pipe ends quietly as the shell's tools do, `--version` names the commit and the kernels,
//! completions are generated, `roofline --measure` needs no model, and perplexity has one precision flag.

mod common;

use bushu::cli::{llama_cpp_args, Cli, Command as Sub, PrecisionArg};
use clap::Parser;
use common::shared;
use std::process::{Command, Stdio};

fn parse(args: &[&str]) -> Cli {
    let argv = std::iter::once("bushu").chain(args.iter().copied()).map(Into::into);
    Cli::try_parse_from(llama_cpp_args(argv)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn tiny() -> String {
    shared("models/tiny-llama-q8_0.gguf").to_str().unwrap().to_owned()
}

#[test]
fn llama_cpp_aliases_parse_to_the_same_options() {
    let long = parse(&[
        "run",
        "-m",
        "M",
        "--ctx",
        "256",
        "--temperature",
        "0.5",
        "--seed",
        "7",
        "--prompt",
        "hi",
        "--n-gpu-layers",
        "99",
    ]);
    let short = parse(&[
        "run", "-m", "M", "-c", "256", "--temp", "0.5", "-s", "7", "-p", "hi", "-ngl", "99",
    ]);
    for cli in [long, short] {
        let Sub::Run(a) = cli.command else { panic!("not run") };
        assert_eq!(
            (a.ctx, a.sampling.temperature, a.sampling.seed),
            (Some(256), Some(0.5), 7)
        );
        assert_eq!(a.prompt.as_deref(), Some("hi"));
        assert_eq!(a.model.n_gpu_layers.as_deref(), Some("99"));
    }
    let Sub::Run(a) = parse(&["run", "-f", "p.txt", "--ctx-size", "64", "-ngl=all"]).command else {
        panic!()
    };
    assert_eq!(
        (a.file.as_deref(), a.prompt.as_deref(), a.ctx),
        (Some(std::path::Path::new("p.txt")), None, Some(64))
    );
    assert_eq!(a.model.n_gpu_layers.as_deref(), Some("all"));
    // A prompt is required, and only one of them.
    assert!(Cli::try_parse_from(["bushu", "run", "-m", "M"]).is_err());
    assert!(Cli::try_parse_from(["bushu", "run", "-p", "a", "-f", "b"]).is_err());

    let Sub::Chat(a) = parse(&[
        "chat",
        "-c",
        "512",
        "--temp",
        "0.3",
        "-s",
        "3",
        "--repeat-penalty",
        "1.1",
    ])
    .command
    else {
        panic!()
    };
    assert_eq!(
        (a.ctx, a.sampling.temperature, a.sampling.seed),
        (Some(512), Some(0.3), 3)
    );
    assert_eq!(a.sampling.repetition_penalty, 1.1);
    let Sub::Serve(a) = parse(&["serve", "--ctx-size", "1024"]).command else {
        panic!()
    };
    assert_eq!(a.ctx, Some(1024));
    let Sub::Perplexity(a) = parse(&["perplexity", "-f", "t.txt", "--ctx-size", "128"]).command else {
        panic!()
    };
    assert_eq!(a.ctx, 128);
}

#[test]
fn one_precision_flag_wide_by_default() {
    let Sub::Run(a) = parse(&["run", "-p", "x"]).command else {
        panic!()
    };
    assert_eq!(a.model.precision, PrecisionArg::Wide);
    assert_eq!(a.model.precision(), kernels::Precision::Wide);
    let Sub::Run(a) = parse(&["run", "-p", "x", "--precision", "fast"]).command else {
        panic!()
    };
    assert_eq!(a.model.precision(), kernels::Precision::Fast);
    let Sub::Perplexity(a) = parse(&["perplexity", "-f", "t", "--exact-activations"]).command else {
        panic!()
    };
    assert_eq!(a.model.precision(), kernels::Precision::Exact);
    // perplexity's old second spelling is gone; the two spellings of exact cannot be mixed.
    assert!(Cli::try_parse_from(["bushu", "perplexity", "-f", "t", "--exact"]).is_err());
    assert!(Cli::try_parse_from(["bushu", "run", "-p", "x", "--exact-activations", "--precision", "fast"]).is_err());
}

#[test]
fn ngl_runs_with_a_cpu_only_note() {
    let dir = common::TempDir::new("cli-habits-ngl");
    let prompt = dir.0.join("prompt.txt");
    std::fs::write(&prompt, "Once upon a time").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["run", "-m", &tiny(), "-ngl", "99", "-f", prompt.to_str().unwrap()])
        .args(["-c", "64", "--temp", "0", "-s", "1", "-n", "3", "--json", "-t", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("-ngl/--n-gpu-layers 99 ignored: this build of bushu runs on the CPU only"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The prompt came from the file: BOS + its tokens.
    assert!(v["prompt_tokens"].as_array().unwrap().len() > 3, "{v}");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3);
}

/// Runs `args` with stdout a pipe whose reading end is already closed.
#[cfg(unix)]
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[cfg(unix)]
#[test]
fn closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tiny = tiny();
    for args in [
        &["info", "--model", &tiny][..],
        &["roofline", "--list-hardware"],
        &["tokenize", "--model", &tiny, "hello world"],
    ] {
        let (status, err) = into_closed_pipe(args);
        // Killed by SIGPIPE, as `yes | head -1`'s `yes` is (the shell reports 141), and nothing said.
        assert_eq!(status.signal(), Some(13), "{args:?}: {status:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn version_names_commit_and_kernels() {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let level = kernels::Simd::active().name();
    assert!(
        v.starts_with(&format!("bushu {} (git ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains(&format!("kernels: {level} (")), "{v}");
    // The hash is the checkout's, when the tests run in one.
    if let Ok(g) = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output() {
        let head = String::from_utf8_lossy(&g.stdout).trim().to_string();
        if g.status.success() && !head.is_empty() {
            assert!(v.contains(&format!("(git {head})")), "{v} vs HEAD {head}");
        }
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8_lossy(&out.stdout);
        for word in ["bushu", "roofline", "ctx-size", "precision"] {
            assert!(s.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn roofline_measure_needs_no_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "roofline",
            "--measure",
            "--measure-mib",
            "8",
            "--passes",
            "1",
            "-t",
            "1",
        ])
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{e}");
    assert!(
        o.contains("hardware   this-machine") && o.contains("measured bandwidth"),
        "{o}"
    );
    assert!(!o.contains("phase"), "no model, no operations: {o}");
    // A partial shape is still an error, not silently dropped.
    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "roofline",
            "--measure",
            "--layers",
            "2",
            "--measure-mib",
            "8",
            "--passes",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hidden"));
}
