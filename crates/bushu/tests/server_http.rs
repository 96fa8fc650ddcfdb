//! `bushu serve` through HTTP on 127.0.0.1 (a free port): completions, chat, SSE streaming, models,
//! health, metrics, the 4xx cases, API keys, queue limits, cancellation on disconnect, preemption and
//! graceful shutdown.

mod common;
use common::http::{post, request, sse_data};

use bushu::chat::session::CHATML;
use bushu::chat::{ChatTemplate, Message};
use bushu::formats::gguf::Value as GgufValue;
use bushu::server::{ServeOptions, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/tiny-llama-q8_0.gguf")
}

fn start(f: impl FnOnce(&mut ServeOptions)) -> Server {
    let mut o = ServeOptions::new(model());
    o.port = 0;
    o.ctx = Some(256);
    o.max_batch = 16;
    o.grace = Duration::from_secs(5);
    f(&mut o);
    Server::start(o).unwrap()
}

fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>, key: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = request(addr, "GET", "/metrics", None, None);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn completions_chat_streaming_models_health_metrics() {
    let server = start(|_| {});
    let a = server.addr;
    assert_eq!(request(a, "GET", "/health", None, None).0, 200);
    let (st, models) = request(a, "GET", "/v1/models", None, None);
    assert_eq!(st, 200);
    assert!(models.contains("tiny-llama-q8_0.gguf"), "{models}");

    let req = json!({"model": "tiny-llama-q8_0.gguf", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": true, "logprobs": 2});
    let (st, v) = post(a, "/v1/completions", req.clone());
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 12);
    assert_eq!(
        v["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    // The same again hits the prefix cache and gives the same text.
    let (_, v2) = post(a, "/v1/completions", req.clone());
    assert_eq!(v2["choices"][0]["text"], text.as_str());

    // Streaming: the chunks add up to the same text, then usage, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (st, body) = request(a, "POST", "/v1/completions", Some(&sreq), None);
    assert_eq!(st, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);

    // Stop strings end the text before them.
    if let Some(stop) = text.get(4..6).filter(|s| !s.trim().is_empty()) {
        let (_, v) = post(
            a,
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stop": stop}),
        );
        let t = v["choices"][0]["text"].as_str().unwrap();
        assert!(
            text.starts_with(t) && !t.contains(stop),
            "{t:?} vs {text:?} stop {stop:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // n choices with sampling.
    let (st, v) = post(
        a,
        "/v1/completions",
        json!({"prompt": [1, 450, 4996], "max_tokens": 4, "n": 3, "seed": 5, "temperature": 1.0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);

    // Chat, whole and streamed.
    let chat = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 1});
    let (st, v) = post(a, "/v1/chat/completions", chat.clone());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["logprobs"]["content"].as_array().unwrap().len(), 6);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let mut schat = chat.clone();
    schat["stream"] = json!(true);
    let (_, body) = request(a, "POST", "/v1/chat/completions", Some(&schat), None);
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(streamed, content);

    let (_, m) = request(a, "GET", "/metrics", None, None);
    for name in [
        "bushu_requests_total{status=\"200\"}",
        "bushu_time_to_first_token_seconds_bucket",
        "bushu_inter_token_latency_seconds_count",
        "bushu_kv_blocks_used",
        "bushu_prefix_cache_hit_rate",
        "bushu_num_requests_waiting",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    assert!(metric(a, "bushu_prefix_cache_hits_total") > 0.0);
    server.shutdown().unwrap();
}

#[test]
fn client_errors_and_api_key() {
    let server = start(|o| {
        o.api_key = Some("sekret".into());
        o.ctx = Some(64);
    });
    let a = server.addr;
    let body = json!({"prompt": "hi", "max_tokens": 2});
    let call = |b: &Value, key| {
        let (st, text) = request(a, "POST", "/v1/completions", Some(b), key);
        (st, serde_json::from_str::<Value>(&text).unwrap())
    };
    let (st, v) = call(&body, None);
    assert_eq!((st, v["error"]["type"].as_str()), (401, Some("authentication_error")));
    assert_eq!(call(&body, Some("wrong")).0, 401);
    assert_eq!(call(&body, Some("sekret")).0, 200);
    assert_eq!(request(a, "GET", "/health", None, None).0, 200, "health needs no key");

    let (st, raw) = request(a, "POST", "/v1/completions", None, Some("sekret"));
    assert_eq!(st, 400, "empty body: {raw}");
    for bad in [
        json!({"prompt": "hi", "temperature": "hot"}),
        json!({"prompt": "hi", "max_tokens": 0}),
        json!({"prompt": "hi", "n": 100}),
        json!({"max_tokens": 3}),
        json!({"prompt": "hi", "top_p": 3}),
    ] {
        let (st, v) = call(&bad, Some("sekret"));
        assert_eq!(st, 400, "{bad} -> {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Over the context (64): the numbers are in the message.
    let long = json!({"prompt": vec![450u32; 100], "max_tokens": 2});
    let (st, v) = call(&long, Some("sekret"));
    assert_eq!(st, 400);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("64") && msg.contains("100"), "{msg}");
    let (st, _) = request(a, "GET", "/v1/nothing", None, Some("sekret"));
    assert_eq!(st, 404);
    server.shutdown().unwrap();
}

/// One request runs (max batch 1), one waits (queue of 1): the next is refused with 429. The running
/// stream's client then disconnects: its sequence is cancelled and every block freed.
#[test]
fn queue_full_and_disconnect_frees_blocks() {
    let server = start(|o| {
        o.max_batch = 1;
        o.max_queue = 1;
    });
    let a = server.addr;
    let long = json!({"prompt": "Once", "max_tokens": 200, "temperature": 0, "ignore_eos": true, "stream": true});
    let s1 = send(a, "POST", "/v1/completions", Some(&long), None);
    let mut r1 = BufReader::new(s1);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        r1.read_line(&mut line).unwrap();
    }
    let waiting = std::thread::spawn(move || post(a, "/v1/completions", json!({"prompt": "Hi", "max_tokens": 2})).0);
    wait_for("a waiting sequence", || metric(a, "bushu_num_requests_waiting") == 1.0);
    let (st, v) = post(a, "/v1/completions", json!({"prompt": "Hey", "max_tokens": 2}));
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(metric(a, "bushu_kv_blocks_used") > 0.0);
    drop(r1);
    assert_eq!(
        waiting.join().unwrap(),
        200,
        "the queued request runs once the first is cancelled"
    );
    wait_for("blocks freed", || {
        metric(a, "bushu_kv_blocks_used") == 0.0 && metric(a, "bushu_num_requests_running") == 0.0
    });
    assert!(metric(a, "bushu_requests_total{status=\"cancelled\"}") >= 1.0);
    assert!(
        metric(a, "bushu_generation_tokens_total") < 150.0,
        "the cancelled sequence kept going"
    );
    server.shutdown().unwrap();
}

/// 16 concurrent greedy requests under a KV cache too small for all of them: preemptions happen and
/// every answer equals the one it got alone.
#[test]
fn concurrent_requests_with_preemption_match_alone() {
    let server = start(|o| o.kv_memory = Some(64 * 16 * 2 * 6 * 288 * 4)); // 64 blocks of 16
    let a = server.addr;
    let body = |i: usize| {
        let prompt: Vec<u32> = (0..20 + 5 * i as u32)
            .map(|t| 100 + (t * 37 + i as u32 * 11) % 5000)
            .collect();
        json!({"prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": true})
    };
    let alone: Vec<String> = (0..16)
        .map(|i| {
            post(a, "/v1/completions", body(i)).1["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let threads: Vec<_> = (0..16)
        .map(|i| std::thread::spawn(move || post(a, "/v1/completions", body(i))))
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (st, v) = t.join().unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), alone[i], "request {i}");
    }
    assert!(
        metric(a, "bushu_preemptions_total") > 0.0,
        "the cache was large enough: no preemption"
    );
    server.shutdown().unwrap();
}

/// Shutdown lets an in-flight stream finish, then the port closes.
#[test]
fn graceful_shutdown_finishes_in_flight() {
    let server = start(|_| {});
    let a = server.addr;
    let body = json!({"prompt": "Once", "max_tokens": 40, "temperature": 0, "ignore_eos": true, "stream": true});
    let mut r = BufReader::new(send(a, "POST", "/v1/completions", Some(&body), None));
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let stopper = std::thread::spawn(move || server.shutdown());
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    let data = sse_data(&rest);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(rest.contains("\"finish_reason\":\"length\""));
    stopper.join().unwrap().unwrap();
    assert!(TcpStream::connect(a).is_err(), "still listening after shutdown");
}

#[test]
fn chat_renders_the_models_own_template() {
    // A template unlike ChatML, in the file's metadata: the prompt the server counts must be this
    // template's rendering, tokenized.
    let src = "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}\
               {% if add_generation_prompt %}### assistant:{% endif %}";
    let dir = common::TempDir::new("server-http-own-template");
    let path = dir.0.join("templated.gguf");
    let mut w = common::tiny_llama_gguf();
    w.set("tokenizer.chat_template", GgufValue::String(src.into()));
    w.write(&path).unwrap();
    let tok = bushu::model::load(&path).unwrap().tokenizer;
    let messages = [Message::new("system", "Be brief."), Message::new("user", "Hello there")];
    let count = |src: &str| {
        let t = ChatTemplate::new(src, tok.bos_token().unwrap_or(""), tok.eos_token().unwrap_or("")).unwrap();
        tok.encode_with(&t.render(&messages, true).unwrap(), false, true)
            .unwrap()
            .len()
    };
    let (own, chatml) = (count(src), count(CHATML));
    assert_ne!(own, chatml, "the test needs templates of different lengths");

    let server = start(|o| {
        o.model = path.clone();
        o.ctx = Some(64);
    });
    let body = json!({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        "max_tokens": 2,
        "temperature": 0,
    });
    let (st, v) = post(server.addr, "/v1/chat/completions", body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], own, "{v}");
    server.shutdown().unwrap();
}
