//! Causal multi-head attention with grouped KV heads, FlashAttention-style (lecture §4): keys and values
//! are visited in tiles, and a running maximum and running sum (online softmax) rescale the partial
//! output, so the T x T score matrix is never materialised — each query keeps one tile of scores.
//!
//! The loop is generic over how a cached key or value row is stored ([`KvRows`]): f32 rows here, int8
//! rows with a scale per position and head in [`kv_int8`], dequantized inside the dot product and the
//! weighted sum — one online-softmax loop for every cache type.
//!
//! Prefill on AVX-512 (causal, no window, head size a multiple of 16) takes `query_block`: the query
//! heads of eight consecutive tokens share each tile of keys, transposed so sixteen keys' scores are
//! plain vector multiply-adds; the same operations per result, so the same bits as the loop here
//! (`active_level_equals_scalar_bit_for_bit`, f32 and int8 rows).

pub mod kv_int8;
#[cfg(target_arch = "x86_64")]
mod query_block;
#[cfg(target_arch = "x86_64")]
pub(crate) use query_block::{applies as query_block_applies, attend as query_block_attend};

/// Keys per tile.
const TILE: usize = 64;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding-window attention (Mistral): a query at `pos` sees only the last `window` positions,
    /// `pos + 1 - window ..= pos`. `None`: all positions `0..=pos`.
    pub window: Option<usize>,
}

impl AttnShape {
    /// First position a query at `pos` attends to.
    #[inline]
    pub fn first_visible(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    /// The shape for queries at positions up to `last`: without its window when the window does not
    /// bind there (every such query sees from position 0 either way: the same keys, the same results),
    /// so that a prompt no longer than the window takes the kernels written for unwindowed attention
    /// (Gemma 3's local layers, window 512, in a 512-token prefill).
    pub fn up_to(self, last: usize) -> AttnShape {
        match self.window {
            Some(w) if last < w => AttnShape { window: None, ..self },
            _ => self,
        }
    }
}

/// Cached keys or values of one layer as attention reads them: the `q.len()` values of one head of one
/// position start at element `at` (a multiple of the head size).
pub trait KvRows: Sync {
    /// The eight stored values from element `at`, as f32 (codes, before the row's scale).
    fn load8(&self, at: usize) -> [f32; 8];
    /// The stored value at element `at`, as f32.
    fn load1(&self, at: usize) -> f32;
    /// The scale of the row holding element `at` (1 for f32 rows: multiplying by it is exact).
    fn row_scale(&self, at: usize) -> f32;
    /// `out += a * row(at)`.
    fn axpy(&self, out: &mut [f32], a: f32, at: usize);
    /// Asks the CPU to start loading the `len` values from element `at` into the cache (a hint).
    fn prefetch(&self, at: usize, len: usize);

