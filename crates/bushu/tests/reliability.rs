//! The findings of the reliability review (issue 23), each reproduced with a file or a request this
//! test makes itself, and each now a clear error or the right response: KV sizing that cannot abort,
//! `--ctx` checks, OpenAI JSON for every HTTP error, `max_tokens` against the context, slow and
//! too many connections, NaN/Inf in weights, control characters from files, a tokenizer smaller than
//! the model, and strict request validation (plus the request fields of issue 22: `model`,
//! `logit_bias`, `echo`, unknown fields).

mod common;

use bushu::formats::gguf::Value as G;
use bushu::server::{ServeOptions, Server};
use common::http::{post, raw};
use common::{shared, tiny_llama_gguf, TempDir};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tiny() -> PathBuf {
    shared("models/tiny-llama-q8_0.gguf")
}

/// Runs `bushu` with `BUSHU_MEMORY_AVAILABLE=mem` (when given): exit code and stderr.
fn bushu(args: &[&str], mem: Option<&str>) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    c.args(args);
    if let Some(m) = mem {
        c.env("BUSHU_MEMORY_AVAILABLE", m);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that must fail with one short `error:` line containing every one of `expect`.
fn fails(args: &[&str], mem: Option<&str>, expect: &[&str]) -> String {
    let (code, err) = bushu(args, mem);
    assert_eq!(code, 1, "{args:?}: exit {code}, {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{args:?}: {err}"));
    for e in expect {
        assert!(line.contains(e), "{args:?}: expected {e:?} in {line:?}");
    }
    assert!(err.lines().count() <= 3 && !err.contains("panicked"), "{err}");
    line.to_string()
}

/// Starts `bushu serve` with `args`, returns the child and its stderr lines up to "listening".
fn serve_cli(args: &[&str], mem: &str) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env("BUSHU_MEMORY_AVAILABLE", mem)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.contains("listening on");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

fn write(dir: &Path, name: &str, w: &bushu::formats::gguf_writer::GgufWriter) -> String {
    let p = dir.join(name);
    w.write(&p).unwrap();
    p.to_str().unwrap().to_owned()
}

// ---- 1, 2: KV cache sizing and --ctx --------------------------------------------------------------

/// A file claiming a context of u32::MAX, `--ctx 10^12`, `--max-batch 10^8` start with a cache that
/// fits (half of the memory said to be available, 256 MiB here); sizes beyond memory or the address
/// space are refused with the number and the flag. Before: "memory allocation of N bytes failed",
/// exit 134.
#[test]
fn serve_sizes_the_kv_cache_from_memory_or_refuses() {
    let dir = TempDir::new("rel-serve-kv");
    let mut w = tiny_llama_gguf();
    w.set("llama.context_length", G::U32(u32::MAX));
    let huge = write(&dir.0, "huge-ctx.gguf", &w);
    for args in [
        vec!["--model", huge.as_str()],
        vec!["--model", tiny().to_str().unwrap(), "--ctx", "1000000000000"],
        vec!["--model", tiny().to_str().unwrap(), "--max-batch", "100000000"],
    ] {
        let (mut child, lines) = serve_cli(&args, "256M");
        let _ = child.kill();
        let _ = child.wait();
        let all = lines.concat();
        let last = lines.last().cloned().unwrap_or_default();
        assert!(last.contains("listening on"), "{args:?}: {all}");
        // The cache: at most half of 256 MiB beside the model's file.
        let mib: f64 = last
            .split("KV cache f32 ")
            .nth(1)
            .and_then(|s| s.split(" MiB").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{last}"));
        assert!(mib > 0.0 && mib <= 128.0, "{args:?}: {last}");
        assert!(last.contains("sized from half of the 256.0 MiB"), "{last}");
    }
    // Beyond the trained context: said, with the file's RoPE scaling.
    let (mut child, lines) = serve_cli(&["--model", tiny().to_str().unwrap(), "--ctx", "100000"], "1G");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines
            .concat()
            .contains("beyond the 2048 positions the model was trained for (the file gives no RoPE scaling)"),
        "{lines:?}"
    );
    let m = tiny();
    let m = m.to_str().unwrap();
    fails(
        &["serve", "--model", m, "--kv-memory", "1e30"],
        None,
        &["--kv-memory", "1e30", "larger than this machine can address"],
    );
    fails(
        &["serve", "--model", m, "--kv-memory", "1000000G"],
        Some("1G"),
        &["976.6 TiB", "1.0 GiB of memory is available", "--kv-memory"],
    );
    fails(
        &["serve", "--model", m, "--kv-memory", "100"],
        Some("1G"),
        &["fewer than 16 positions", "--kv-memory"],
    );
    fails(
        &["serve", "--model", m, "--ctx", "0"],
        None,
        &["--ctx must be at least 1"],
    );
}

