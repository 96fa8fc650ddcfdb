//! Models from a Hugging Face repository: `bushu pull hf:ORG/REPO[:FILE]` and `--model hf:ORG/REPO[:FILE]`.
//!
//! The download is the `hf-hub` crate's blocking API (its resolve URLs `{endpoint}/{repo}/resolve/main/{file}`,
//! its cache layout `models--ORG--REPO/{blobs,snapshots,refs}`, its resumable `.part` files), with the cache
//! under bushu's (`$BUSHU_HOME/huggingface`), the endpoint from `HF_ENDPOINT` and the token from `HF_TOKEN`
//! (else hf-hub's token file, `$HF_HOME/token`). Without `:FILE`, the repository's only `.gguf` file is taken,
//! or its only Q4_K_M one when there are several. A file stored with Git LFS has its SHA-256 as ETag: the
//! downloaded bytes are checked against it, and a mismatch removes the file.

use super::progress::Progress;
use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// A parsed `hf:ORG/REPO[:FILE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfRef {
    pub repo: String,
    pub file: Option<String>,
}

impl std::fmt::Display for HfRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "hf:{}:{file}", self.repo),
            None => write!(f, "hf:{}", self.repo),
        }
    }
}

/// `Some` for names starting with `hf:`: the reference, or why it is malformed.
pub fn parse(name: &str) -> Option<Result<HfRef>> {
    let rest = name.strip_prefix("hf:")?;
    let (repo, file) = match rest.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) {
        return Some(Err(anyhow::anyhow!(
            "'{name}' is not a Hugging Face model: write hf:ORG/REPO or hf:ORG/REPO:FILE"
        )));
    }
    if let Some(f) = file {
        if f.is_empty() || f.starts_with('/') || f.split('/').any(|c| c.is_empty() || c == "..") {
            return Some(Err(anyhow::anyhow!(
                "'{name}': '{f}' is not a file name of the repository"
            )));
        }
    }
    Some(Ok(HfRef {
        repo: repo.to_string(),
        file: file.map(str::to_string),
    }))
}

/// hf-hub's cache inside bushu's.
pub fn cache_dir(models: &Path) -> PathBuf {
    models.join("huggingface")
}

/// The snapshot folder of the commit `refs/main` points at.
fn snapshot(models: &Path, r: &HfRef) -> Option<PathBuf> {
    let folder = cache_dir(models).join(Repo::new(r.repo.clone(), RepoType::Model).folder_name());
    let commit = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    Some(folder.join("snapshots").join(commit.trim()))
}

/// The `.gguf` files of a list of repository files (`None` when no single one can be chosen: the error says why).
fn choose_gguf(repo: &str, files: &[String]) -> Result<String> {
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    match ggufs.len() {
        0 => bail!("hf:{repo} has no .gguf file; name the file: hf:{repo}:FILE"),
        1 => return Ok(ggufs[0].clone()),
        _ => {}
    }
    let q4km: Vec<&&String> = ggufs
        .iter()
        .filter(|f| f.to_ascii_lowercase().contains("q4_k_m"))
        .collect();
    if q4km.len() == 1 {
        return Ok((*q4km[0]).clone());
    }
    let names: Vec<&str> = ggufs.iter().map(|s| s.as_str()).collect();
    bail!(
        "hf:{repo} has {} .gguf files; name one: hf:{repo}:FILE with FILE one of {}",
        names.len(),
        names.join(", ")
    )
}

/// The cached file of `r` (for `--model hf:...` and `bushu list`), if it was pulled.
pub fn cached(models: &Path, r: &HfRef) -> Option<PathBuf> {
    let snap = snapshot(models, r)?;
    let file = match &r.file {
        Some(f) => f.clone(),
        None => {
            let names: Vec<String> = std::fs::read_dir(&snap)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            choose_gguf(&r.repo, &names).ok()?
        }
    };
    let p = snap.join(file);
    p.is_file().then_some(p)
}