    /// `q · row(at)`.
    #[inline(always)]
    fn dot(&self, q: &[f32], at: usize) -> f32 {
        // SAFETY: `AVX` is false (no vector instructions).
        unsafe { dots::<Self, 1, false>(self, q, q.len(), at)[0] }
    }
}

/// `q_h · row(at)` for the `N` heads `q_h = q[h * hd..(h + 1) * hd]`: the row is loaded once for all of
/// them and their `N` accumulators are independent chains. Each head's products are summed in eight
/// lanes (fused multiply-adds, lane `i` takes elements `i`, `i + 8`, ...), then
/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then the tail: the same operations in the same
/// order for every `N` and on every SIMD level. `AVX` (only inside AVX-compiled callers): the final
/// sums of four or eight heads run as vector shuffles and adds, the same additions in the same order.
///
/// # Safety
/// With `AVX`, the CPU must have AVX2 and FMA (the caller is compiled for them).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn dots<K: KvRows + ?Sized, const N: usize, const AVX: bool>(
    k: &K,
    q: &[f32],
    hd: usize,
    at: usize,
) -> [f32; N] {
    let mut acc = [[0.0f32; 8]; N];
    let body = hd - hd % 8;
    assert!(q.len() >= N * hd);
    for c in (0..body).step_by(8) {
        let x = k.load8(at + c);
        for h in 0..N {
            // SAFETY: h * hd + c + 8 <= N * hd <= q.len() (no bounds checks in the hottest loop).
            let qh = unsafe { &*(q.as_ptr().add(h * hd + c) as *const [f32; 8]) };
            for i in 0..8 {
                acc[h][i] = qh[i].mul_add(x[i], acc[h][i]);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if AVX && body == hd && (N == 3 || N == 4 || N == 8) {
        // SAFETY: `AVX` is set only by callers compiled for AVX2 on a CPU that has it.
        return unsafe { tree_sums(&acc, [k.row_scale(at); 8]) };
    }
    let mut out = [0.0f32; N];
    for h in 0..N {
        let a = &acc[h];
        let tail: f32 = (body..hd).map(|i| q[h * hd + i] * k.load1(at + i)).sum();
        out[h] = (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail) * k.row_scale(at);
    }
    out
}

/// [`dots`] of `H` (3 or 4) heads against the two rows at `at[0]` and `at[1]`: each query chunk is
/// loaded once for both rows (the same operations per head and row as `dots`). Only where `dots` takes
/// the vector sums (`AVX`, head size a multiple of 8); elsewhere it is `dots` row by row.
///
/// # Safety
/// As [`dots`].
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn dots_x2<K: KvRows + ?Sized, const H: usize, const AVX: bool>(
    k: &K,
    q: &[f32],
    hd: usize,
    at: [usize; 2],
) -> [[f32; H]; 2] {
    const { assert!(H == 3 || H == 4) };
    #[cfg(target_arch = "x86_64")]
    if AVX && hd.is_multiple_of(8) {
        let mut acc = [[0.0f32; 8]; 8];
        assert!(q.len() >= H * hd);
        for c in (0..hd).step_by(8) {
            let x = [k.load8(at[0] + c), k.load8(at[1] + c)];
            for h in 0..H {
                // SAFETY: h * hd + c + 8 <= H * hd <= q.len().
                let qh = unsafe { &*(q.as_ptr().add(h * hd + c) as *const [f32; 8]) };
                for r in 0..2 {
                    for i in 0..8 {
                        acc[4 * r + h][i] = qh[i].mul_add(x[r][i], acc[4 * r + h][i]);
                    }
                }
            }
        }
        let (s0, s1) = (k.row_scale(at[0]), k.row_scale(at[1]));
        // SAFETY: `AVX` is set only by callers compiled for AVX2 on a CPU that has it.
        let d = unsafe { tree_sums(&acc, [s0, s0, s0, s0, s1, s1, s1, s1]) };
        return [std::array::from_fn(|h| d[h]), std::array::from_fn(|h| d[4 + h])];
    }
    [dots::<K, H, AVX>(k, q, hd, at[0]), dots::<K, H, AVX>(k, q, hd, at[1])]
}

impl KvRows for [f32] {
    #[inline(always)]
    fn load8(&self, at: usize) -> [f32; 8] {
        self[at..at + 8].try_into().unwrap()
    }

    #[inline(always)]
    fn load1(&self, at: usize) -> f32 {
        self[at]
    }

    #[inline(always)]
    fn row_scale(&self, _at: usize) -> f32 {
        1.0
    }

    #[inline(always)]
    fn prefetch(&self, at: usize, len: usize) {
        crate::simd::prefetch_bytes(self[at..].as_ptr().cast(), len * 4);
    }

    #[inline(always)]
    fn axpy(&self, out: &mut [f32], a: f32, at: usize) {
        let x = &self[at..][..out.len()];
        for (o, &v) in out.iter_mut().zip(x) {
            *o = a.mul_add(v, *o);
        }
    }
}

/// For each of the `n = q.len() / (n_heads * head_dim)` query tokens, the first at position `pos0`,
/// attends over the cached positions `0..=pos` (causal) of `k` and `v` (position-major,
/// `n_kv_heads * head_dim` per position) and writes `out` (same layout as `q`).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape, pos0: usize) {
    attention_kv(q, k, v, out, s, pos0)
}

/// [`attention`] over keys and values stored in any [`KvRows`] form (f32, int8, ...). The query heads
/// that share a KV head (GQA) are one task: each cached key and value row is read once for all of them
/// (a 512-token prefill otherwise streams every layer's cache once per query head).
pub fn attention_kv<K: KvRows + ?Sized>(q: &[f32], k: &K, v: &K, out: &mut [f32], s: AttnShape, pos0: usize) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let s = s.up_to((pos0 + q.len() / (s.n_heads * hd)).saturating_sub(1));
    #[cfg(target_arch = "x86_64")]
    if query_block::applies(&s, q.len() / (s.n_heads * hd)) {
        // Prefill on AVX-512: blocks of query tokens share each tile of keys (same results).
        return query_block::attend(q, k, v, out, s, pos0, |kvh, p| p * kv_dim + kvh * hd);
    }
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    crate::pool::for_each_chunk_mut(out, group * hd, &|i, o| {
        let (t, kvh) = (i / s.n_kv_heads, i % s.n_kv_heads);
        let qg = &q[i * group * hd..(i + 1) * group * hd];
        let kv_off = kvh * hd;
        let pos = pos0 + t;
        attend_heads(qg, k, v, o, hd, s.first_visible(pos)..pos + 1, scale, |p| {
            p * kv_dim + kv_off
        });
    });
}

/// Which of a pass's own tokens each query token sees when they form a tree (speculative decoding
/// verifies several drafts in one pass) rather than a causal run. Query `t`'s path lists, by depth, the
/// pass indices of its ancestors and then `t` itself. The pass's tokens are stored at rows
/// `pos0 + index` (siblings cannot share a row), while `t` sits at position `pos0 + depth` (its RoPE
/// position): it sees the cached positions before `pos0` and, as position `pos0 + d`, the row of its
/// path's depth-`d` token. So it attends exactly as the same branch, run alone as a causal pass, would:
/// the same rows in the same order through the same loop, bit for bit.
#[derive(Clone, Copy, Debug)]
pub struct TreePaths<'a> {
    /// The paths one after the other.
    pub idx: &'a [usize],
    /// Token `t`'s path is `idx[start[t]..start[t + 1]]` (never empty).
    pub start: &'a [usize],
}

