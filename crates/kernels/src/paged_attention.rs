//! Attention over a paged KV cache (vLLM's PagedAttention): keys and values live in fixed-size blocks
//! of slots, and each sequence names its blocks in a block table, so sequences grow without copying
//! and share prefix blocks. One call serves a whole batch: every query token carries its sequence's
//! block table and its position.
//!
//! The arithmetic is the contiguous kernel's own per-head loop ([`crate::attention`]): only the
//! address of position `p` changes, `table[p / block_size] * block_size + p % block_size`. So a token's
//! output is bit-identical to the contiguous kernel's, whatever the batch or the block layout — the
//! test below holds the two together.

use crate::attention::{attend_heads, tree_row, AttnShape, KvRows};

/// One layer's paged cache: `k` and `v` hold `n_blocks * block_size` slots of `n_kv_heads * head_dim`,
/// f32 by default, or any [`KvRows`] storage (int8: [`crate::attention::kv_int8::KvI8`]).
pub struct PagedKv<'a, K: ?Sized = [f32]> {
    pub k: &'a K,
    pub v: &'a K,
    pub block_size: usize,
}

impl<K: ?Sized> Clone for PagedKv<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: ?Sized> Copy for PagedKv<'_, K> {}

/// A query token: the block table of its sequence, and its position (it attends to `0..=pos`).
#[derive(Clone, Copy, Debug)]
pub struct PagedQuery<'a> {
    pub block_table: &'a [u32],
    pub pos: usize,
    /// Empty for a causal pass. In a token tree ([`crate::attention::TreePaths`]): the query's path, the
    /// chunk-relative indices of its ancestors by depth and then its own; its chunk starts at row and
    /// position `pos + 1 - path.len()`, and its own row is that plus the path's last index.
    pub path: &'a [usize],
}

impl PagedQuery<'_> {
    /// The query's own row (logical slot index) under its block table: its position, unless in a tree.
    #[inline]
    pub fn row(&self) -> usize {
        match self.path.last() {
            Some(&i) => self.pos + 1 - self.path.len() + i,
            None => self.pos,
        }
    }
}

/// Slot of position `pos` under `table`.
#[inline]
pub fn slot(table: &[u32], block_size: usize, pos: usize) -> usize {
    table[pos / block_size] as usize * block_size + pos % block_size
}

