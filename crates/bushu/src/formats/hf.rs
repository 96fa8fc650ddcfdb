//! Hugging Face model files: `model.safetensors` (or the shards listed by `model.safetensors.index.json`),
//! JSON files, the chat template. Tensors are views into the memory-mapped safetensors files (nothing is
//! copied), under their Hugging Face names with shapes reversed to innermost first; what they mean is
//! [`crate::model::hf`]'s business.

use super::{Storage, Tensor};
use anyhow::{bail, Context, Result};
use kernels::DType;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template` (a string, or a list of
/// `{name, template}` of which the `default` one is taken).
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Ok(Some(t));
    }
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    Ok(match read_json(&path)?.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    })
}

/// Maps and parses one safetensors file. Tensors keep their Hugging Face names; shapes are reversed to
/// innermost first.
pub fn read_safetensors(path: &Path) -> Result<Vec<Tensor>> {
    let storage = Storage::map(path)?;
    parse_safetensors(storage).with_context(|| format!("{}: bad safetensors file", path.display()))
}

/// Parses a safetensors image: a u64 LE header length, a JSON header `{name: {dtype, shape,
/// data_offsets}}` (plus `__metadata__`), then the data, to which the offsets are relative.
pub fn parse_safetensors(storage: Arc<Storage>) -> Result<Vec<Tensor>> {
    let buf = storage.bytes();
    let Some(len_bytes) = buf.get(..8) else {
        bail!(
            "file is truncated: {} bytes, not even the 8-byte header length",
            buf.len()
        );
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().unwrap());
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&e| e <= buf.len() as u64)
        .with_context(|| {
            format!(
                "file is truncated: header of {header_len} bytes, file of {} bytes",
                buf.len()
            )
        })? as usize;
    let header: Map<String, Value> =
        serde_json::from_slice(&buf[8..data_start]).context("the header is not a JSON object")?;
    let data_len = (buf.len() - data_start) as u64;
    let mut tensors = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype_name = info
            .get("dtype")
            .and_then(Value::as_str)
            .with_context(|| format!("tensor {name}: no dtype"))?;
        let dtype = match dtype_name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => bail!("tensor {name} has dtype {other}, which is not supported (only F32, F16 and BF16)"),
        };
        let mut shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>())
            .with_context(|| format!("tensor {name}: bad shape"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<_>>())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .with_context(|| format!("tensor {name}: bad data_offsets"))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let nbytes = numel
            .and_then(|n| dtype.bytes_for(n))
            .with_context(|| format!("tensor {name}: size overflows"))?;
        if end < begin || end - begin != nbytes as u64 {
            bail!("tensor {name}: data_offsets {begin}..{end} do not hold {shape:?} {dtype_name} ({nbytes} bytes)");
        }
        if end > data_len {
            bail!(
                "file is truncated: tensor {name} needs bytes {}..{} but the file has {}",
                data_start as u64 + begin,
                data_start as u64 + end,
                buf.len()
            );
        }
        shape.reverse();
        tensors.push(Tensor {
            pack: Default::default(),
            name: name.clone(),
            dtype,
            shape,
            storage: storage.clone(),
            offset: data_start + begin as usize,
            nbytes,
        });
    }
    Ok(tensors)
}

/// The tensors of `dir` under their Hugging Face names, and the total size of their files.
pub fn read_weights(dir: &Path) -> Result<(Vec<Tensor>, u64)> {
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        if !single.exists() {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        }
        let bytes = std::fs::metadata(&single)?.len();
        return Ok((read_safetensors(&single)?, bytes));
    }
    let index = read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no weight_map object", index_path.display()))?;
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .with_context(|| format!("{}: {name} maps to {file}", index_path.display()))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            bail!("{}: shard name {file:?} is not a file name", index_path.display());
        }
        by_file.entry(file).or_default().push(name);
    }
    let (mut out, mut bytes) = (Vec::with_capacity(map.len()), 0u64);
    for (file, names) in by_file {
        let path = dir.join(file);
        let mut in_file: HashMap<String, Tensor> = read_safetensors(&path)?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        bytes += std::fs::metadata(&path)?.len();
        for name in names {
            let t = in_file.remove(name).with_context(|| {
                format!(
                    "{} puts tensor {name} in {file}, which has no such tensor",
                    index_path.display()
                )
            })?;
            out.push(t);
        }
    }
    Ok((out, bytes))
}