impl<'a> TreePaths<'a> {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `t`'s path: its ancestors by depth, then itself.
    #[inline]
    pub fn path(&self, t: usize) -> &'a [usize] {
        &self.idx[self.start[t]..self.start[t + 1]]
    }
}

/// Row of position `p` for a query whose path is `path`, the pass starting at row and position `pos0`.
#[inline(always)]
pub fn tree_row(path: &[usize], pos0: usize, p: usize) -> usize {
    if p < pos0 {
        p
    } else {
        pos0 + path[p - pos0]
    }
}

/// [`attention_kv`] for a pass whose tokens form a tree ([`TreePaths`]): query `t` attends to the cached
/// positions before `pos0` and to its path, at position `pos0 + depth`.
#[allow(clippy::too_many_arguments)]
pub fn attention_tree<K: KvRows + ?Sized>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    s: AttnShape,
    pos0: usize,
    tree: TreePaths,
) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    assert_eq!(
        q.len(),
        tree.len() * s.n_heads * hd,
        "query length does not match the tree"
    );
    crate::pool::for_each_chunk_mut(out, group * hd, &|i, o| {
        let (t, kvh) = (i / s.n_kv_heads, i % s.n_kv_heads);
        let qg = &q[i * group * hd..(i + 1) * group * hd];
        let kv_off = kvh * hd;
        let path = tree.path(t);
        let pos = pos0 + path.len() - 1;
        attend_heads(qg, k, v, o, hd, s.first_visible(pos)..pos + 1, scale, |p| {
            tree_row(path, pos0, p) * kv_dim + kv_off
        });
    });
}

/// Query heads attended together by one pass over the positions (larger groups take several passes).
const MAX_GROUP: usize = 16;

