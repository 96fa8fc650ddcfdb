//! The KV cache (lecture §2): the keys and values of every past position, per layer, so that each
//! decode step computes q, k, v for the new token only and attends against what is stored.

pub struct KvCache {
    /// Per layer, `capacity x kv_dim` keys (RoPE applied) and values, position-major.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> KvCache {
        KvCache {
            k: (0..n_layers).map(|_| vec![0.0; capacity * kv_dim]).collect(),
            v: (0..n_layers).map(|_| vec![0.0; capacity * kv_dim]).collect(),
            kv_dim,
            capacity,
            len: 0,
        }
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

    /// Forgets positions from `len` on (to reuse a shared prefix, or start over with 0).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Stores `k` and `v` (`n x kv_dim`) of layer `layer` at positions `pos..pos + n`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (a, b) = (pos * self.kv_dim, pos * self.kv_dim + k.len());
        self.k[layer][a..b].copy_from_slice(k);
        self.v[layer][a..b].copy_from_slice(v);
    }

    /// Marks `n` more positions as filled (after every layer stored them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.capacity);
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.capacity * self.kv_dim * std::mem::size_of::<f32>()
    }
}
