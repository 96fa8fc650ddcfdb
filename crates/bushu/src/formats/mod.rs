//! Model file formats. Each loader yields [`Tensor`]s that are views into memory-mapped files, plus the
//! metadata that the model's [`crate::model::Config`] and the tokenizer are built from.

pub mod gguf;
pub mod gguf_writer;
pub mod hf;
pub mod llama2c;
pub mod side_file;
pub mod strlist;

use anyhow::{bail, Context, Result};
use kernels::{DType, PackSlot, QMatrix};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// Bytes that tensors point into: a memory-mapped file, or an owned buffer (for data made in memory).
pub enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps `path` read-only.
    pub fn map(path: &Path) -> Result<Arc<Storage>> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.is_dir() {
            bail!("{} is a directory", path.display());
        }
        // SAFETY: the map is read-only; bushu never writes model files while they are mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        // Transparent huge pages for the weights: when the file is read into the page cache through this
        // mapping, the kernel (Linux with file THP, e.g. ext4/xfs large folios) keeps it in 2 MiB folios
        // and later loads map each with one page-table entry instead of 512 — most of the first forward
        // pass's cost on a warm cache. Advice only: kernels without it ignore it or refuse it harmlessly.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Arc::new(Storage::Mapped(map)))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A named tensor: `shape` lists dimensions innermost first (GGUF's `ne` order), so `shape[0]` is the
/// length of a row and a 2-D weight of `shape = [cols, rows]` maps `cols` inputs to `rows` outputs.
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub storage: Arc<Storage>,
    pub offset: usize,
    pub nbytes: usize,
    /// The packed copy of the matrix that the fast (and F16/BF16) kernels make on first use (shared by clones).
    pub pack: Arc<PackSlot>,
}

impl Tensor {
    /// A tensor owning its data, `bytes` encoded as `dtype` (tests, converted or re-encoded weights).
    pub fn owned(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Tensor {
        Tensor {
            pack: Default::default(),
            name: name.to_owned(),
            dtype,
            shape,
            nbytes: bytes.len(),
            storage: Arc::new(Storage::Owned(bytes)),
            offset: 0,
        }
    }

    /// A tensor owning its data, f32 values.
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor::owned(
            name,
            DType::F32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.offset..self.offset + self.nbytes]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor as a matrix of `shape[1..].product()` rows of `shape[0]` elements.
    pub fn matrix(&self) -> QMatrix<'_> {
        let cols = self.shape.first().copied().unwrap_or(1);
        QMatrix::new(self.dtype, self.numel() / cols.max(1), cols, self.bytes()).with_pack(&self.pack)
    }

    /// All values dequantized to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let m = self.matrix();
        let mut out = vec![0.0f32; self.numel()];
        for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
            m.dequantize_row(r, row);
        }
        out
    }
}