/// The `q.len() / hd` query heads that read the same keys and values (one head, or a GQA group), against
/// the positions `visible`; the key and value row of position `p` start at `at(p)` in `k` and `v` (a
/// contiguous cache, or a block table in the paged kernel). Tiled online softmax, each row loaded once
/// for up to [`MAX_GROUP`] heads; every head goes through the same operations in the same order, so
/// its result does not depend on how many heads share the pass. On x86 with AVX2 the loops are compiled
/// for it (8-wide vectors, same operations and order, so every level gives the same result).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn attend_heads<K: KvRows + ?Sized>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    hd: usize,
    visible: std::ops::Range<usize>,
    scale: f32,
    at: impl Fn(usize) -> usize,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::Simd::active(), crate::Simd::Avx2 | crate::Simd::Avx512) {
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<K: KvRows + ?Sized>(
            q: &[f32],
            k: &K,
            v: &K,
            out: &mut [f32],
            hd: usize,
            visible: std::ops::Range<usize>,
            scale: f32,
            at: impl Fn(usize) -> usize,
        ) {
            passes::<K, true>(q, k, v, out, hd, visible, scale, at)
        }
        // SAFETY: the CPU has AVX2 and FMA (that is what the active level means).
        return unsafe { avx2(q, k, v, out, hd, visible, scale, at) };
    }
    // SAFETY: `AVX` is false (no vector instructions).
    unsafe { passes::<K, false>(q, k, v, out, hd, visible, scale, at) }
}

/// # Safety
/// With `AVX`, the CPU must have AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn passes<K: KvRows + ?Sized, const AVX: bool>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    hd: usize,
    visible: std::ops::Range<usize>,
    scale: f32,
    at: impl Fn(usize) -> usize,
) {
    for (qs, os) in q.chunks(MAX_GROUP * hd).zip(out.chunks_mut(MAX_GROUP * hd)) {
        group_impl::<K, AVX>(qs, k, v, os, hd, visible.clone(), scale, &at);
    }
}

/// # Safety
/// With `AVX`, the CPU must have AVX2 and FMA.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
unsafe fn group_impl<K: KvRows + ?Sized, const AVX: bool>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    hd: usize,
    visible: std::ops::Range<usize>,
    scale: f32,
    at: impl Fn(usize) -> usize,
) {
    let g = q.len() / hd;
    let len = visible.end;
    out.fill(0.0);
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0.0f32; MAX_GROUP];
    let mut scores = [[0.0f32; TILE]; MAX_GROUP];
    for start in visible.step_by(TILE) {
        let end = (start + TILE).min(len);
        let mut j = 0;
        while j < end - start {
            let a = at(start + j);
            if start + j + AHEAD < len {
                k.prefetch(at(start + j + AHEAD), hd);
            }
            // This tile's value rows, read once the tile's scores are known.
            v.prefetch(a, hd);
            // Groups of 4k or 4k + 3 heads, with the vector sums: two rows at a time, four (then three)
            // heads at a time (each query chunk loaded once for both rows).
            if AVX && hd.is_multiple_of(8) && matches!(g % 4, 0 | 3) && j + 1 < end - start {
                if start + j + 1 + AHEAD < len {
                    k.prefetch(at(start + j + 1 + AHEAD), hd);
                }
                let a1 = at(start + j + 1);
                v.prefetch(a1, hd);
                let mut h = 0;
                while h + 4 <= g {
                    let d = dots_x2::<K, 4, AVX>(k, &q[h * hd..], hd, [a, a1]);
                    put(&mut scores[h..], j, d[0], scale);
                    put(&mut scores[h..], j + 1, d[1], scale);
                    h += 4;
                }
                if h < g {
                    let d = dots_x2::<K, 3, AVX>(k, &q[h * hd..], hd, [a, a1]);
                    put(&mut scores[h..], j, d[0], scale);
                    put(&mut scores[h..], j + 1, d[1], scale);
                }
                j += 2;
                continue;
            }
            // Heads eight, four, two or one at a time, each row loaded once per batch of heads.
            let mut h = 0;
            while h < g {
                let qh = &q[h * hd..];
                let n = match g - h {
                    8.. => put(&mut scores[h..], j, dots::<K, 8, AVX>(k, qh, hd, a), scale),
                    4..=7 => put(&mut scores[h..], j, dots::<K, 4, AVX>(k, qh, hd, a), scale),
                    3 => put(&mut scores[h..], j, dots::<K, 3, AVX>(k, qh, hd, a), scale),
                    2 => put(&mut scores[h..], j, dots::<K, 2, AVX>(k, qh, hd, a), scale),
                    _ => put(&mut scores[h..], j, dots::<K, 1, AVX>(k, qh, hd, a), scale),
                };
                h += n;
            }
            j += 1;
        }
        for h in 0..g {
            let sc = &mut scores[h][..end - start];
            let tile_max = max_of(sc);
            // Rescale what was accumulated under the old maximum.
            if tile_max > max[h] {
                let c = (max[h] - tile_max).exp();
                sum[h] *= c;
                out[h * hd..(h + 1) * hd].iter_mut().for_each(|o| *o *= c);
                max[h] = tile_max;
            }
            sum[h] += exp_shifted(sc, max[h]);
        }
        // Head by head, so each head's output row stays in registers (common head sizes) or L1.
        for (h, oh) in out[..g * hd].chunks_exact_mut(hd).enumerate() {
            let p = &scores[h][..end - start];
            match hd {
                64 => weighted_rows::<K, 64>(v, oh, p, |j| at(start + j)),
                128 => weighted_rows::<K, 128>(v, oh, p, |j| at(start + j)),
                _ => (0..p.len()).for_each(|j| v.axpy(oh, p[j], at(start + j))),
            }
        }
    }
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        let inv = 1.0 / sum[h];
        oh.iter_mut().for_each(|o| *o *= inv);
    }
}

