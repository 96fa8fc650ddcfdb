//! GGUF side files that belong to one model — Medusa heads, mixture-of-depths routers, exit adapters: the
//! checks every reader makes (a GGUF file at all, then its f32 tensors of the expected size), each failure
//! one clear line naming the file.

use super::gguf::Gguf;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Opens the side file at `path`: `what` names it in errors ("the routers file"), `hint` says which file
/// the flag takes ("--mod-routers takes the file bushu train-routers writes").
pub fn open(path: &Path, what: &str, hint: &str) -> Result<Gguf> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if n < 4 || &magic != b"GGUF" {
        bail!("{} is not a GGUF file ({hint})", path.display());
    }
    Gguf::open(path).with_context(|| format!("{what} {}", path.display()))
}

/// The tensor `name` of the side file `g` (read from `path`) as f32, which must hold `numel` values.
pub fn f32_tensor(g: &Gguf, path: &Path, name: &str, numel: usize) -> Result<Vec<f32>> {
    let t = g
        .tensor(name)
        .with_context(|| format!("{}: no tensor {name}", path.display()))?;
    if t.numel() != numel {
        bail!("{}: {name} has {} values, not {numel}", path.display(), t.numel());
    }
    Ok(t.to_f32())
}
