//! The `bushu serve` command: flags, a request, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn model() -> String {
    format!(
        "{}/../../../shared/models/tiny-llama-q8_0.gguf",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn serve_answers_then_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "serve",
            "--model",
            &model(),
            "--port",
            "0",
            "--ctx",
            "128",
            "--kv-memory",
            "8M",
            "--api-key",
            "k",
        ])
        .args(["--max-batch", "4", "--max-queue", "8", "--shutdown-grace", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect(&line)
        .to_string();
    assert!(line.contains("max batch 4"), "{line}");

    let body = r#"{"prompt":"Hello","max_tokens":3,"temperature":0}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"completion_tokens\":3"), "{resp}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "bushu serve did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    // One log line for the request: its id, tokens in and out, TTFT, decode rate, finish.
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let log: Vec<&str> = rest.lines().filter(|l| l.starts_with("bushu serve: cmpl-")).collect();
    assert_eq!(log.len(), 1, "{rest}");
    let words: Vec<&str> = log[0].split_whitespace().collect();
    let after = |w: &str| words[words.iter().position(|x| *x == w).unwrap() + 1];
    assert_eq!(after("completion"), "3", "{}", log[0]);
    assert_eq!(after("finish"), "length", "{}", log[0]);
    assert!(after("prompt").parse::<usize>().unwrap() >= 2, "{}", log[0]);
    assert!(after("ttft").parse::<f64>().unwrap() > 0.0, "{}", log[0]);
    assert!(after("decode").parse::<f64>().unwrap() > 0.0, "{}", log[0]);
}

#[test]
fn serve_rejects_bad_flags() {
    for args in [
        vec!["serve", "--model", "no-such-model"],
        vec!["serve", "--model", &model(), "--max-batch", "0"],
        vec!["serve", "--model", &model(), "--kv-memory", "lots"],
        vec!["serve", "--model", "/nonexistent.gguf"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!out.stderr.is_empty());
    }
}
