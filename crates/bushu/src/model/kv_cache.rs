//! The KV cache (lecture §2): the keys and values of every past position, per layer, so that each
//! decode step computes q, k, v for the new token only and attends against what is stored.
//!
//! Stored as f32, or as int8 (`--kv-type int8`) with one f32 scale per position and KV head (symmetric
//! absmax over that head's `head_dim` values — per-head granularity, so a value is quantized once when
//! it is written and never requantized as later positions arrive). [`KvLayer`] is one layer's storage,
//! shared by this contiguous cache and the serving engine's paged one.
//!
//! Rewinding (speculative decoding's rejected drafts) is forgetting: [`KvCache::truncate`] lowers the
//! length and the next pass overwrites the rows. Nothing about a row depends on the rows after it, so a
//! rewound and re-fed cache holds bit for bit what a never-rewound one does.

use anyhow::{bail, Result};
use kernels::attention::kv_int8::{dequantize_heads, quantize_heads, KvI8};

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum KvType {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 1 byte per value plus an f32 scale per (position, KV head).
    Int8,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::Int8 => "int8",
        }
    }

    /// Bytes of keys and values of one position in every layer.
    pub fn bytes_per_position(self, n_layers: usize, kv_dim: usize, head_dim: usize) -> usize {
        let per_row = match self {
            KvType::F32 => kv_dim * std::mem::size_of::<f32>(),
            KvType::Int8 => kv_dim + kv_dim / head_dim * std::mem::size_of::<f32>(),
        };
        2 * n_layers * per_row
    }
}

/// One layer's keys and values for `slots` positions of `kv_dim` values each (position-major).
pub enum KvLayer {
    F32 { k: Vec<f32>, v: Vec<f32> },
    Int8 { k: Int8Rows, v: Int8Rows },
}

/// int8 codes and one scale per `head_dim` of them.
pub struct Int8Rows {
    q: Vec<i8>,
    scale: Vec<f32>,
    head_dim: usize,
}

/// A layer's keys and values as the attention kernels read them.
pub enum KvView<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    Int8 { k: KvI8<'a>, v: KvI8<'a> },
}

impl Int8Rows {
    fn new(values: usize, head_dim: usize) -> Int8Rows {
        Int8Rows {
            q: vec![0; values],
            scale: vec![0.0; values / head_dim],
            head_dim,
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        let (hd, end) = (self.head_dim, at + x.len());
        quantize_heads(x, hd, &mut self.q[at..end], &mut self.scale[at / hd..end / hd]);
    }

    fn read(&self, at: usize, out: &mut [f32]) {
        let (hd, end) = (self.head_dim, at + out.len());
        dequantize_heads(&self.q[at..end], &self.scale[at / hd..end / hd], hd, out);
    }

    /// Copies the `len` values from element `from` to element `to` (whole heads): codes and scales, as
    /// they are, so the copy reads back exactly as the original.
    fn copy(&mut self, from: usize, to: usize, len: usize) {
        let hd = self.head_dim;
        self.q.copy_within(from..from + len, to);
        self.scale.copy_within(from / hd..(from + len) / hd, to / hd);
    }

    fn bytes(&self) -> usize {
        self.q.len() + self.scale.len() * std::mem::size_of::<f32>()
    }

    fn view(&self) -> KvI8<'_> {
        KvI8 {
            q: &self.q,
            scale: &self.scale,
            head_dim: self.head_dim,
        }
    }
}

impl KvLayer {
    /// `slots` zeroed positions of `kv_dim` values (whole heads of `head_dim`).
    pub fn new(ty: KvType, slots: usize, kv_dim: usize, head_dim: usize) -> KvLayer {
        assert!(
            head_dim > 0 && kv_dim.is_multiple_of(head_dim),
            "KV width {kv_dim} is not a whole number of heads of {head_dim}"
        );
        let n = slots * kv_dim;
        match ty {
            KvType::F32 => KvLayer::F32 {
                k: vec![0.0; n],
                v: vec![0.0; n],
            },
            KvType::Int8 => KvLayer::Int8 {
                k: Int8Rows::new(n, head_dim),
                v: Int8Rows::new(n, head_dim),
            },
        }
    }

    /// Stores keys `xk` and values `xv` (whole positions) from element `at` (a multiple of `kv_dim`) on.
    pub fn write(&mut self, at: usize, xk: &[f32], xv: &[f32]) {
        match self {
            KvLayer::F32 { k, v } => {
                k[at..at + xk.len()].copy_from_slice(xk);
                v[at..at + xv.len()].copy_from_slice(xv);
            }
            KvLayer::Int8 { k, v } => {
                k.write(at, xk);
                v.write(at, xv);
            }
        }
    }

    /// Reads back the keys and values stored from element `at` on (dequantized for int8).
    pub fn read(&self, at: usize, ok: &mut [f32], ov: &mut [f32]) {
        match self {
            KvLayer::F32 { k, v } => {
                ok.copy_from_slice(&k[at..at + ok.len()]);
                ov.copy_from_slice(&v[at..at + ov.len()]);
            }
            KvLayer::Int8 { k, v } => {
                k.read(at, ok);
                v.read(at, ov);
            }
        }
    }