/// `out += Σ_j p[j] * row(at(j))` with `out` held in a local array of the constant head size `HD`
/// (registers, not memory, across the rows); the same operations as [`KvRows::axpy`] row after row.
#[inline(always)]
fn weighted_rows<K: KvRows + ?Sized, const HD: usize>(v: &K, out: &mut [f32], p: &[f32], at: impl Fn(usize) -> usize) {
    let mut acc = [0.0f32; HD];
    acc.copy_from_slice(out);
    for (j, &pj) in p.iter().enumerate() {
        v.axpy(&mut acc, pj, at(j));
    }
    out.copy_from_slice(&acc);
}

/// `s[i] = exp(s[i] - m)` (all `s[i] <= m`), returning their sum: eight lanes at a time with the same
/// operations on every target (Cephes' single-precision `exp`: `2^n e^r`, `|r| <= ln 2 / 2`, a degree-6
/// polynomial; within 2 ulp of `f32::exp`), so every SIMD level gives the same result.
#[inline(always)]
fn exp_shifted(s: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let tail = exp_shifted_from(s, m, &mut acc);
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`exp_shifted`]'s element loop from lane sums `acc`: whole eights of `s` into the lanes, returning
/// the sum of the tail.
#[inline(always)]
fn exp_shifted_from(s: &mut [f32], m: f32, acc: &mut [f32; 8]) -> f32 {
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        // 1.5 * 2^23: adding it rounds to an integer.
        const MAGIC: f32 = 12_582_912.0;
        // Below -87.3 the result would be subnormal (< 1.2e-38): 0 instead.
        let (tiny, x) = (x < -87.3, x.max(-87.3));
        let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
        let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = p * r + c;
        }
        let e = p * r * r + r + 1.0;
        let y = e * f32::from_bits(((n as i32 + 127) as u32) << 23);
        if tiny {
            0.0
        } else {
            y
        }
    }
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        tail += *x;
    }
    tail
}

/// The largest of `s` (NaNs ignored; `-inf` for none): eight running maxima, lane `i` over elements
/// `i, i + 8, ...` (vector instructions; a single chain of scalar maxima waited on each one's latency),
/// then the eight. The maximum of a set does not depend on the order it is taken in.
#[inline(always)]
pub(crate) fn max_of(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = m[i].max(c[i]);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    m.iter().fold(tail, |a, &x| a.max(x))
}

/// Key rows ahead of the one being read that the score loop prefetches (cached rows of successive
/// positions are a KV-row stride apart, or in another block of a paged cache).
const AHEAD: usize = 4;

