//! Resumable training: every `--checkpoint-every` steps the run writes `OUT.ckpt` (safetensors: the
//! student's and Φ's parameters, AdamW's moments, the step count, and a fingerprint of everything that
//! decides the run — teacher file, windows, options). A run that finds a checkpoint with its own
//! fingerprint continues from it, and ends bit for bit where an uninterrupted run would have; the
//! checkpoint is removed once the student is written.

use crate::optim::AdamW;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes the optimizer's variables, moments and step under `fingerprint`.
pub fn save(path: &Path, fingerprint: u64, opt: &AdamW) -> Result<()> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (i, ((x, m), v)) in opt.vars.iter().zip(&opt.m).zip(&opt.v).enumerate() {
        t.insert(format!("var.{i}"), x.as_tensor().clone());
        t.insert(format!("m.{i}"), m.as_tensor().clone());
        t.insert(format!("v.{i}"), v.as_tensor().clone());
    }
    let head = [fingerprint as u32, (fingerprint >> 32) as u32, opt.step as u32];
    t.insert("head".into(), Tensor::from_slice(&head, 3, &Device::Cpu)?);
    let tmp = path.with_extension("ckpt.tmp");
    candle_core::safetensors::save(&t, &tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Restores `opt` from `path` if it holds a checkpoint of this run (`fingerprint`); returns whether it did.
pub fn restore(path: &Path, fingerprint: u64, opt: &mut AdamW) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    let t = match candle_core::safetensors::load(path, &Device::Cpu) {
        Ok(t) => t,
        Err(_) => return Ok(false),
    };
    let head: Vec<u32> = match t.get("head") {
        Some(h) => h.to_vec1()?,
        None => return Ok(false),
    };
    if head.len() != 3 || (head[0] as u64 | (head[1] as u64) << 32) != fingerprint {
        return Ok(false);
    }
    for (i, ((x, m), v)) in opt.vars.iter().zip(&opt.m).zip(&opt.v).enumerate() {
        let get = |k: &str| {
            t.get(&format!("{k}.{i}"))
                .with_context(|| format!("{}: no {k}.{i}", path.display()))
        };
        x.set(get("var")?)?;
        m.set(get("m")?)?;
        v.set(get("v")?)?;
    }
    opt.step = head[2] as usize;
    Ok(true)
}
