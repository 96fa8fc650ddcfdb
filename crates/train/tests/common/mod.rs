//! Helpers shared by the training crate's integration tests: paths into `../shared`, scratch
//! directories and slices of the Shakespeare corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared` beside the repository.
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared").join(rel)
}

/// A fresh directory under the temp dir, named after the test and this process.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bushu-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `bytes` bytes of the shared text file `src` from byte `skip` (both moved forward to char
/// boundaries, the end kept within the file), written to `dir/name`.
pub fn text_slice(src: &str, skip: usize, bytes: usize, dir: &Path, name: &str) -> PathBuf {
    let t = std::fs::read_to_string(shared(src)).unwrap();
    let mut a = skip;
    while !t.is_char_boundary(a) {
        a += 1;
    }
    let mut b = (a + bytes).min(t.len());
    while !t.is_char_boundary(b) {
        b += 1;
    }
    let p = dir.join(name);
    std::fs::write(&p, &t[a..b]).unwrap();
    p
}

/// `bushu-train distill ARGS`: its exit code and its stderr.
pub fn distill_cli(args: &[&str]) -> (i32, String) {
    train_cli("distill", args)
}

/// `bushu-train SUB ARGS`: its exit code and its stderr.
pub fn train_cli(sub: &str, args: &[&str]) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bushu-train"))
        .arg(sub)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