/// For each query token `t` (`q` holds `queries.len() x n_heads x head_dim`), causal attention over
/// positions `0..=queries[t].pos` of its sequence (positions of its chunk mapped through its tree
/// path, if it has one); writes `out` in the layout of `q`.
pub fn paged_attention<K: KvRows + ?Sized>(
    q: &[f32],
    kv: PagedKv<K>,
    queries: &[PagedQuery],
    out: &mut [f32],
    s: AttnShape,
) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let s = s.up_to(queries.iter().map(|q| q.pos).max().unwrap_or(0));
    assert_eq!(
        q.len(),
        queries.len() * s.n_heads * hd,
        "query length does not match the query tokens"
    );
    assert_eq!(out.len(), q.len(), "output length does not match the queries");
    // Runs of two or more query tokens of one sequence at consecutive positions (a prompt's chunk)
    // take the query-block kernel where it applies (the same results); the rest go token by token.
    let mut covered = vec![false; queries.len()];
    #[cfg(target_arch = "x86_64")]
    if crate::attention::query_block_applies(&s, 2) {
        let per_token = s.n_heads * hd;
        let mut a = 0;
        while a < queries.len() {
            let first = queries[a];
            let mut b = a + 1;
            while b < queries.len()
                && queries[b].path.is_empty()
                && first.path.is_empty()
                && std::ptr::eq(queries[b].block_table, first.block_table)
                && queries[b].pos == first.pos + (b - a)
            {
                b += 1;
            }
            if b - a >= 2 {
                let (table, bs) = (first.block_table, kv.block_size);
                crate::attention::query_block_attend(
                    &q[a * per_token..b * per_token],
                    kv.k,
                    kv.v,
                    &mut out[a * per_token..b * per_token],
                    s,
                    first.pos,
                    |kvh, p| slot(table, bs, p) * kv_dim + kvh * hd,
                );
                covered[a..b].fill(true);
            }
            a = b;
        }
    }
    // One task per (query token, KV head): the query heads of a GQA group read each row once.
    crate::pool::for_each_chunk_mut(out, group * hd, &|i, o| {
        let (t, kvh) = (i / s.n_kv_heads, i % s.n_kv_heads);
        if covered[t] {
            return;
        }
        let qg = &q[i * group * hd..(i + 1) * group * hd];
        let kv_off = kvh * hd;
        let query = queries[t];
        let visible = s.first_visible(query.pos)..query.pos + 1;
        let (table, bs) = (query.block_table, kv.block_size);
        if query.path.is_empty() {
            let at = |p: usize| slot(table, bs, p) * kv_dim + kv_off;
            attend_heads(qg, kv.k, kv.v, o, hd, visible, scale, at);
        } else {
            let pos0 = query.pos + 1 - query.path.len();
            let at = |p: usize| slot(table, bs, tree_row(query.path, pos0, p)) * kv_dim + kv_off;
            attend_heads(qg, kv.k, kv.v, o, hd, visible, scale, at);
        }
    });
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
                    window: None,
                },
                16,
            ),
            (
                AttnShape {
                    n_heads: 4,
                    n_kv_heads: 4,
                    head_dim: 12,
                    window: Some(20),
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
                        path: &[],
                    });
                }
                q.extend(qi);
            }
            let mut out = vec![0.0; q.len()];
            paged_attention(
                &q,
                PagedKv {
                    k: &pk[..],
                    v: &pv[..],
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

    /// A token tree through a block table gives the contiguous tree kernel's outputs bit for bit.
    #[test]
    fn paged_tree_equals_contiguous_tree() {
        use crate::attention::{attention_tree, TreePaths};
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            window: None,
        };
        let (kv_dim, bs, pos0) = (32usize, 4usize, 13usize);
        // Tokens 0 and 3 are roots; 1 and 2 are siblings under 0; 4 is under 2.
        let idx = [0, 0, 1, 0, 2, 3, 0, 2, 4];
        let start = [0, 1, 3, 5, 6, 9];
        let tree = TreePaths {
            idx: &idx,
            start: &start,
        };
        let rows = pos0 + 5;
        let table: Vec<u32> = (0..rows.div_ceil(bs) as u32).rev().collect();
        let mut seed = 11u64;
        let k: Vec<f32> = (0..rows * kv_dim).map(|_| rnd(&mut seed)).collect();
        let v: Vec<f32> = (0..rows * kv_dim).map(|_| rnd(&mut seed)).collect();
        let (mut pk, mut pv) = (
            vec![0.0; table.len() * bs * kv_dim],
            vec![0.0; table.len() * bs * kv_dim],
        );
        for r in 0..rows {
            let at = slot(&table, bs, r) * kv_dim;
            pk[at..at + kv_dim].copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
            pv[at..at + kv_dim].copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
        }
        let q: Vec<f32> = (0..5 * 64).map(|_| rnd(&mut seed)).collect();
        let mut want = vec![0.0; q.len()];
        attention_tree(&q, &k[..], &v[..], &mut want, s, pos0, tree);
        let queries: Vec<PagedQuery> = (0..5)
            .map(|t| PagedQuery {
                block_table: &table,
                pos: pos0 + tree.path(t).len() - 1,
                path: tree.path(t),
            })
            .collect();
        assert_eq!(queries[4].row(), pos0 + 4);
        let mut out = vec![0.0; q.len()];
        let kv = PagedKv {
            k: &pk[..],
            v: &pv[..],
            block_size: bs,
        };
        paged_attention(&q, kv, &queries, &mut out, s);
        assert!(out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// The int8 cache too: same codes and scales, scattered over blocks, give the contiguous result bit for bit.
    #[test]
    fn paged_int8_equals_contiguous_bitwise() {
        use crate::attention::attention_kv;
        use crate::attention::kv_int8::{quantize_heads, KvI8};
        let s = AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            window: None,
        };
        let (kv_dim, hd, bs, len) = (16, 8, 4, 30usize);
        let mut seed = 3u64;
        let table: Vec<u32> = (0..len.div_ceil(bs) as u32).rev().collect();
        let slots = table.len() * bs;
        let k: Vec<f32> = (0..len * kv_dim).map(|_| rnd(&mut seed)).collect();
        let v: Vec<f32> = (0..len * kv_dim).map(|_| rnd(&mut seed)).collect();
        let quant = |x: &[f32], n: usize| {
            let (mut q, mut sc) = (vec![0i8; n * kv_dim], vec![0.0f32; n * kv_dim / hd]);
            quantize_heads(x, hd, &mut q[..x.len()], &mut sc[..x.len() / hd]);
            (q, sc)
        };
        let ((kq, ks), (vq, vs)) = (quant(&k, len), quant(&v, len));
        // The same rows at their paged slots.
        let (mut pkq, mut pks, mut pvq, mut pvs) = (
            vec![0i8; slots * kv_dim],
            vec![0.0; slots * 2],
            vec![0i8; slots * kv_dim],
            vec![0.0; slots * 2],
        );
        for p in 0..len {
            let at = slot(&table, bs, p);
            pkq[at * kv_dim..][..kv_dim].copy_from_slice(&kq[p * kv_dim..][..kv_dim]);
            pvq[at * kv_dim..][..kv_dim].copy_from_slice(&vq[p * kv_dim..][..kv_dim]);
            pks[at * 2..][..2].copy_from_slice(&ks[p * 2..][..2]);
            pvs[at * 2..][..2].copy_from_slice(&vs[p * 2..][..2]);
        }
        let view = |q, scale| KvI8 { q, scale, head_dim: hd };
        let (ck, cv) = (view(&kq[..], &ks[..]), view(&vq[..], &vs[..]));
        let (pk, pv) = (view(&pkq[..], &pks[..]), view(&pvq[..], &pvs[..]));
        let n = 3;
        let q: Vec<f32> = (0..n * 4 * hd).map(|_| rnd(&mut seed)).collect();
        let mut want = vec![0.0; q.len()];
        attention_kv(&q, &ck, &cv, &mut want, s, len - n);
        let queries: Vec<PagedQuery> = (len - n..len)
            .map(|pos| PagedQuery {
                block_table: &table,
                pos,
                path: &[],
            })
            .collect();
        let mut out = vec![0.0; q.len()];
        let kv = PagedKv {
            k: &pk,
            v: &pv,
            block_size: bs,
        };
        paged_attention(&q, kv, &queries, &mut out, s);
        assert!(out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
