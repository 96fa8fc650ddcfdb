//! `bushu ps` (ollama's `ps`, issue 22): what a running server has loaded and its KV cache use, from the
//! server's `GET /api/ps`; without a server, one line.

mod common;

use bushu::server::{ServeOptions, Server};
use common::shared;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

fn ps(port: u16, extra: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["ps", "--port", &port.to_string()])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn complete(s: &Server, body: &str) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn ps_reports_the_model_and_its_kv_cache() {
    let model = shared("models/tiny-llama-q8_0.gguf");
    let mut o = ServeOptions::new(model.clone());
    o.port = 0;
    o.ctx = Some(128);
    o.max_batch = 2;
    let s = Server::start(o).unwrap();
    let port = s.addr.port();
    let (ok, out, err) = ps(port, &["--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["name"], "tiny-llama-q8_0.gguf");
    assert_eq!(m["size"].as_u64(), Some(std::fs::metadata(&model).unwrap().len()));
    assert_eq!(m["context_length"].as_u64(), Some(s.engine.max_model_len as u64));
    let kv = &m["kv_cache"];
    assert_eq!(kv["type"], "f32");
    assert_eq!(kv["blocks_total"].as_u64(), Some(s.engine.num_blocks as u64));
    assert_eq!(kv["bytes_total"].as_u64(), Some(s.engine.kv_bytes() as u64));
    assert_eq!(
        (kv["blocks_used"].as_u64(), kv["bytes_used"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!((m["running"].as_u64(), m["waiting"].as_u64()), (Some(0), Some(0)));

    // A finished request's blocks stay in the prefix cache: cached, not used. 40 prompt tokens and 8
    // generated fill 3 blocks of 16, the last partly.
    complete(
        &s,
        r#"{"prompt": [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889, 450, 4996, 17354, 1701, 432, 17204], "max_tokens": 8, "temperature": 0, "ignore_eos": true}"#,
    );
    let (_, out, _) = ps(port, &["--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let kv = &v["models"][0]["kv_cache"];
    assert_eq!(kv["blocks_used"].as_u64(), Some(0), "{v}");
    assert!(kv["blocks_cached"].as_u64().unwrap() >= 2, "{v}");

    // The table.
    let (ok, out, err) = ps(port, &[]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("KV USED"), "{out}");
    assert!(
        lines[1].starts_with("tiny-llama-q8_0.gguf") && lines[1].contains(" f32 "),
        "{out}"
    );
    s.shutdown().unwrap();

    // No server: one line, exit 1.
    let (ok, out, err) = ps(port, &[]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("no bushu server at 127.0.0.1:") && err.trim().lines().count() == 1,
        "{err}"
    );
}
