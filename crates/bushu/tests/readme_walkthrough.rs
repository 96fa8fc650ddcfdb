//! The README's commands and docs/WALKTHROUGH.md run as written on a fresh clone (issue 22), so neither
//! can drift from the code.
//!
//! - `readme_commands_run`: every command of README.md's `sh` blocks (split at `&&`, comments dropped) runs
//!   from the repository root with `./target/release/bushu` being this build's binary, and exits 0.
//!   Not run: `cargo build` / `cargo test` (this test is part of what they build and run). Run in a
//!   short variant, stated in [`SHORT`]: `serve` (on a free port instead of 8080, until `/health` answers),
//!   `bench` (fewer tokens, one repetition), the interactive `chat` (given `/exit`).
//! - `walkthrough_prints_what_it_says`: every `$` line of docs/WALKTHROUGH.md's `console` blocks runs the
//!   same way and its standard output matches the lines under it (`…`: any text; a line of only `…`: any
//!   lines).
//!
//! Commands that need the default model skip, saying so, when it is not in the cache.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `(what the README says, what runs instead)`: the short variants.
const SHORT: &[(&str, &str)] = &[
    // A server runs until stopped; 8080 may be taken on the machine running the tests.
    ("serve --port 8080", "serve --port 0"),
    // 256 + 64 tokens, three repetitions: a few seconds on two cores; 16 + 4 once shows the same table.
    ("-p 256 -n 64", "-p 16 -n 4 -r 1"),
];

/// Both tests write /tmp/expert-q4_k_m.gguf (the README's and the walkthrough's `quantize`): one at a time.
static TMP_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// The lines of the fenced blocks of `lang` in a Markdown text.
fn blocks(md: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in md.lines() {
        if let Some(b) = cur.as_mut() {
            if line.starts_with("```") {
                out.push(cur.take().unwrap());
            } else {
                b.push(line.to_owned());
            }
        } else if line.trim() == format!("```{lang}") {
            cur = Some(Vec::new());
        }
    }
    out
}

/// Drops a trailing `# comment` (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = None;
    for (i, c) in line.char_indices() {
        match (c, quoted) {
            ('"' | '\'', None) => quoted = Some(c),
            (c, Some(q)) if c == q => quoted = None,
            ('#', None) if i == 0 || line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line.trim_end()
}

fn needs_default_model(cmd: &str) -> bool {
    let model_flag = cmd.contains("--model") || cmd.contains(" -m ");
    ["bushu pull", "bushu list"].iter().any(|c| cmd.contains(c))
        || (["bushu chat", "bushu serve"].iter().any(|c| cmd.contains(c)) && !model_flag)
}

fn have_default_model() -> bool {
    use bushu::pull::{check_cached, find_model, models_dir, CacheStatus};
    let spec = find_model("smollm2-135m").unwrap();
    matches!(check_cached(&spec, &models_dir()), Ok(CacheStatus::Ok))
}

fn shell(cmd: &str) -> Command {
    let cmd = cmd.replace("./target/release/bushu", env!("CARGO_BIN_EXE_bushu"));
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).current_dir(root());
    c
}

/// Runs `cmd` (a shell line), feeding `stdin`; its status and standard output.
fn run(cmd: &str, stdin: &str) -> (bool, String, String) {
    let mut child = shell(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Starts the server line, waits for its start-up line, asks `/health`, stops it.
fn serve_briefly(cmd: &str) {
    let mut child = shell(&format!("exec {cmd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0 && Instant::now() < deadline,
            "{cmd}: no start-up line"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("ok"), "{cmd}: {resp}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn readme_commands_run() {
    let _one_at_a_time = TMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let readme = read("README.md");
    let mut ran = 0;
    for line in blocks(&readme, "sh").concat() {
        for cmd in strip_comment(&line)
            .split("&&")
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            if cmd.starts_with("cargo ") {
                eprintln!("not run (this test is part of it): {cmd}");
                continue;
            }
            if needs_default_model(cmd) && !have_default_model() {
                eprintln!("SKIPPED (the default model is not cached; bushu pull): {cmd}");
                continue;
            }
            let mut short = cmd.to_owned();
            for (from, to) in SHORT {
                short = short.replace(from, to);
            }
            eprintln!("$ {short}");
            if short.contains("bushu serve") {
                serve_briefly(&short);
            } else {
                let interactive = short.ends_with("bushu chat");
                let (ok, out, err) = run(&short, if interactive { "/exit\n" } else { "" });
                assert!(ok, "{short}\nstdout: {out}\nstderr: {err}");
                if cmd.contains("capital of France") {
                    assert!(out.contains("Paris"), "{out}");
                }
            }
            ran += 1;
        }
    }
    assert!(ran >= 7, "only {ran} README commands ran");
}

/// Whether `line` matches `pat`, where `…` stands for any text.
fn line_matches(pat: &str, line: &str) -> bool {
    let parts: Vec<&str> = pat.split('…').collect();
    if parts.len() == 1 {
        return pat == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

fn lines_match(pats: &[&str], lines: &[&str]) -> bool {
    match pats.split_first() {
        None => lines.is_empty(),
        Some((&"…", rest)) => (0..=lines.len()).any(|k| lines_match(rest, &lines[k..])),
        Some((p, rest)) => !lines.is_empty() && line_matches(p, lines[0]) && lines_match(rest, &lines[1..]),
    }
}

fn trim_end(mut v: Vec<&str>) -> Vec<&str> {
    while v.last().is_some_and(|l| l.is_empty()) {
        v.pop();
    }
    v
}

#[test]
fn walkthrough_prints_what_it_says() {
    let _one_at_a_time = TMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let doc = read("docs/WALKTHROUGH.md");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for block in blocks(&doc, "console") {
        for line in block {
            match line.strip_prefix("$ ") {
                Some(cmd) => steps.push((cmd.to_owned(), Vec::new())),
                None => steps.last_mut().expect("output before a command").1.push(line),
            }
        }
    }
    assert!(steps.len() >= 12, "{} steps", steps.len());
    for (cmd, want) in &steps {
        if needs_default_model(cmd) && !have_default_model() {
            eprintln!("SKIPPED (the default model is not cached; bushu pull): {cmd}");
            continue;
        }
        let (ok, out, err) = run(cmd, "");
        assert!(ok, "{cmd}\nstderr: {err}");
        let got = trim_end(out.split('\n').collect());
        let want = trim_end(want.iter().map(String::as_str).collect());
        assert!(
            lines_match(&want, &got),
            "$ {cmd}\nprinted:\n{out}\ndocs/WALKTHROUGH.md says:\n{}",
            want.join("\n")
        );
        eprintln!("$ {cmd}: as documented");
    }
}

#[test]
fn the_matcher_can_fail() {
    assert!(line_matches("bushu … (git …)", "bushu 0.1.0 (git abc)"));
    assert!(!line_matches("bushu … (git …)", "bushu 0.1.0"));
    assert!(!line_matches("a…a", "a"));
    assert!(lines_match(&["x", "…", "z"], &["x", "y", "y", "z"]));
    assert!(!lines_match(&["x", "…", "z"], &["x", "y"]));
    assert!(!lines_match(&["x"], &["x", "y"]));
}