/// The same through the library, against the model's numbers: 6 layers x 288 wide x 2 (K, V) x 4
/// bytes = 13,824 bytes per position.
#[test]
fn engine_sizing_arithmetic() {
    use bushu::engine::{EngineConfig, KvSizing};
    let f = bushu::model::load(&tiny()).unwrap();
    let model = bushu::model::ModelOptions::default().build(&f).unwrap();
    let per_pos = 6 * 288 * 2 * 4;
    let s = |ctx, kv, avail: u64| KvSizing {
        max_batch: 16,
        ctx,
        kv_memory: kv,
        available: Some(avail),
        model_bytes: 1 << 20,
    };
    // Fits: 16 x 2048 positions.
    let p = EngineConfig::sized(&model, &s(None, None, 8 << 30)).unwrap();
    assert_eq!((p.cfg.num_blocks, p.cfg.max_model_len), (16 * 2048 / 16, 2048));
    assert!(p.notes.is_empty());
    // Capped: half of (65 MiB - 1 MiB) = 32 MiB.
    let p = EngineConfig::sized(&model, &s(None, None, 65 << 20)).unwrap();
    assert_eq!(p.cfg.num_blocks, (32 << 20) / (per_pos * 16));
    assert_eq!(p.cfg.max_model_len, 2048);
    // A context longer than what the cache holds: the longest sequence is what it holds, said.
    let p = EngineConfig::sized(&model, &s(Some(1 << 40), None, 65 << 20)).unwrap();
    assert_eq!(p.cfg.max_model_len, p.cfg.num_blocks * 16);
    assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
    // A context beyond the default budget: 16 sequences x 4096 positions, the longest sequence the
    // whole context.
    let p = EngineConfig::sized(&model, &s(Some(16384), None, 8 << 30)).unwrap();
    assert_eq!((p.cfg.num_blocks, p.cfg.max_model_len), (16 * 4096 / 16, 16384));
    // One sequence: the pool still holds one whole context.
    let one = KvSizing {
        max_batch: 1,
        ..s(Some(16384), None, 8 << 30)
    };
    let p = EngineConfig::sized(&model, &one).unwrap();
    assert_eq!((p.cfg.num_blocks, p.cfg.max_model_len), (16384 / 16, 16384));
    assert!(EngineConfig::sized(&model, &s(None, Some(2 << 30), 1 << 30)).is_err());
    assert!(EngineConfig::sized(&model, &s(Some(0), None, 1 << 30)).is_err());
}

