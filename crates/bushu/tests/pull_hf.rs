//! `bushu pull hf:ORG/REPO[:FILE]` against a fake Hugging Face hub on 127.0.0.1 (`HF_ENDPOINT`) that answers
//! the way huggingface.co does for a Git LFS file: `GET /api/models/ORG/REPO/revision/main` lists the files;
//! `GET /ORG/REPO/resolve/main/FILE` answers 302 to a CDN URL with `X-Repo-Commit` and `X-Linked-Etag` (the
//! SHA-256) and the CDN serves byte ranges. The served file is llama.cpp's vocabulary-only Qwen2 GGUF, so the
//! pulled model can be used by name afterwards (`bushu tokenize --model hf:...`).

mod common;
#[path = "common/fake_http.rs"]
mod fake_http;

use fake_http::{serve_bytes, Reply, Request, Server};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// A hub with `org/repo` holding `files` (name, bytes); `etag_of` gives the announced ETag of each file;
/// the CDN drops the first body transfer halfway when `drop_once`; `token`: the bearer token it requires.
fn hub(files: Vec<(String, Vec<u8>)>, lie_about: Option<&str>, drop_once: bool, token: Option<&str>) -> Server {
    let files = Arc::new(files);
    let lie = lie_about.map(str::to_string);
    let token = token.map(str::to_string);
    let base: Arc<Mutex<String>> = Arc::default();
    let b2 = base.clone();
    let bodies = Arc::new(AtomicUsize::new(0));
    let server = Server::start(move |req: &Request| {
        let base = b2.lock().unwrap().clone();
        if let Some(t) = &token {
            if req.header("authorization") != Some(&format!("Bearer {t}")) && !req.path.starts_with("/cdn/") {
                return Reply::new(401, "{\"error\":\"Invalid credentials\"}");
            }
        }
        if req.path == "/api/models/org/repo/revision/main" {
            let siblings: Vec<_> = files.iter().map(|(n, _)| serde_json::json!({"rfilename": n})).collect();
            return Reply::new(
                200,
                serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string(),
            )
            .header("Content-Type", "application/json");
        }
        if let Some(name) = req.path.strip_prefix("/org/repo/resolve/main/") {
            let Some((_, data)) = files.iter().find(|(n, _)| n == name) else {
                return Reply::new(404, "Entry not found").header("X-Error-Code", "EntryNotFound");
            };
            let etag = match &lie {
                Some(l) if l == name => sha256_hex(b"other bytes"),
                _ => sha256_hex(data),
            };
            return Reply::redirect(&format!("{base}/cdn/{name}"))
                .header("X-Repo-Commit", COMMIT)
                .header("X-Linked-Etag", &format!("\"{etag}\""))
                .header("X-Linked-Size", &data.len().to_string())
                .header("ETag", "\"W/git-sha1\"");
        }
        if let Some(name) = req.path.strip_prefix("/cdn/") {
            let Some((_, data)) = files.iter().find(|(n, _)| n == name) else {
                return Reply::new(404, "no");
            };
            let reply = serve_bytes(req, data);
            let is_probe = req.header("range") == Some("bytes=0-0");
            if drop_once && !is_probe && bodies.fetch_add(1, Ordering::SeqCst) == 0 {
                let n = reply.body.len() / 2;
                return reply.drop_after(n);
            }
            return reply;
        }
        Reply::new(404, "no")
    });
    *base.lock().unwrap() = server.base.clone();
    server
}

fn bushu(home: &Path, hf_home: &Path, endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    c.args(args)
        .env("BUSHU_HOME", home)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.output().unwrap()
}

fn one_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

fn vocab() -> Vec<u8> {
    std::fs::read(common::shared("testdata/vocab/ggml-vocab-qwen2.gguf")).unwrap()
}