/// `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))` of each of the `N` (3, 4 or 8) lane sums, times
/// its `row_scale`, as [`dots`] computes it head by head: the lane halves of two heads added in one vector
/// (`a0+a4 .. a3+a7`), then two horizontal adds pair them as the scalar tree does.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tree_sums<const N: usize>(acc: &[[f32; 8]; N], row_scale: [f32; 8]) -> [f32; N] {
    use std::arch::x86_64::*;
    let a = |h: usize| _mm256_loadu_ps(acc[h.min(N - 1)].as_ptr());
    let halves = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(x, y),
            _mm256_permute2f128_ps::<0x31>(x, y),
        )
    };
    // Per 128-bit half: heads 0, 2 (low) and 1, 3 (high), each as its two pair sums.
    let h0123 = _mm256_hadd_ps(halves(a(0), a(1)), halves(a(2), a(3)));
    let h4567 = match N {
        8 => _mm256_hadd_ps(halves(a(4), a(5)), halves(a(6), a(7))),
        _ => h0123,
    };
    // [h0, h2, h4, h6 | h1, h3, h5, h7] (N = 4: [h0, h2, h0, h2 | h1, h3, h1, h3]).
    let sc = |h: usize| row_scale[h % N];
    let r = _mm256_mul_ps(
        _mm256_hadd_ps(h0123, h4567),
        _mm256_setr_ps(sc(0), sc(2), sc(4), sc(6), sc(1), sc(3), sc(5), sc(7)),
    );
    let mut t = [0.0f32; 8];
    _mm256_storeu_ps(t.as_mut_ptr(), r);
    std::array::from_fn(|h| t[(h % 2) * 4 + h / 2])
}

/// `scores[h][j] = d[h] * scale` for the `N` heads of `d`; returns `N`.
#[inline(always)]
fn put<const N: usize>(scores: &mut [[f32; TILE]], j: usize, d: [f32; N], scale: f32) -> usize {
    for (row, d) in scores.iter_mut().zip(d) {
        row[j] = d * scale;
    }
    N
}