/// `run --ctx` is checked against memory (refused with the numbers) and the trained context (a
/// warning). Before: an abort, and silence.
#[test]
fn run_ctx_is_checked() {
    let m = tiny();
    let m = m.to_str().unwrap();
    let line = fails(
        &["run", "--model", m, "--prompt", "hi", "--ctx", "100000000"],
        Some("2G"),
        &["--ctx 100000000", "1.3 TiB", "2.0 GiB of memory is available"],
    );
    // 100,000,000 x 13,824 bytes = 1.26 TiB.
    assert!(line.contains("give a smaller --ctx"), "{line}");
    // Other user-sized caches: beams, batched benchmarks (before: an abort, or minutes of work first).
    fails(
        &["run", "--model", m, "--prompt", "hi", "--beams", "100000000"],
        Some("2G"),
        &["beam search with --beams 100000000", "give fewer --beams"],
    );
    fails(
        &[
            "bench",
            "--model",
            m,
            "-b",
            "100000000",
            "-p",
            "8",
            "-n",
            "8",
            "-r",
            "1",
        ],
        Some("2G"),
        &["-b 100000000 sequences", "give a smaller -b"],
    );
    let (code, err) = bushu(
        &["run", "--model", m, "--prompt", "hi", "-n", "2", "--ctx", "4000"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: --ctx 4000 is beyond the 2048 positions the model was trained for"),
        "{err}"
    );
}

// ---- 6: NaN / infinity in the weights --------------------------------------------------------------

/// One NaN in a norm weight, an infinity in the embeddings: `--check-tensors` (on by default for small
/// files) names the tensor; without it, generation stops at the first non-finite logit. Before:
/// an integer overflow in activation quantization (a panic in debug builds, garbage in release).
#[test]
fn non_finite_weights_are_errors() {
    let dir = TempDir::new("rel-nan");
    let mut w = tiny_llama_gguf();
    w.add_f32(
        "blk.0.attn_norm.weight",
        vec![8],
        &[1.0, 1.0, 1.0, f32::NAN, 1.0, 1.0, 1.0, 1.0],
    );
    let nan = write(&dir.0, "nan.gguf", &w);
    fails(
        &["run", "--model", &nan, "--prompt", "hi", "-n", "4"],
        None,
        &[
            "tensor blk.0.attn_norm.weight holds NaN at element 3",
            "--no-check-tensors",
        ],
    );
    fails(
        &[
            "run",
            "--model",
            &nan,
            "--prompt",
            "hi",
            "-n",
            "4",
            "--no-check-tensors",
        ],
        None,
        &["non-finite logit"],
    );
    let mut w = tiny_llama_gguf();
    let mut emb = vec![0.01f32; 8 * 32000];
    emb[8 + 2] = f32::INFINITY; // token 1 (BOS), element 2
    w.add_f32("token_embd.weight", vec![8, 32000], &emb);
    let inf = write(&dir.0, "inf.gguf", &w);
    fails(
        &["run", "--model", &inf, "--prompt", "hi", "--check-tensors"],
        None,
        &["token_embd.weight holds inf at element 10"],
    );
    for exact in [false, true] {
        let mut args = vec![
            "run",
            "--model",
            &inf,
            "--prompt",
            "hi",
            "-n",
            "4",
            "--no-check-tensors",
        ];
        if exact {
            args.push("--exact-activations");
        }
        fails(&args, None, &["non-finite logit"]);
    }
}

/// The server answers a broken model's request with a 500 in OpenAI's JSON, not with text.
#[test]
fn server_reports_non_finite_logits() {
    let dir = TempDir::new("rel-nan-serve");
    let mut w = tiny_llama_gguf();
    w.add_f32("output_norm.weight", vec![8], &[f32::NAN; 8]);
    let p = write(&dir.0, "nan.gguf", &w);
    let mut o = ServeOptions::new(PathBuf::from(&p));
    o.port = 0;
    o.check_tensors = Some(false);
    o.kv_memory = Some(1 << 20);
    let server = Server::start(o).unwrap();
    let (st, v) = post(server.addr, "/v1/completions", json!({"prompt": "hi", "max_tokens": 3}));
    assert_eq!(st, 500, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("non-finite logit"),
        "{v}"
    );
    let (st, body) = raw(
        server.addr,
        "POST",
        "/v1/completions",
        "application/json",
        &json!({"prompt": "hi", "max_tokens": 3, "stream": true}).to_string(),
        None,
    );
    assert_eq!(st, 200);
    assert!(
        body.contains("\"error\"") && body.contains("non-finite logit") && body.contains("[DONE]"),
        "{body}"
    );
    server.shutdown().unwrap();
    // And the default check refuses to start.
    let mut o = ServeOptions::new(PathBuf::from(&p));
    o.port = 0;
    let e = Server::start(o).err().unwrap();
    assert!(format!("{e:#}").contains("output_norm.weight holds NaN"), "{e:#}");
}

// ---- 7: control characters from files ---------------------------------------------------------------

/// An architecture name with an ANSI escape and a carriage return reaches the error message escaped.
#[test]
fn control_characters_from_files_are_escaped() {
    let dir = TempDir::new("rel-ansi");
    let mut w = tiny_llama_gguf();
    w.set("general.architecture", G::String("\x1b[2J\x1b[31mevil\rfake".into()));
    let p = write(&dir.0, "ansi.gguf", &w);
    let (code, err) = bushu(&["run", "--model", &p, "--prompt", "hi"], None);
    assert_eq!(code, 1);
    assert!(
        !err.contains('\x1b') && !err.contains('\r'),
        "raw control characters: {err:?}"
    );
    assert!(err.contains("\\x1b[2J\\x1b[31mevil\\rfake"), "{err}");
}

// ---- 8: tokenizer smaller than the model ------------------------------------------------------------

/// A vocabulary cut to 100 tokens in a 32,000-row model is refused at load; so is one larger than the
/// model. Before: it loaded and generated.
#[test]
fn tokenizer_and_model_vocabularies_must_agree() {
    let dir = TempDir::new("rel-vocab");
    let vocab = bushu::formats::gguf::Gguf::open(&shared("testdata/vocab/ggml-vocab-llama-spm.gguf")).unwrap();
    let cut = |n: usize| {
        let mut w = tiny_llama_gguf();
        for key in [
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
        ] {
            let cut = match &vocab.metadata[key] {
                G::Strings(l) => G::Array(l.iter().take(n).map(|t| G::String(t.to_string())).collect()),
                G::Numbers(l) => G::Array(l.iter().take(n).collect()),
                other => panic!("{key}: {other:?}"),
            };
            w.set(key, cut);
        }
        w
    };
    let p = write(&dir.0, "cut.gguf", &cut(100));
    fails(
        &["run", "--model", &p, "--prompt", "hi"],
        None,
        &["tokenizer has 100 tokens for a model of 32000"],
    );
    let mut w = tiny_llama_gguf();
    w.set("llama.vocab_size", G::U32(30000));
    let mut e = vec![0.01f32; 8 * 30000];
    e[0] = 0.02;
    w.add_f32("token_embd.weight", vec![8, 30000], &e);
    let p = write(&dir.0, "small-model.gguf", &w);
    fails(
        &["run", "--model", &p, "--prompt", "hi"],
        None,
        &["tokenizer has 32000 tokens but the model only 30000 rows"],
    );
}

// ---- the server: 3, 4, 5, 9 and issue 22's fields ----------------------------------------------------

fn start(f: impl FnOnce(&mut ServeOptions)) -> Server {
    let mut o = ServeOptions::new(tiny());
    o.port = 0;
    o.ctx = Some(256);
    o.kv_memory = Some(8 << 20);
    o.grace = Duration::from_secs(2);
    f(&mut o);
    Server::start(o).unwrap()
}

/// An OpenAI error body with this status.
fn is_error(st: u16, body: &str, want: u16) -> Value {
    assert_eq!(st, want, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert_eq!(v["error"]["code"], want, "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(
        v["error"]["type"].is_string() && v["error"].get("param").is_some(),
        "{v}"
    );
    v
}

/// 404, 405, 413 and 415 are OpenAI JSON (before: 413 text/plain, 405 empty).
#[test]
fn every_http_error_is_openai_json() {
    let server = start(|_| {});
    let a = server.addr;
    let (st, b) = raw(a, "GET", "/v1/chat/completions", "application/json", "", None);
    is_error(st, &b, 405);
    let (st, b) = raw(a, "PUT", "/v1/models", "application/json", "{}", None);
    is_error(st, &b, 405);
    let (st, b) = raw(a, "GET", "/nothing/here", "application/json", "", None);
    is_error(st, &b, 404);
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(3 << 20));
    let (st, b) = raw(a, "POST", "/v1/completions", "application/json", &big, None);
    is_error(st, &b, 413);
    let (st, b) = raw(a, "POST", "/v1/completions", "text/plain", r#"{"prompt":"hi"}"#, None);
    is_error(st, &b, 415);
    let (st, b) = raw(
        a,
        "POST",
        "/v1/chat/completions",
        "application/x-www-form-urlencoded",
        "a=b",
        None,
    );
    is_error(st, &b, 415);
    // A charset parameter is fine.
    let (st, b) = raw(
        a,
        "POST",
        "/v1/completions",
        "application/json; charset=utf-8",
        r#"{"prompt":"hi","max_tokens":1}"#,
        None,
    );
    assert_eq!(st, 200, "{b}");
    server.shutdown().unwrap();
}

/// `max_tokens` beyond the room left in the context is a 400 with the numbers (vLLM's words), not a
/// silently shorter answer; 10^9 too.
#[test]
fn max_tokens_beyond_the_context_is_refused_with_numbers() {
    let server = start(|o| o.ctx = Some(64));
    let a = server.addr;
    let (st, v) = post(
        a,
        "/v1/completions",
        json!({"prompt": vec![450u32; 50], "max_tokens": 20}),
    );
    let v = is_error(st, &v.to_string(), 400);
    assert_eq!(
        v["error"]["message"],
        "This model's maximum context length is 64 tokens. However, you requested 70 tokens (50 in the prompt, 20 in the completion). Please reduce the length of the prompt or completion."
    );
    assert_eq!(v["error"]["param"], "max_tokens");
    let (st, v) = post(
        a,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 1_000_000_000}),
    );
    let v = is_error(st, &v.to_string(), 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000000000 in the completion"),
        "{v}"
    );
    let (st, v) = post(
        a,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}),
    );
    let v = is_error(st, &v.to_string(), 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in the messages, 100 in the completion"),
        "{v}"
    );
    // Exactly the room left: accepted, and all of it generated.
    let (st, v) = post(
        a,
        "/v1/completions",
        json!({"prompt": vec![450u32; 50], "max_tokens": 14, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 14);
    server.shutdown().unwrap();
}

/// A client that sends its headers a byte at a time is cut off after the header timeout, and
/// connections beyond the cap get a 503 in JSON. Before: 40 such connections held for 40 s.
#[test]
fn slow_clients_time_out_and_connections_are_capped() {
    let server = start(|o| {
        o.header_timeout = Duration::from_millis(800);
        o.max_connections = 3;
    });
    let a = server.addr;
    let t = Instant::now();
    let mut slow = TcpStream::connect(a).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut closed = false;
    for b in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        let mut buf = [0u8; 256];
        // The server closes the connection (possibly with a 408 first).
        let n = slow.read(&mut buf).unwrap_or(0);
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(n == 0 || got.starts_with("HTTP/1.1 408"), "{got:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "held for {:?}", t.elapsed());
    // Three idle connections take the slots; a fourth is refused.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(a).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (st, b) = raw(a, "GET", "/health", "application/json", "", None);
    let v = is_error(st, &b, 503);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--max-connections"),
        "{v}"
    );
    drop(held);
    // The idle ones time out too, and the slots come back.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(raw(a, "GET", "/health", "application/json", "", None).0, 200);
    server.shutdown().unwrap();
}

/// Finding 9 and the strictness around it: ranges and enums refused, the Bearer scheme in any case,
/// /metrics behind the key unless `--metrics-public`.
#[test]
fn strict_validation_auth_and_metrics() {
    let server = start(|o| o.api_key = Some("sekret".into()));
    let a = server.addr;
    let call = |body: Value, auth: &str| {
        let (st, b) = raw(
            a,
            "POST",
            "/v1/completions",
            "application/json",
            &body.to_string(),
            Some(auth),
        );
        (st, b)
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (st, b) = call(json!({"prompt": "hi", "max_tokens": 1}), &format!("{scheme} sekret"));
        assert_eq!(st, 200, "{scheme}: {b}");
    }
    let (st, b) = call(json!({"prompt": "hi"}), "Bearer sekreT");
    assert!(is_error(st, &b, 401)["error"]["message"] == "invalid API key");
    let (st, b) = call(json!({"prompt": "hi"}), "Basic sekret");
    assert!(is_error(st, &b, 401)["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("missing API key"));
    let key = "Bearer sekret";
    for (bad, param) in [
        (json!({"prompt": "hi", "top_k": -5}), "top_k"),
        (json!({"prompt": "hi", "logprobs": -1}), "logprobs"),
        (json!({"prompt": "hi", "logprobs": 21}), "logprobs"),
        (json!({"prompt": "hi", "stop": [""]}), "stop"),
        (json!({"prompt": "hi", "logit_bias": {"5": 101}}), "logit_bias"),
        (json!({"prompt": "hi", "logit_bias": {"x": 1}}), "logit_bias"),
        (json!({"prompt": "hi", "logit_bias": {"40000": 1}}), "logit_bias"),
        (json!({"prompt": "hi", "echo": true, "logprobs": 1}), "echo"),
    ] {
        let (st, b) = call(bad.clone(), key);
        let v = is_error(st, &b, 400);
        assert_eq!(v["error"]["param"], param, "{bad}: {v}");
    }
    let chat = |body: Value| {
        let (st, b) = raw(
            a,
            "POST",
            "/v1/chat/completions",
            "application/json",
            &body.to_string(),
            Some(key),
        );
        (st, b)
    };
    let (st, b) = chat(json!({"messages": [{"role": "wizard", "content": "hi"}]}));
    assert!(is_error(st, &b, 400)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown message role 'wizard'"));
    let (st, b) = chat(json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}));
    is_error(st, &b, 400);
    let (st, b) = chat(json!({"messages": [{"role": "user", "content": "hi", "frobnicate": []}]}));
    assert!(is_error(st, &b, 400)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unsupported message field 'frobnicate'"));
    let (st, b) = chat(
        json!({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    assert_eq!(st, 200, "{b}");
    // top_k -1 is "off" (vLLM's convention).
    assert_eq!(call(json!({"prompt": "hi", "top_k": -1, "max_tokens": 1}), key).0, 200);

    let metrics = |auth: Option<&str>| raw(a, "GET", "/metrics", "text/plain", "", auth);
    let (st, b) = metrics(None);
    is_error(st, &b, 401);
    assert_eq!(metrics(Some(key)).0, 200);
    server.shutdown().unwrap();
    let open = start(|o| {
        o.api_key = Some("sekret".into());
        o.metrics_public = true;
    });
    assert_eq!(raw(open.addr, "GET", "/metrics", "text/plain", "", None).0, 200);
    open.shutdown().unwrap();
}

/// Issue 22's fields: `model` is checked (the id or the file's stem), `logit_bias` and `echo` are
/// honoured, an unknown field and the structured-output fields are refused.
#[test]
fn request_fields_are_honoured_or_refused() {
    let server = start(|_| {});
    let a = server.addr;
    let (st, v) = post(a, "/v1/completions", json!({"model": "gpt-4o", "prompt": "hi"}));
    let v = is_error(st, &v.to_string(), 404);
    assert_eq!(v["error"]["param"], "model");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`gpt-4o` does not exist"),
        "{v}"
    );
    for name in ["tiny-llama-q8_0.gguf", "tiny-llama-q8_0"] {
        let (st, v) = post(
            a,
            "/v1/completions",
            json!({"model": name, "prompt": "hi", "max_tokens": 1}),
        );
        assert_eq!(st, 200, "{name}: {v}");
    }
    let (st, v) = post(a, "/v1/completions", json!({"prompt": "hi", "frobnicate": 1}));
    let v = is_error(st, &v.to_string(), 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported field 'frobnicate'"),
        "{v}"
    );
    // Structured output and tools are honoured (tests/server_structured.rs); malformed ones are 400s
    // that name the field.
    for (field, bad) in [
        ("response_format", json!({"type": "nonsense"})),
        ("tools", json!("not a list")),
        ("tool_choice", json!(7)),
        ("guided_json", json!(5)),
        ("guided_regex", json!("(unclosed")),
        ("guided_grammar", json!("start: ???")),
        ("guided_choice", json!([])),
    ] {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        body[field] = bad;
        let (st, v) = post(a, "/v1/chat/completions", body);
        let v = is_error(st, &v.to_string(), 400);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field) || v["error"]["param"] == field,
            "{field}: {v}"
        );
    }
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "parallel_tool_calls": "yes"});
    let (st, v) = post(a, "/v1/chat/completions", body);
    is_error(st, &v.to_string(), 400);
    for field in ["suffix", "best_of", "stream_options_x"] {
        let mut body = json!({"prompt": "hi"});
        body[field] = json!(1);
        let (st, v) = post(a, "/v1/completions", body);
        is_error(st, &v.to_string(), 400);
    }

    // logit_bias: greedy text without bias, then the same prompt with +100 on one token: every token
    // is that token (its logit beats the rest by far more than their spread).
    let greedy =
        json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": 0});
    let (st, plain) = post(a, "/v1/completions", greedy.clone());
    assert_eq!(st, 200, "{plain}");
    let tok = bushu::model::load(&tiny()).unwrap().tokenizer;
    let target = tok.token_to_id("▁castle").expect("a token of the vocabulary");
    let mut biased = greedy.clone();
    biased["logit_bias"] = json!({ target.to_string(): 100 });
    let (st, v) = post(a, "/v1/completions", biased);
    assert_eq!(st, 200, "{v}");
    let toks: Vec<&str> = v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(toks, vec![" castle"; 6], "{v}");
    assert_ne!(plain["choices"][0]["text"], v["choices"][0]["text"]);
    // A bias of -100 on the greedy first token bans it.
    let first = plain["choices"][0]["logprobs"]["tokens"][0]
        .as_str()
        .unwrap()
        .to_string();
    let first_id = tok
        .token_to_id(&first.replace(' ', "▁"))
        .expect("the greedy token's id");
    let mut banned = greedy.clone();
    banned["logit_bias"] = json!({ first_id.to_string(): -100 });
    let (_, v) = post(a, "/v1/completions", banned);
    assert_ne!(v["choices"][0]["logprobs"]["tokens"][0], first.as_str(), "{v}");

    // echo: the prompt's text, then the completion's, whole and streamed.
    let mut echo = greedy.clone();
    echo.as_object_mut().unwrap().remove("logprobs");
    echo["echo"] = json!(true);
    let (st, v) = post(a, "/v1/completions", echo.clone());
    assert_eq!(st, 200, "{v}");
    let want = format!("Once upon a time{}", plain["choices"][0]["text"].as_str().unwrap());
    assert_eq!(v["choices"][0]["text"], want.as_str());
    echo["stream"] = json!(true);
    let (_, body) = raw(
        a,
        "POST",
        "/v1/completions",
        "application/json",
        &echo.to_string(),
        None,
    );
    let streamed: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, want);
    // Prompt as token ids: echo decodes them.
    let ids = tok.encode("Once upon a time", true).unwrap();
    let (_, v) = post(
        a,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 2, "temperature": 0, "echo": true}),
    );
    assert!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Once upon a time"),
        "{v}"
    );
    server.shutdown().unwrap();
}

/// Found by `tests/fuzz.rs` (target `hf`): a BPE `continuing_subword_prefix` longer than a merge's
/// second token made the `tokenizers` library panic ("start byte index 8 is out of bounds"), and so
/// did a `TemplateProcessing` that places an undefined special token; now errors naming the cause.
#[test]
fn tokenizer_json_prefix_longer_than_a_merge_is_an_error() {
    let src = shared("models/shakespeare/shakespeare-amateur-hf");
    let dir = TempDir::new("rel-bpe-prefix");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.0.join(e.file_name())).unwrap();
    }
    let p = dir.0.join("tokenizer.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["model"]["continuing_subword_prefix"] = json!("\u{1b}[31m\r\n\u{0}");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = bushu::model::load(&dir.0).err().expect("refused");
    assert!(
        format!("{e:#}").contains("shorter than the continuing_subword_prefix"),
        "{e:#}"
    );
    let line = fails(
        &["info", "--model", dir.0.to_str().unwrap()],
        None,
        &["continuing_subword_prefix", "[31m"],
    );
    assert!(!line.contains('\x1b'), "{line:?}");
}