#[test]
fn pull_by_repo_resumes_and_is_usable_by_name() {
    let tmp = common::TempDir::new("pull-hf-ok");
    let (home, hf_home) = (tmp.0.join("models"), tmp.0.join("hf"));
    let data = vocab();
    let files = vec![
        ("README.md".to_string(), b"# a model".to_vec()),
        ("m-Q8_0.gguf".to_string(), b"GGUF other".to_vec()),
        ("m-Q4_K_M.gguf".to_string(), data.clone()),
    ];
    let server = hub(files, None, true, Some("hf_secret"));
    let ep = server.base.clone();
    // Without the token the hub refuses: one line naming HF_TOKEN.
    let e = one_error(&bushu(&home, &hf_home, &ep, None, &["pull", "hf:org/repo"]));
    assert!(e.contains("access denied") && e.contains("HF_TOKEN"), "{e}");
    // With it: the repository's Q4_K_M file, the dropped body resumed with a range request.
    let out = bushu(&home, &hf_home, &ep, Some("hf_secret"), &["pull", "hf:org/repo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pulled hf:org/repo:m-Q4_K_M.gguf"), "{stdout}");
    let cdn = server.requests("/cdn/m-Q4_K_M.gguf");
    let ranges: Vec<Option<&str>> = cdn.iter().map(|r| r.header("range")).collect();
    assert!(
        ranges
            .iter()
            .any(|r| r.is_some_and(|r| r != "bytes=0-0" && r != "bytes=0-")),
        "no resumed range request: {ranges:?}"
    );
    let resolve = server.requests("/org/repo/resolve/main/m-Q4_K_M.gguf");
    assert!(resolve
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer hf_secret")));
    // The file is in bushu's cache, hf-hub's layout, with the right bytes.
    let snap = home.join(format!(
        "huggingface/models--org--repo/snapshots/{COMMIT}/m-Q4_K_M.gguf"
    ));
    assert_eq!(std::fs::read(&snap).unwrap(), data);
    // Usable by name: tokenize through --model hf:..., with and without the file name.
    for name in ["hf:org/repo", "hf:org/repo:m-Q4_K_M.gguf"] {
        let out = bushu(
            &home,
            &hf_home,
            "http://127.0.0.1:9",
            None,
            &["tokenize", "--model", name, "--no-bos", "Hello world"],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "9707 1879");
    }
    // A second pull is answered from the cache (no hub needed).
    let out = bushu(
        &home,
        &hf_home,
        "http://127.0.0.1:9",
        None,
        &["pull", "hf:org/repo:m-Q4_K_M.gguf"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("already pulled"));
    // list shows it; rm removes it.
    let out = bushu(&home, &hf_home, &ep, None, &["list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("hf:org/repo:m-Q4_K_M.gguf"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("Hugging Face") && line.contains("5.9 MB"), "{line}");
    let out = bushu(&home, &hf_home, &ep, None, &["rm", "hf:org/repo"]);
    assert!(out.status.success());
    assert!(!snap.exists());
    let e = one_error(&bushu(
        &home,
        &hf_home,
        &ep,
        None,
        &["tokenize", "--model", "hf:org/repo", "x"],
    ));
    assert!(e.contains("is not downloaded"), "{e}");
}

#[test]
fn checksum_mismatch_and_missing_files() {
    let tmp = common::TempDir::new("pull-hf-bad");
    let (home, hf_home) = (tmp.0.join("models"), tmp.0.join("hf"));
    let files = vec![
        ("a.gguf".to_string(), b"GGUF one".to_vec()),
        ("b.gguf".to_string(), b"GGUF two".to_vec()),
    ];
    let server = hub(files, Some("a.gguf"), false, None);
    let ep = server.base.clone();
    let e = one_error(&bushu(&home, &hf_home, &ep, None, &["pull", "hf:org/repo:a.gguf"]));
    assert!(e.contains("checksum mismatch") && e.contains("removed"), "{e}");
    let snap = home.join(format!("huggingface/models--org--repo/snapshots/{COMMIT}"));
    assert!(!snap.join("a.gguf").exists());
    let blobs: Vec<_> = std::fs::read_dir(home.join("huggingface/models--org--repo/blobs"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    // The blob (named by the announced ETag) is gone too.
    let lie = sha256_hex(b"other bytes");
    assert!(blobs.iter().all(|b| b.to_string_lossy() != lie), "{blobs:?}");
    // Two .gguf files and no Q4_K_M among them: the choice is asked for.
    let e = one_error(&bushu(&home, &hf_home, &ep, None, &["pull", "hf:org/repo"]));
    assert!(e.contains("has 2 .gguf files") && e.contains("a.gguf, b.gguf"), "{e}");
    // A file the repository does not have.
    let e = one_error(&bushu(&home, &hf_home, &ep, None, &["pull", "hf:org/repo:c.gguf"]));
    assert!(e.contains("no such repository or file"), "{e}");
    // b.gguf is fine.
    let out = bushu(&home, &hf_home, &ep, None, &["pull", "hf:org/repo:b.gguf"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(snap.join("b.gguf")).unwrap(), b"GGUF two");
}