/// The textbook version — scores for all positions, softmax, weighted sum — as a reference in tests.
pub fn attention_naive(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], s: AttnShape, pos0: usize) {
    let hd = s.head_dim;
    let kv_dim = s.n_kv_heads * hd;
    let group = s.n_heads / s.n_kv_heads;
    for (i, o) in out.chunks_exact_mut(hd).enumerate() {
        let (t, h) = (i / s.n_heads, i % s.n_heads);
        let qh = &q[i * hd..(i + 1) * hd];
        let off = (h / group) * hd;
        let pos = pos0 + t;
        let first = s.first_visible(pos);
        let mut p: Vec<f32> = (first..=pos)
            .map(|j| {
                qh.iter()
                    .zip(&k[j * kv_dim + off..][..hd])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    / (hd as f32).sqrt()
            })
            .collect();
        crate::ops::softmax(&mut p);
        o.fill(0.0);
        for (j, &pj) in (first..).zip(p.iter()) {
            for (x, &vv) in o.iter_mut().zip(&v[j * kv_dim + off..][..hd]) {
                *x += pj * vv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_equals_naive() {
        // 154: binds at the last query only (position 154 sees from 1); 155 and up: never.
        for window in [None, Some(1), Some(7), Some(100), Some(154), Some(155), Some(1000)] {
            let s = AttnShape {
                n_heads: 6,
                n_kv_heads: 2,
                head_dim: 16,
                window,
            };
            let (n, pos0) = (5, 150);
            let len = pos0 + n;
            let mut seed = 1u64;
            let mut rnd = || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            };
            let q: Vec<f32> = (0..n * 6 * 16).map(|_| rnd()).collect();
            let k: Vec<f32> = (0..len * 2 * 16).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..len * 2 * 16).map(|_| rnd()).collect();
            let (mut a, mut b) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            attention(&q, &k, &v, &mut a, s, pos0);
            attention_naive(&q, &k, &v, &mut b, s, pos0);
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(err < 1e-5, "window {window:?}: max abs difference {err}");
        }
    }

    /// A window that binds no query of a pass (`AttnShape::up_to`) leaves the results of no window, bit
    /// for bit (the prefill kernel for unwindowed attention takes the pass); one that binds the last
    /// query does not.
    #[test]
    fn a_window_that_does_not_bind_is_no_window() {
        let shape = |window| AttnShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
            window,
        };
        let (n, pos0) = (24, 40);
        let len = pos0 + n;
        let mut seed = 3u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let q: Vec<f32> = (0..n * 4 * 32).map(|_| rnd()).collect();
        let k: Vec<f32> = (0..len * 2 * 32).map(|_| rnd()).collect();
        let v: Vec<f32> = (0..len * 2 * 32).map(|_| rnd()).collect();
        let run = |window| {
            let mut o = vec![0.0; q.len()];
            attention(&q, &k, &v, &mut o, shape(window), pos0);
            o
        };
        let none = run(None);
        let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&run(Some(len))), bits(&none));
        assert_eq!(bits(&run(Some(len + 100))), bits(&none));
        assert_ne!(
            bits(&run(Some(len - 1))),
            bits(&none),
            "the last query loses position 0"
        );
        assert_eq!(shape(Some(64)).up_to(63).window, None);
        assert_eq!(shape(Some(64)).up_to(64).window, Some(64));
    }

    /// The active SIMD level (AVX2 here when the CPU has it: vector loops, vector sums of 4 and 8 heads)
    /// gives bit for bit the scalar loops' result, for groups of 8, 6 (4 + 2), 4, 3, 7 (4 + 3), 5 and 1 heads.
    #[test]
    fn active_level_equals_scalar_bit_for_bit() {
        for (heads, kv, hd) in [
            (32, 4, 64),
            (12, 2, 64),
            (8, 2, 32),
            (4, 4, 128),
            (6, 1, 24),
            (9, 3, 64),
            (14, 2, 32),
            (5, 1, 32),
        ] {
            let (n, hd_all) = (150, heads * hd);
            let kv_dim = kv * hd;
            let mut seed = 7u64;
            let mut rnd = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
                    })
                    .collect()
            };
            let (q, k, v) = (rnd(n * hd_all), rnd(n * kv_dim), rnd(n * kv_dim));
            let s = AttnShape {
                n_heads: heads,
                n_kv_heads: kv,
                head_dim: hd,
                window: None,
            };
            // The same keys and values as int8 rows with a scale per head (`--kv-type int8`).
            let int8 = |x: &[f32]| {
                let mut c = vec![0i8; x.len()];
                let mut sc = vec![0.0f32; x.len() / hd];
                kv_int8::quantize_heads(x, hd, &mut c, &mut sc);
                (c, sc)
            };
            let ((kq, ks), (vq, vs)) = (int8(&k), int8(&v));
            let (k8, v8) = (
                kv_int8::KvI8 {
                    q: &kq,
                    scale: &ks,
                    head_dim: hd,
                },
                kv_int8::KvI8 {
                    q: &vq,
                    scale: &vs,
                    head_dim: hd,
                },
            );
            let mut fast = vec![0.0; q.len()];
            attention(&q, &k, &v, &mut fast, s, 0);
            let mut fast8 = vec![0.0; q.len()];
            attention_kv(&q, &k8, &v8, &mut fast8, s, 0);
            let group = heads / kv;
            let scale = 1.0 / (hd as f32).sqrt();
            for t in 0..n {
                for kvh in 0..kv {
                    let i = t * kv + kvh;
                    let qg = &q[i * group * hd..(i + 1) * group * hd];
                    let at = |p| p * kv_dim + kvh * hd;
                    let (mut o, mut o8) = (vec![0.0; group * hd], vec![0.0; group * hd]);
                    // SAFETY: `AVX` is false.
                    unsafe {
                        passes::<[f32], false>(qg, &k[..], &v[..], &mut o, hd, 0..t + 1, scale, at);
                        passes::<kv_int8::KvI8, false>(qg, &k8, &v8, &mut o8, hd, 0..t + 1, scale, at);
                    };
                    for (o, fast, what) in [(&o, &fast, "f32"), (&o8, &fast8, "int8")] {
                        let got = &fast[i * group * hd..(i + 1) * group * hd];
                        assert!(
                            o.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{heads}/{kv} heads, hd {hd}, token {t}, {what} rows: {} differs from scalar",
                            crate::Simd::active().name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_shifted_within_two_ulp() {
        let mut s: Vec<f32> = (0..2000).map(|i| -90.0 * i as f32 / 1999.0).collect();
        s.extend([0.0, -1e-8, -0.5, -0.3465736, -std::f32::consts::LN_2, -1.0397208, -20.5]);
        let want: Vec<f32> = s.iter().map(|&x| (x - 0.25f32).exp()).collect();
        let sum = exp_shifted(&mut s, 0.25);
        for (x, w) in s.iter().zip(&want) {
            if *w < 2.0 * f32::MIN_POSITIVE {
                assert!(*x < 2.0 * f32::MIN_POSITIVE, "exp: got {x}, want {w}");
                continue;
            }
            let ulp = (x.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp: got {x}, want {w} ({ulp} ulp)");
        }
        let exact: f64 = want.iter().map(|&w| w as f64).sum();
        assert!((sum as f64 - exact).abs() < 1e-5 * exact, "sum {sum} vs {exact}");
    }

    /// Each token of a tree attends as its branch run alone would, bit for bit (with and without a
    /// window), and not as a causal pass over the same rows (the mask is not ignored).
    #[test]
    fn tree_equals_branch_alone_bit_for_bit() {
        for window in [None, Some(16)] {
            let s = AttnShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 16,
                window,
            };
            let (kv_dim, q_dim, pos0) = (32, 64, 70);
            // Tokens 0 and 3 are roots; 1 and 2 are siblings under 0; 4 is under 2.
            let idx = [0, 0, 1, 0, 2, 3, 0, 2, 4];
            let start = [0, 1, 3, 5, 6, 9];
            let tree = TreePaths {
                idx: &idx,
                start: &start,
            };
            let mut seed = 5u64;
            let mut rnd = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
                    })
                    .collect()
            };
            let (k, v, q) = (rnd((pos0 + 5) * kv_dim), rnd((pos0 + 5) * kv_dim), rnd(5 * q_dim));
            let mut out = vec![0.0; q.len()];
            attention_tree(&q, &k[..], &v[..], &mut out, s, pos0, tree);
            let mut causal = vec![0.0; q.len()];
            attention(&q, &k, &v, &mut causal, s, pos0);
            for t in 0..5 {
                // The branch alone: the cached rows, then its path's rows at consecutive positions.
                let path = tree.path(t);
                let rows: Vec<usize> = (0..pos0).chain(path.iter().map(|&i| pos0 + i)).collect();
                let gather = |x: &[f32]| -> Vec<f32> {
                    rows.iter()
                        .flat_map(|&r| x[r * kv_dim..(r + 1) * kv_dim].to_vec())
                        .collect()
                };
                let (kb, vb) = (gather(&k), gather(&v));
                let mut alone = vec![0.0; q_dim];
                let pos = pos0 + path.len() - 1;
                attention(&q[t * q_dim..(t + 1) * q_dim], &kb, &vb, &mut alone, s, pos);
                let got = &out[t * q_dim..(t + 1) * q_dim];
                assert!(
                    got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "token {t}, window {window:?}"
                );
                // Tokens 0 and 1 see what a causal pass shows them; the others' views differ.
                let c = &causal[t * q_dim..(t + 1) * q_dim];
                assert_eq!(t <= 1, got == c, "token {t}: tree vs causal");
            }
        }
    }

    /// A window of 1 makes each query return its own value row.
    #[test]
    fn window_of_one_sees_only_itself() {
        let s = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            window: Some(1),
        };
        let k: Vec<f32> = (0..3 * 4).map(|i| i as f32 * 0.1).collect();
        let v: Vec<f32> = (0..3 * 4).map(|i| i as f32).collect();
        let q = vec![1.0f32; 2 * 2 * 4];
        let mut out = vec![0.0; q.len()];
        attention(&q, &k, &v, &mut out, s, 1);
        assert_eq!(&out[..4], &v[4..8]);
        assert_eq!(&out[8..12], &v[8..12]);
    }
}
