//! GGUF files (versions 2 and 3): header, metadata key/values, tensor infos, aligned tensor data.
//! The file is memory-mapped; tensors are views into the map, never copies. Metadata arrays of strings and
//! of numbers are read in one pass into packed values (a vocabulary is a few allocations, not one per token).

use super::{Storage, Tensor};
use anyhow::{bail, Context, Result};
use kernels::DType;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use super::strlist::StrList;

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
    /// An array of strings (what the reader makes of one; e.g. `tokenizer.ggml.tokens`).
    Strings(StrList),
    /// An array of numbers or bools (what the reader makes of one; e.g. `tokenizer.ggml.scores`).
    Numbers(Numbers),
    /// Any other array (of arrays), or an array built element by element (the writer accepts all three).
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

    /// An array held element by element (string and number arrays read from a file are
    /// [`Value::Strings`] and [`Value::Numbers`]; [`Gguf::get_strings`] and friends take any of them).
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

    /// The number of elements of an array value.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            Value::Strings(a) => Some(a.len()),
            Value::Numbers(a) => Some(a.len()),
            Value::Array(a) => Some(a.len()),
            _ => None,
        }
    }

    /// A short rendering for `bushu info` (arrays are summarised).
    pub fn summary(&self) -> String {
        if let Some(n) = self.array_len() {
            return format!("[{n} values]");
        }
        match self {
            Value::String(s) if s.len() > 80 => format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
            Value::String(s) => format!("{s:?}"),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// The type of a number (or bool) metadata value: GGUF value types 0-7 and 10-12 (the discriminants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NumType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl NumType {
    pub fn from_id(id: u32) -> Option<NumType> {
        use NumType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, U64, I64, F64]
            .into_iter()
            .find(|t| t.id() == id)
    }

    /// The GGUF value type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        use NumType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }

    /// The value whose little-endian encoding is `b` (`size()` bytes).
    fn decode(self, b: &[u8]) -> Value {
        fn le<const N: usize>(b: &[u8]) -> [u8; N] {
            b[..N].try_into().unwrap()
        }
        match self {
            NumType::U8 => Value::U8(b[0]),
            NumType::I8 => Value::I8(b[0] as i8),
            NumType::U16 => Value::U16(u16::from_le_bytes(le(b))),
            NumType::I16 => Value::I16(i16::from_le_bytes(le(b))),
            NumType::U32 => Value::U32(u32::from_le_bytes(le(b))),
            NumType::I32 => Value::I32(i32::from_le_bytes(le(b))),
            NumType::F32 => Value::F32(f32::from_le_bytes(le(b))),
            NumType::Bool => Value::Bool(b[0] != 0),
            NumType::U64 => Value::U64(u64::from_le_bytes(le(b))),
            NumType::I64 => Value::I64(i64::from_le_bytes(le(b))),
            NumType::F64 => Value::F64(f64::from_le_bytes(le(b))),
        }
    }
}

/// An array of numbers (or bools) of one type, kept as the file's little-endian bytes: read with one copy,
/// written back identically, elements decoded when asked for.
#[derive(Clone, PartialEq)]
pub struct Numbers {
    ty: NumType,
    bytes: Vec<u8>,
}

impl Numbers {
    /// The array whose little-endian encoding is `bytes`, or None when that is not a whole number of values.
    pub fn from_le_bytes(ty: NumType, bytes: Vec<u8>) -> Option<Numbers> {
        bytes.len().is_multiple_of(ty.size()).then_some(Numbers { ty, bytes })
    }

    pub fn ty(&self) -> NumType {
        self.ty
    }

    /// The values' little-endian encoding.
    pub fn as_le_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / self.ty.size()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Element `i` as a scalar value (e.g. [`Value::F32`]).
    pub fn get(&self, i: usize) -> Option<Value> {
        let n = self.ty.size();
        let b = self.bytes.get(i.checked_mul(n)?..)?;
        (b.len() >= n).then(|| self.ty.decode(b))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value> + '_ {
        self.bytes.chunks_exact(self.ty.size()).map(|b| self.ty.decode(b))
    }
}

