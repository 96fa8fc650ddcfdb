//! One rule for the default sampling values of every command (issue 22): a flag (or a request field) wins,
//! else the model's own values (GGUF `general.sampling.*`, a Hugging Face directory's
//! `generation_config.json`), else bushu's: temperature 0.8 (llama.cpp's) for `run` and `serve` requests,
//! greedy for `chat`; top-k 40 / top-p 0.95 for the command line.

mod common;

use bushu::cli::sampling::Command as Cmd;
use bushu::cli::{llama_cpp_args, Cli, Command as Sub};
use bushu::formats::gguf::Value;
use bushu::model::GenerationDefaults;
use bushu::server::{ServeOptions, Server};
use clap::Parser;
use common::{shared, u32s, TempDir};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

fn parse(args: &[&str]) -> Cli {
    let argv = std::iter::once("bushu").chain(args.iter().copied()).map(Into::into);
    Cli::try_parse_from(llama_cpp_args(argv)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn flags_then_model_then_command_default() {
    let none = GenerationDefaults::default();
    let model = GenerationDefaults {
        temperature: Some(0.6),
        top_k: Some(20),
        top_p: Some(0.8),
        min_p: None,
    };
    let Sub::Run(run) = parse(&["run", "-m", "M", "-p", "hi"]).command else {
        panic!()
    };
    let Sub::Chat(chat) = parse(&["chat"]).command else {
        panic!()
    };
    assert_eq!(run.sampling.resolved(&none, Cmd::Run), (0.8, 40, 0.95, 0.0));
    assert_eq!(chat.sampling.resolved(&none, Cmd::Chat), (0.0, 40, 0.95, 0.0));
    assert_eq!(run.sampling.resolved(&model, Cmd::Run), (0.6, 20, 0.8, 0.0));
    assert_eq!(chat.sampling.resolved(&model, Cmd::Chat), (0.6, 20, 0.8, 0.0));
    let Sub::Chat(flags) = parse(&["chat", "--temp", "0.2", "--top-k", "5"]).command else {
        panic!()
    };
    assert_eq!(flags.sampling.resolved(&model, Cmd::Chat), (0.2, 5, 0.8, 0.0));
    assert_eq!(GenerationDefaults::TEMPERATURE, 0.8);
}

#[test]
fn generation_config_values_are_read_and_checked() {
    let g = GenerationDefaults::from_generation_config(
        &json!({"do_sample": true, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05}),
    )
    .unwrap();
    assert_eq!(
        g,
        GenerationDefaults {
            temperature: Some(0.7),
            top_k: Some(20),
            top_p: Some(0.8),
            min_p: None
        }
    );
    assert_eq!(
        GenerationDefaults::from_generation_config(&json!({"eos_token_id": 2})).unwrap(),
        GenerationDefaults::default()
    );
    let e = GenerationDefaults::from_generation_config(&json!({"temperature": "hot"})).unwrap_err();
    assert!(
        e.to_string().contains("temperature must be a non-negative number"),
        "{e}"
    );
}

fn run_tokens(model: &Path, extra: &[&str]) -> Vec<u32> {
    let o = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["run", "-m"])
        .arg(model)
        .args(["-p", "Once upon a time", "-n", "12", "--json", "-t", "1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    u32s(&v["tokens"])
}

/// The tiny random model of `common`, with `general.sampling.temp` when `temp` is given.
fn tiny(dir: &Path, temp: Option<f32>) -> PathBuf {
    let mut w = common::tiny_llama_gguf();
    let name = match temp {
        Some(t) => {
            w.set("general.sampling.temp", Value::F32(t));
            "with-temp.gguf"
        }
        None => "plain.gguf",
    };
    let p = dir.join(name);
    w.write(&p).unwrap();
    p
}

#[test]
fn run_takes_the_models_temperature_else_0_8() {
    let dir = TempDir::new("default-sampling-run");
    let (plain, greedy_file) = (tiny(&dir.0, None), tiny(&dir.0, Some(0.0)));
    let greedy = run_tokens(&plain, &["--temperature", "0"]);
    // The file says 0: its default run is greedy.
    assert_eq!(run_tokens(&greedy_file, &[]), greedy);
    // Without a value in the file: 0.8, the same draw as asking for 0.8, not greedy.
    let default = run_tokens(&plain, &[]);
    assert_eq!(default, run_tokens(&plain, &["--temp", "0.8"]));
    assert_ne!(default, greedy);
    // A flag beats the file.
    assert_eq!(run_tokens(&greedy_file, &["--temp", "0.8"]), default);
}

#[test]
fn a_hugging_face_generation_config_sets_the_default() {
    let dir = TempDir::new("default-sampling-hf");
    let src = shared("models/shakespeare/shakespeare-expert-hf");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(src.join(f), dir.0.join(f)).unwrap();
    }
    std::fs::write(
        dir.0.join("generation_config.json"),
        r#"{"eos_token_id": 2, "temperature": 0}"#,
    )
    .unwrap();
    let greedy = run_tokens(&src, &["--temperature", "0"]);
    assert_ne!(run_tokens(&src, &[]), greedy, "the shipped directory samples at 0.8");
    assert_eq!(run_tokens(&dir.0, &[]), greedy);
}

fn completion(server: &Server, body: serde_json::Value) -> Vec<String> {
    let mut s = TcpStream::connect(server.addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let json = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {raw}"));
    v["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect()
}

fn serve(model: PathBuf) -> Server {
    let mut o = ServeOptions::new(model);
    o.port = 0;
    o.ctx = Some(64);
    Server::start(o).unwrap()
}

#[test]
fn serve_requests_without_temperature_take_the_same_default() {
    let dir = TempDir::new("default-sampling-serve");
    let body = |t: Option<f32>| {
        let mut b = json!({"prompt": "Once upon a time", "max_tokens": 12, "seed": 5, "n": 2, "ignore_eos": true});
        if let Some(t) = t {
            b["temperature"] = json!(t);
        }
        b
    };
    let s = serve(tiny(&dir.0, None));
    let default = completion(&s, body(None));
    assert_eq!(
        default,
        completion(&s, body(Some(0.8))),
        "0.8 when the request gives none"
    );
    assert_ne!(default, completion(&s, body(Some(1.0))), "not OpenAI's 1");
    let greedy = completion(&s, body(Some(0.0)));
    s.shutdown().unwrap();
    let s = serve(tiny(&dir.0, Some(0.0)));
    assert_eq!(completion(&s, body(None)), greedy, "the file's temperature 0");
    s.shutdown().unwrap();
}
