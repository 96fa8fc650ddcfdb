//! Writing GGUF (version 3) files: metadata, tensor infos, aligned tensor data. Used by `bushu quantize`
//! and by tests that need model files of a particular shape (or a particular defect).

use super::gguf::Value;
use anyhow::{Context, Result};
use kernels::DType;
use std::io::Write;
use std::path::Path;

const ALIGNMENT: usize = 32;

/// A tensor to write: name, shape (innermost first), type and its encoded bytes.
pub struct TensorData {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

/// A GGUF image being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorData>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn set(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_owned(), v));
        self
    }

    pub fn add_tensor(&mut self, name: &str, shape: Vec<usize>, dtype: DType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(TensorData {
            name: name.to_owned(),
            shape,
            dtype,
            data,
        });
        self
    }

    /// An F32 tensor from values.
    pub fn add_f32(&mut self, name: &str, shape: Vec<usize>, values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape, DType::F32, data)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut b, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in &t.shape {
                b.extend_from_slice(&(d as u64).to_le_bytes());
            }
            b.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            b.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.data.len().div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        for t in &self.tensors {
            b.resize(b.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
            b.extend_from_slice(&t.data);
        }
        b
    }

    /// Writes the file atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("gguf.tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(&self.to_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// An array's element type and length.
fn put_array_header(b: &mut Vec<u8>, ety: u32, n: usize) {
    b.extend_from_slice(&ety.to_le_bytes());
    b.extend_from_slice(&(n as u64).to_le_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Strings(_) | Value::Numbers(_) | Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_str(b, s),
        Value::Strings(a) => {
            put_array_header(b, 8, a.len());
            for s in a.iter() {
                put_str(b, s);
            }
        }
        Value::Numbers(a) => {
            put_array_header(b, a.ty().id(), a.len());
            b.extend_from_slice(a.as_le_bytes());
        }
        Value::Array(a) => {
            put_array_header(b, a.first().map(type_id).unwrap_or(4), a.len());
            for x in a {
                put_value(b, x);
            }
        }
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}