impl fmt::Debug for Numbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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
        if let Some(t) = NumType::from_id(ty) {
            return Ok(t.decode(self.take(t.size())?));
        }
        Ok(match ty {
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    bail!("metadata arrays nested too deeply");
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                self.array(ety, n, depth)?
            }
            t => bail!("unknown metadata value type {t}"),
        })
    }
    /// An array of `n` values of type `ety`: strings and numbers packed, anything else value by value.
    fn array(&mut self, ety: u32, n: u64, depth: usize) -> Result<Value> {
        let num = NumType::from_id(ety);
        // Refuse counts the file cannot hold before reserving anything: a string takes at least its 8-byte
        // length, an array its 12-byte header, a number its size.
        let min_size = match (ety, num) {
            (_, Some(t)) => t.size(),
            (8, _) => 8,
            (9, _) => 12,
            _ => bail!("unknown metadata value type {ety} (array elements)"),
        };
        let remaining = self.buf.len() - self.pos;
        let Some(n) = usize::try_from(n).ok().filter(|&n| n <= remaining / min_size) else {
            bail!("file is truncated (array of {n} elements at offset {})", self.pos);
        };
        // Arrays of arrays are held value by value (48 bytes each for a 12-byte header): a bound, so a
        // malformed file cannot ask for several times its size in memory. No known GGUF writer nests them.
        if ety == 9 && n > MAX_NESTED {
            bail!("metadata array of {n} arrays (at most {MAX_NESTED} are read)");
        }
        if let Some(ty) = num {
            let bytes = self.take(n * ty.size())?.to_vec();
            return Ok(Value::Numbers(Numbers { ty, bytes }));
        }
        if ety == 8 {
            // Measure, then copy into one buffer.
            let start = self.pos;
            let mut total = 0;
            for _ in 0..n {
                let len = self.u64()? as usize;
                total += self.take(len)?.len();
            }
            self.pos = start;
            let mut list = StrList::with_capacity(n, total);
            for _ in 0..n {
                let len = self.u64()? as usize;
                list.push_lossy(self.take(len)?);
            }
            return Ok(Value::Strings(list));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.value(ety, depth + 1)?);
        }
        Ok(Value::Array(v))
    }
}

/// Most arrays an array of arrays may hold.
const MAX_NESTED: usize = 1 << 16;

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

    /// A string array (e.g. `tokenizer.ggml.tokens`): borrowed as read from a file, gathered when the
    /// metadata holds it value by value.
    pub fn get_strings(&self, key: &str) -> Option<Cow<'_, StrList>> {
        match self.get(key)? {
            Value::Strings(a) => Some(Cow::Borrowed(a)),
            Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>().map(Cow::Owned),
            // An empty array's element type says nothing.
            Value::Numbers(a) if a.is_empty() => Some(Cow::Owned(StrList::new())),
            _ => None,
        }
    }

    /// A numeric array as f32 (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32s(&self, key: &str) -> Option<Vec<f32>> {
        self.get_numbers(key, |v| v.as_f64().map(|x| x as f32))
    }

    /// An integer array (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64s(&self, key: &str) -> Option<Vec<i64>> {
        self.get_numbers(key, Value::as_i64)
    }

    /// The array at `key` with `f` applied to each element, or None if `f` fails on one.
    fn get_numbers<T>(&self, key: &str, f: impl Fn(&Value) -> Option<T>) -> Option<Vec<T>> {
        match self.get(key)? {
            Value::Numbers(a) => a.iter().map(|v| f(&v)).collect(),
            Value::Array(a) => a.iter().map(f).collect(),
            Value::Strings(a) if a.is_empty() => Some(Vec::new()),
            _ => None,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}
