//! Attention over a paged KV cache (vLLM's PagedAttention): keys and values live in fixed-size blocks
//! of slots, and each sequence names its blocks in a block table, so sequences grow without copying
//! and share prefix blocks. One call serves a whole batch: every query token carries its sequence's
//! block table and its position.
//!
//! The arithmetic is that of [`crate::attention::attention`], step for step (tiles of 64 positions
//! counted from position 0, online softmax, the same dot product and accumulation order): only the
//! address of position `p` changes, `table[p / block_size] * block_size + p % block_size`. So a token's
//! output is bit-identical to the contiguous kernel's, whatever the batch or the block layout — the
//! test below holds the two together.

use crate::attention::AttnShape;
use rayon::prelude::*;

/// Keys per tile (as the contiguous kernel).
const TILE: usize = 64;

/// One layer's paged cache: `k` and `v` hold `n_blocks * block_size` slots of `n_kv_heads * head_dim`.
#[derive(Clone, Copy)]
pub struct PagedKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
}

/// A query token: the block table of its sequence, and its position (it attends to `0..=pos`).
#[derive(Clone, Copy, Debug)]
pub struct PagedQuery<'a> {
    pub block_table: &'a [u32],
    pub pos: usize,
}

/// Slot of position `pos` under `table`.
#[inline]
pub fn slot(table: &[u32], block_size: usize, pos: usize) -> usize {
    table[pos / block_size] as usize * block_size + pos % block_size
}

/// For each query token `t` (`q` holds `queries.len() x n_heads x head_dim`), causal attention over
/// positions `0..=queries[t].pos` of its sequence; writes `out` in the layout of `q`.
pub fn paged_attention(q: &[f32], kv: PagedKv, queries: &[PagedQuery], out: &mut [f32], s: AttnShape) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    assert_eq!(
        q.len(),
        queries.len() * s.n_heads * hd,
        "query length does not match the query tokens"
    );
    assert_eq!(out.len(), q.len(), "output length does not match the queries");
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / s.n_heads, i % s.n_heads);
        let qh = &q[i * hd..(i + 1) * hd];
        let kv_off = (h / group) * hd;
        attend_one(qh, kv, queries[t], o, kv_dim, kv_off, scale);
    });
}

/// One query head against positions `0..=query.pos`.
fn attend_one(q: &[f32], kv: PagedKv, query: PagedQuery, out: &mut [f32], kv_dim: usize, off: usize, scale: f32) {
    let hd = q.len();
    let len = query.pos + 1;
    let at = |p: usize| slot(query.block_table, kv.block_size, p) * kv_dim + off;
    out.fill(0.0);
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f32;
    let mut scores = [0.0f32; TILE];
    for start in (0..len).step_by(TILE) {
        let end = (start + TILE).min(len);
        let tile = &mut scores[..end - start];
        let mut tile_max = f32::NEG_INFINITY;
        for (j, sc) in tile.iter_mut().enumerate() {
            let kj = &kv.k[at(start + j)..][..hd];
            *sc = dot(q, kj) * scale;
            tile_max = tile_max.max(*sc);
        }
        // Rescale what was accumulated under the old maximum.
        if tile_max > max {
            let c = (max - tile_max).exp();
            sum *= c;
            out.iter_mut().for_each(|o| *o *= c);
            max = tile_max;
        }
        for (j, &sc) in tile.iter().enumerate() {
            let p = (sc - max).exp();
            sum += p;
            axpy(out, p, &kv.v[at(start + j)..][..hd]);
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Dot product in eight independent lanes, as the contiguous kernel computes it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a * x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::attention;

    fn rnd(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
    }

    /// Two sequences scattered over shuffled blocks give the contiguous kernel's outputs bit for bit.
    #[test]
    fn paged_equals_contiguous_bitwise() {
        for (s, bs) in [
            (
                AttnShape {
                    n_heads: 6,
                    n_kv_heads: 2,
                    head_dim: 16,
                },
                16,
            ),
            (
                AttnShape {
                    n_heads: 4,
                    n_kv_heads: 4,
                    head_dim: 12,
                },
                5,
            ),
        ] {
            let kv_dim = s.n_kv_heads * s.head_dim;
            let q_dim = s.n_heads * s.head_dim;
            let mut seed = 7u64;
            let lens = [150usize, 37];
            let n_blocks = lens.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 3;
            // Block ids handed out in a scrambled order.
            let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
            ids.reverse();
            ids.swap(1, 4);
            let mut tables = Vec::new();
            let mut next = 0;
            for &l in &lens {
                tables.push(ids[next..next + l.div_ceil(bs)].to_vec());
                next += l.div_ceil(bs);
            }
            let mut pk = vec![0.0f32; n_blocks * bs * kv_dim];
            let mut pv = pk.clone();
            let mut conts = Vec::new();
            for (&l, table) in lens.iter().zip(&tables) {
                let k: Vec<f32> = (0..l * kv_dim).map(|_| rnd(&mut seed)).collect();
                let v: Vec<f32> = (0..l * kv_dim).map(|_| rnd(&mut seed)).collect();
                for p in 0..l {
                    let at = slot(table, bs, p) * kv_dim;
                    pk[at..at + kv_dim].copy_from_slice(&k[p * kv_dim..(p + 1) * kv_dim]);
                    pv[at..at + kv_dim].copy_from_slice(&v[p * kv_dim..(p + 1) * kv_dim]);
                }
                conts.push((k, v));
            }
            // Last 3 positions of sequence 0 (a prefill chunk) and the last of sequence 1 (a decode).
            let mut queries = Vec::new();
            let mut q = Vec::new();
            let mut want = Vec::new();
            for (i, n) in [(0usize, 3usize), (1, 1)] {
                let pos0 = lens[i] - n;
                let qi: Vec<f32> = (0..n * q_dim).map(|_| rnd(&mut seed)).collect();
                let mut o = vec![0.0; qi.len()];
                attention(&qi, &conts[i].0, &conts[i].1, &mut o, s, pos0);
                want.extend(o);
                for t in 0..n {
                    queries.push(PagedQuery {
                        block_table: &tables[i],
                        pos: pos0 + t,
                    });
                }
                q.extend(qi);
            }
            let mut out = vec![0.0; q.len()];
            paged_attention(
                &q,
                PagedKv {
                    k: &pk,
                    v: &pv,
                    block_size: bs,
                },
                &queries,
                &mut out,
                s,
            );
            assert!(
                out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "paged != contiguous"
            );
        }
    }
}
