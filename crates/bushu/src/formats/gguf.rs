//! GGUF files (versions 2 and 3): header, metadata key/values, tensor infos, aligned tensor data.
//! The file is memory-mapped; tensors are views into the map, never copies.

use super::{Storage, Tensor};
use anyhow::{bail, Context, Result};
use kernels::DType;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer value as i64 (also bool).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => v as i64,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_i64().map(|v| v != 0),
        }
    }

    /// A short rendering for `bushu info` (arrays are summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.len() > 80 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} values]", a.len()),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// A parsed GGUF file: its metadata and tensors (views into the mapped file).
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<Tensor>,
}

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "file is truncated (needed {n} bytes at offset {}, file has {})",
                self.pos,
                self.buf.len()
            );
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    bail!("metadata arrays nested too deeply");
                }
                let ety = self.u32()?;
                let n = self.u64()? as usize;
                // Every element takes at least one byte: refuse counts the file cannot hold.
                if n > self.buf.len() - self.pos {
                    bail!("file is truncated (array of {n} elements at offset {})", self.pos);
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => bail!("unknown metadata value type {t}"),
        })
    }
}

impl Gguf {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Gguf> {
        let storage = Storage::map(path)?;
        Self::parse(storage).with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    /// Parses a GGUF image held by `storage`.
    pub fn parse(storage: Arc<Storage>) -> Result<Gguf> {
        let buf = storage.bytes();
        let mut r = Reader { buf, pos: 0 };
        let magic = r.take(4).context("file is empty or truncated")?;
        if magic != MAGIC {
            bail!("bad magic {:?} (expected \"GGUF\")", String::from_utf8_lossy(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (only 2 and 3)");
        }
        let n_tensors = r.u64()? as usize;
        let n_kv = r.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0).with_context(|| format!("metadata key {key}"))?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_i64()
                .filter(|&a| a > 0 && (a & (a - 1)) == 0)
                .context("general.alignment is not a power of two")? as u64,
            None => DEFAULT_ALIGNMENT,
        };
        struct Info {
            name: String,
            shape: Vec<usize>,
            dtype: DType,
            offset: u64,
        }
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                bail!("tensor {name}: {n_dims} dimensions (at most 4)");
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(r.u64()? as usize);
            }
            let type_id = r.u32()?;
            let dtype = DType::from_ggml_id(type_id).map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
            let offset = r.u64()?;
            infos.push(Info {
                name,
                shape,
                dtype,
                offset,
            });
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for info in infos {
            let n: usize = info
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .context("tensor size overflows")?;
            let row = info.shape.first().copied().unwrap_or(1);
            let nbytes = info
                .dtype
                .bytes_for(n)
                .filter(|_| row % info.dtype.block_len() == 0)
                .with_context(|| {
                    format!(
                        "tensor {}: shape {:?} is not a whole number of {} blocks",
                        info.name, info.shape, info.dtype
                    )
                })?;
            let start = data_start.checked_add(info.offset).context("tensor offset overflows")? as usize;
            if start.checked_add(nbytes).is_none_or(|end| end > buf.len()) {
                bail!(
                    "file is truncated: tensor {} needs bytes {}..{} but the file has {}",
                    info.name,
                    start,
                    start + nbytes,
                    buf.len()
                );
            }
            tensors.push(Tensor {
                pack: Default::default(),
                name: info.name,
                dtype: info.dtype,
                shape: info.shape,
                storage: storage.clone(),
                offset: start,
                nbytes,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// A string array (e.g. `tokenizer.ggml.tokens`).
    pub fn get_strings(&self, key: &str) -> Option<Vec<String>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// A numeric array as f32 (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32s(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect()
    }

    /// An integer array (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64s(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key)?.as_array()?.iter().map(Value::as_i64).collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}