    /// Copies the keys and values of the `len` elements from element `from` to element `to` (whole
    /// positions), bit for bit.
    pub fn copy(&mut self, from: usize, to: usize, len: usize) {
        match self {
            KvLayer::F32 { k, v } => {
                k.copy_within(from..from + len, to);
                v.copy_within(from..from + len, to);
            }
            KvLayer::Int8 { k, v } => {
                k.copy(from, to, len);
                v.copy(from, to, len);
            }
        }
    }

    pub fn view(&self) -> KvView<'_> {
        match self {
            KvLayer::F32 { k, v } => KvView::F32 { k, v },
            KvLayer::Int8 { k, v } => KvView::Int8 {
                k: k.view(),
                v: v.view(),
            },
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            KvLayer::F32 { k, v } => (k.len() + v.len()) * std::mem::size_of::<f32>(),
            KvLayer::Int8 { k, v } => k.bytes() + v.bytes(),
        }
    }
}

pub struct KvCache {
    /// Per layer, `capacity x kv_dim` keys (RoPE applied) and values, position-major.
    pub layers: Vec<KvLayer>,
    kv_type: KvType,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// A cache of `capacity` positions of `n_layers` layers, `kv_dim` values (heads of `head_dim`) each.
    pub fn new(ty: KvType, n_layers: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            layers: (0..n_layers)
                .map(|_| KvLayer::new(ty, capacity, kv_dim, head_dim))
                .collect(),
            kv_type: ty,
            kv_dim,
            capacity,
            len: 0,
        }
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rewinds to `len` positions: forgets those from `len` on (rejected drafts, a shared prefix to
    /// reuse, or 0 to start over). Their rows are overwritten by the next pass, which then computes
    /// exactly what it would have without them. A `len` beyond the current length changes nothing.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keeps an accepted branch of a token tree run from position `pos0`: the rows `pos0 + rows[d]`
    /// move to positions `pos0 + d`, and the cache ends after them. `rows` must increase (a tree path
    /// does: [`crate::model::pass::Tree::path`]) and name filled rows; the moves then never overwrite a
    /// row still to be moved.
    pub fn keep_rows(&mut self, pos0: usize, rows: &[usize]) -> Result<()> {
        if rows.windows(2).any(|w| w[0] >= w[1]) {
            bail!("rows to keep must increase: {rows:?}");
        }
        let end = pos0 + rows.last().map_or(0, |&last| last + 1);
        if end > self.len {
            bail!("rows to keep end at {end}, past the {} filled positions", self.len);
        }
        let kv_dim = self.kv_dim;
        for (d, &r) in rows.iter().enumerate() {
            if r != d {
                for layer in &mut self.layers {
                    layer.copy((pos0 + r) * kv_dim, (pos0 + d) * kv_dim, kv_dim);
                }
            }
        }
        self.len = pos0 + rows.len();
        Ok(())
    }

    /// Stores `k` and `v` (`n x kv_dim`) of layer `layer` at positions `pos..pos + n`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        self.layers[layer].write(pos * self.kv_dim, k, v);
    }

    /// The key and value of layer `layer` at `pos` (`kv_dim` each; dequantized for int8).
    pub fn read(&self, layer: usize, pos: usize, k: &mut [f32], v: &mut [f32]) {
        self.layers[layer].read(pos * self.kv_dim, k, v);
    }

    /// Marks `n` more positions as filled (after every layer stored them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(KvLayer::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_cache_is_smaller_and_reads_back() {
        let (layers, kv_dim, hd, cap) = (2, 96, 48, 10);
        let f = KvCache::new(KvType::F32, layers, kv_dim, hd, cap);
        let mut q = KvCache::new(KvType::Int8, layers, kv_dim, hd, cap);
        assert_eq!(f.bytes(), KvType::F32.bytes_per_position(layers, kv_dim, hd) * cap);
        assert_eq!(q.bytes(), KvType::Int8.bytes_per_position(layers, kv_dim, hd) * cap);
        // 4 bytes vs 1 + 4/48: 3.69x.
        let ratio = f.bytes() as f64 / q.bytes() as f64;
        assert!((ratio - 192.0 / 52.0).abs() < 1e-9, "{ratio}");
        let k: Vec<f32> = (0..2 * kv_dim).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x / 2.0).collect();
        q.store(1, 4, &k, &v);
        let (mut kb, mut vb) = (vec![0.0; kv_dim], vec![0.0; kv_dim]);
        q.read(1, 5, &mut kb, &mut vb);
        for (a, b) in k[kv_dim..].iter().zip(&kb).chain(v[kv_dim..].iter().zip(&vb)) {
            assert!((a - b).abs() <= 3.0 / 254.0 + 1e-6, "{a} read back as {b}");
        }
    }
}