/// Every pulled Hugging Face file: (`hf:ORG/REPO:FILE`, path).
pub fn list(models: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(cache_dir(models)) else {
        return out;
    };
    let mut repos: Vec<String> = rd
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter_map(|n| n.strip_prefix("models--").map(|r| r.replacen("--", "/", 1)))
        .collect();
    repos.sort();
    for repo in repos {
        let r = HfRef {
            repo: repo.clone(),
            file: None,
        };
        let Some(snap) = snapshot(models, &r) else { continue };
        let mut files = Vec::new();
        walk(&snap, &snap, &mut files);
        files.sort();
        for (rel, path) in files {
            out.push((format!("hf:{repo}:{rel}"), path));
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.is_file() {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
            out.push((rel, p));
        }
    }
}

/// Removes a pulled repository (all its files) from the cache; false when it was not there.
pub fn remove(models: &Path, r: &HfRef) -> Result<bool> {
    let folder = cache_dir(models).join(Repo::new(r.repo.clone(), RepoType::Model).folder_name());
    if let Some(f) = &r.file {
        // One file: its snapshot link and blob.
        let Some(p) = snapshot(models, r).map(|s| s.join(f)).filter(|p| p.is_file()) else {
            return Ok(false);
        };
        let blob = std::fs::canonicalize(&p).ok();
        std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        if let Some(b) = blob.filter(|b| b != &p) {
            let _ = std::fs::remove_file(b);
        }
        return Ok(true);
    }
    if !folder.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&folder).with_context(|| format!("cannot remove {}", folder.display()))?;
    Ok(true)
}

/// hf-hub's progress calls onto a [`Progress`].
struct HfProgress {
    label: String,
    p: Option<Progress>,
}

impl hf_hub::api::Progress for HfProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        match &mut self.p {
            Some(p) => p.set_position(0),
            None => self.p = Some(Progress::stderr(&self.label, size as u64)),
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(p) = &mut self.p {
            p.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(mut p) = self.p.take() {
            p.finish();
        }
    }
}

/// One line for an hf-hub error.
fn describe(r: &HfRef, e: ApiError) -> anyhow::Error {
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(401 | 403, _) => anyhow::anyhow!(
                "{r}: access denied by the hub: the repository is gated or private (set HF_TOKEN to a token \
                 with access)"
            ),
            ureq::Error::Status(404, _) => {
                anyhow::anyhow!("{r}: no such repository or file on the hub")
            }
            e => super::http::describe(&format!("the hub for {r}"), e),
        },
        e => anyhow::anyhow!("{r}: {e}"),
    }
}

/// Pulls `r`: the reference with its file name, the file, and whether it was already there.
pub fn pull(models: &Path, r: &HfRef) -> Result<(HfRef, PathBuf, bool)> {
    if let Some(p) = r.file.as_ref().and_then(|_| cached(models, r)) {
        return Ok((r.clone(), p, true));
    }
    let mut b = ApiBuilder::from_env()
        .with_cache_dir(cache_dir(models))
        .with_progress(false)
        .with_retries(super::http::MAX_RETRIES as usize);
    if let Some(t) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        b = b.with_token(Some(t.trim().to_string()));
    }
    let api = b.build().map_err(|e| describe(r, e))?;
    let repo = api.model(r.repo.clone());
    let file = match &r.file {
        Some(f) => f.clone(),
        None => {
            let info = repo.info().map_err(|e| describe(r, e))?;
            let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
            choose_gguf(&r.repo, &names)?
        }
    };
    let full = HfRef {
        repo: r.repo.clone(),
        file: Some(file.clone()),
    };
    if let Some(p) = cached(models, &full) {
        return Ok((full, p, true));
    }
    let progress = HfProgress {
        label: full.to_string(),
        p: None,
    };
    let path = repo
        .download_with_progress(&file, progress)
        .map_err(|e| describe(&full, e))?;
    // The blob is named by its ETag: the SHA-256 for Git LFS files.
    let blob = std::fs::canonicalize(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()) {
        let got = super::sha256_file(&blob)?;
        if got != etag.to_ascii_lowercase() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&blob);
            bail!("checksum mismatch for {full}: SHA-256 {got}, the hub says {etag}; the file was removed");
        }
    }
    Ok((full, path, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf")
            .unwrap()
            .unwrap();
        assert_eq!(r.repo, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(r.file.as_deref(), Some("qwen2.5-0.5b-instruct-q4_k_m.gguf"));
        assert_eq!(parse("hf:a/b").unwrap().unwrap().file, None);
        assert!(parse("smollm2").is_none());
        for bad in ["hf:a", "hf:a/b/c", "hf:../b", "hf:a/b:", "hf:a/b:../x", "hf:a b/c"] {
            assert!(parse(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn gguf_choice() {
        let files = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose_gguf("a/b", &files(&["README.md", "m.gguf"])).unwrap(), "m.gguf");
        assert_eq!(
            choose_gguf("a/b", &files(&["m-Q8_0.gguf", "m-Q4_K_M.gguf"])).unwrap(),
            "m-Q4_K_M.gguf"
        );
        let e = choose_gguf("a/b", &files(&["m-Q8_0.gguf", "m-F16.gguf"])).unwrap_err();
        assert!(e.to_string().contains("m-Q8_0.gguf, m-F16.gguf"), "{e}");
        assert!(choose_gguf("a/b", &files(&["config.json"])).is_err());
    }
}
