//! Prefill attention by blocks of query tokens (AVX-512, AVX2): the query heads of up to [`QB`]
//! consecutive tokens that share a KV head take each tile of keys together. The tile is transposed once —
//! element `i` of sixteen (AVX2: eight) keys in one vector — so a query head's scores for those keys are
//! eight accumulators of broadcast query elements times key vectors, with no horizontal sums.
//!
//! Bit for bit the same as [`super::attend_heads`] on every level: accumulator `l` of a key takes the
//! products of elements `l, l + 8, ...` in order (fused multiply-adds), as `dots`' lane `l` does; the
//! eight are summed `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`, times the row scale, times the
//! softmax scale; the online softmax and the weighted value rows are the same code on the same tiles
//! (tiles start at position 0 for every query; a query uses the first `pos + 1 - start` scores of the
//! tile that holds its position). Only causal attention without a window and head sizes that are
//! multiples of 16 take this path.

use super::{exp_shifted_from, max_of, weighted_rows, AttnShape, KvRows, TILE};
use std::arch::x86_64::*;

/// Most query tokens per block: a key tile is transposed once per block, and at 32 tokens that costs
/// little beside the block's products (SmolLM2's shape, one thread: 8 tokens 1.25x the per-token
/// loop, 16 1.35x, 32 1.45x).
pub(super) const QB: usize = 32;

/// Whether [`attend`] handles these shapes on this CPU.
pub(crate) fn applies(s: &AttnShape, n_tokens: usize) -> bool {
    matches!(crate::Simd::active(), crate::Simd::Avx512 | crate::Simd::Avx2)
        && s.window.is_none()
        && s.head_dim.is_multiple_of(16)
        && s.head_dim <= 256
        && n_tokens >= 2
}

/// Causal attention of the `n = q.len() / (n_heads * head_dim)` query tokens, the first at position
/// `pos0`, over the rows `at(kv_head, p)` of `k` and `v`; `out` as `q`. Needs [`applies`].
pub(crate) fn attend<K: KvRows + ?Sized>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    s: AttnShape,
    pos0: usize,
    at: impl Fn(usize, usize) -> usize + Sync,
) {
    assert!(applies(&s, q.len() / (s.n_heads * s.head_dim)));
    let n = q.len() / (s.n_heads * s.head_dim);
    // Fewer tokens per block when blocks would be too few to keep every thread busy (short chunks).
    let qb = (n * s.n_kv_heads / (4 * crate::pool::threads())).clamp(8, QB);
    let blocks = n.div_ceil(qb);
    let out_ptr = crate::pool::SendPtr(out.as_mut_ptr());
    let len = out.len();
    crate::pool::run(blocks * s.n_kv_heads, &|task| {
        let (b, kvh) = (task / s.n_kv_heads, task % s.n_kv_heads);
        // Later blocks attend to more positions: hand them out first.
        let b = blocks - 1 - b;
        let t0 = b * qb;
        let t1 = (t0 + qb).min(n);
        // SAFETY: tasks write the disjoint rows of their own tokens and KV head; `out` outlives the
        // call; the CPU has what the active level names (`applies`).
        unsafe {
            let out = std::slice::from_raw_parts_mut(out_ptr.get(), len);
            let at = |p| at(kvh, p);
            if crate::Simd::active() == crate::Simd::Avx512 {
                block_avx512(q, k, v, out, &s, kvh, t0..t1, pos0, at);
            } else {
                block_avx2(q, k, v, out, &s, kvh, t0..t1, pos0, at);
            }
        }
    });
}

/// [`block`] in 512-bit vectors.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, AVX2 and FMA; `out` as [`block`].
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512<K: KvRows + ?Sized>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    s: &AttnShape,
    kvh: usize,
    tokens: std::ops::Range<usize>,
    pos0: usize,
    at: impl Fn(usize) -> usize,
) {
    block::<K, __m512>(q, k, v, out, s, kvh, tokens, pos0, at)
}

/// [`block`] in 256-bit vectors.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out` as [`block`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2<K: KvRows + ?Sized>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    s: &AttnShape,
    kvh: usize,
    tokens: std::ops::Range<usize>,
    pos0: usize,
    at: impl Fn(usize) -> usize,
) {
    block::<K, __m256>(q, k, v, out, s, kvh, tokens, pos0, at)
}

/// One block of query tokens `tokens` for KV head `kvh`, in vectors `V`.
///
/// # Safety
/// The CPU must have what `V` needs (inlined into a function compiled for it); `out` is written only at
/// this block's rows of this KV head.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<K: KvRows + ?Sized, V: Lanes>(
    q: &[f32],
    k: &K,
    v: &K,
    out: &mut [f32],
    s: &AttnShape,
    kvh: usize,
    tokens: std::ops::Range<usize>,
    pos0: usize,
    at: impl Fn(usize) -> usize,
) {
    let hd = s.head_dim;
    let g = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let nq = tokens.len() * g;
    // Query head `qi` is head `qi % g` of the group of token `tokens.start + qi / g`.
    let row = |qi: usize| ((tokens.start + qi / g) * s.n_heads + kvh * g + qi % g) * hd;
    let mut max = vec![f32::NEG_INFINITY; nq];
    let mut sum = vec![0.0f32; nq];
    let mut scores = vec![[0.0f32; TILE]; nq];
    // Keys of a tile, transposed: element `i` of key `j` at `kt[i * TILE + j]`; and the row scales.
    let mut kt = vec![0.0f32; hd * TILE];
    let mut rs = [1.0f32; TILE];
    for qi in 0..nq {
        out[row(qi)..row(qi) + hd].fill(0.0);
    }
    let last = pos0 + tokens.end; // one past the last position any query of the block sees
    for start in (0..last).step_by(TILE) {
        let tile_end = (start + TILE).min(last);
        let cols = tile_end - start;
        for j in 0..cols {
            let a = at(start + j);
            for c in (0..hd).step_by(8) {
                let x = k.load8(a + c);
                for (i, &x) in x.iter().enumerate() {
                    kt[(c + i) * TILE + j] = x;
                }
            }
            rs[j] = k.row_scale(a);
        }
        for qi in 0..nq {
            let pos = pos0 + tokens.start + qi / g;
            if start > pos {
                continue;
            }
            let len = (pos + 1).min(tile_end) - start;
            let qh = &q[row(qi)..row(qi) + hd];
            let sc = &mut scores[qi];
            // Two groups of keys at a time in 512-bit vectors while both are needed (each broadcast
            // query element serves both), then one; one at a time in 256-bit vectors (registers).
            let (w, mut jg) = (V::N, 0);
            while jg < len {
                if w == 16 && jg + w < len {
                    let [d0, d1] = key_scores::<V, 2>(qh.as_ptr(), kt.as_ptr().add(jg), hd);
                    put_scores(sc, &rs, jg, d0, scale);
                    put_scores(sc, &rs, jg + w, d1, scale);
                    jg += 2 * w;
                } else {
                    let [d] = key_scores::<V, 1>(qh.as_ptr(), kt.as_ptr().add(jg), hd);
                    put_scores(sc, &rs, jg, d, scale);
                    jg += w;
                }
            }
            let sc = &mut sc[..len];
            let oh = &mut out[row(qi)..row(qi) + hd];
            let tile_max = max_v::<V>(sc);
            // Rescale what was accumulated under the old maximum.
            if tile_max > max[qi] {
                let c = (max[qi] - tile_max).exp();
                sum[qi] *= c;
                oh.iter_mut().for_each(|o| *o *= c);
                max[qi] = tile_max;
            }
            sum[qi] += exp_shifted_v::<V>(sc, max[qi]);
        }
        // The weighted value rows, the heads of a token together (they see the same rows): each
        // output element is its own chain of multiply-adds over the rows, as `weighted_rows` runs it,
        // and the heads' chains interleave instead of waiting on each other's latency.
        for t in tokens.clone() {
            let pos = pos0 + t;
            if start > pos {
                continue;
            }
            let len = (pos + 1).min(tile_end) - start;
            let q0 = (t - tokens.start) * g;
            let mut h = 0;
            while h < g {
                // Value rows in registers for several heads: 512-bit vectors only (the 256-bit ones do
                // not leave the registers for it); `rows_x` is compiled for AVX-512 and never reached
                // in the 256-bit instantiation.
                let n = match (V::N, hd, g - h) {
                    (16, 64, 4..) => {
                        rows_x::<K, 4, 4>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j))
                    }
                    (16, 64, 3) => {
                        rows_x::<K, 4, 3>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j))
                    }
                    (16, 64, 2..) | (16, 128, 2..) => match hd {
                        64 => rows_x::<K, 4, 2>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j)),
                        _ => rows_x::<K, 8, 2>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j)),
                    },
                    _ => {
                        let r = row(q0 + h);
                        let (oh, p) = (&mut out[r..r + hd], &scores[q0 + h][..len]);
                        match hd {
                            64 => weighted_rows::<K, 64>(v, oh, p, |j| at(start + j)),
                            128 => weighted_rows::<K, 128>(v, oh, p, |j| at(start + j)),
                            _ => (0..len).for_each(|j| v.axpy(oh, p[j], at(start + j))),
                        }
                        1
                    }
                };
                h += n;
            }
        }
    }
    for qi in 0..nq {
        let inv = 1.0 / sum[qi];
        out[row(qi)..row(qi) + hd].iter_mut().for_each(|o| *o *= inv);
    }
}

/// [`max_of`] a vector at a time: `max(x, m)` returns `m` for a NaN `x`, as `f32::max` does; the
/// maximum of a set does not depend on the order it is taken in.
///
/// # Safety
/// The CPU must have what `V` needs.
#[inline(always)]
unsafe fn max_v<V: Lanes>(s: &[f32]) -> f32 {
    let mut m = V::set1(f32::NEG_INFINITY);
    let mut chunks = s.chunks_exact(V::N);
    for c in &mut chunks {
        m = V::load(c.as_ptr()).max_or(m);
    }
    let mut lanes = [0.0f32; 16];
    m.store(lanes.as_mut_ptr());
    max_of(chunks.remainder()).max(max_of(&lanes[..V::N]))
}

/// [`super::exp_shifted`] a vector at a time: the same operations on each element (Cephes' `exp`), and
/// the sum in the same eight lanes — elements `i, i + 8, ...` into lane `i`, in order — then the same
/// tree and tail.
///
/// # Safety
/// The CPU must have what `V` needs.
#[inline(always)]
unsafe fn exp_shifted_v<V: Lanes>(s: &mut [f32], m: f32) -> f32 {
    let mv = V::set1(m);
    let mut acc = _mm256_setzero_ps();
    let mut chunks = s.chunks_exact_mut(V::N);
    for c in &mut chunks {
        let y = exp_v(V::load(c.as_ptr()).sub(mv));
        y.store(c.as_mut_ptr());
        acc = y.add_into8(acc);
    }
    let rest = chunks.into_remainder();
    // The rest as `exp_shifted` takes it: whole eights into the lanes, then the tail.
    let mut a = [0.0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    let tail = exp_shifted_from(rest, m, &mut a);
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
}

/// Cephes' `exp` of [`super::exp_shifted`] on every lane, operation for operation.
///
/// # Safety
/// The CPU must have what `V` needs.
#[inline(always)]
unsafe fn exp_v<V: Lanes>(x: V) -> V {
    const MAGIC: f32 = 12_582_912.0;
    let lim = V::set1(-87.3);
    // `x.max(-87.3)`: -87.3 for a NaN `x`.
    let xc = x.max_or(lim);
    let magic = V::set1(MAGIC);
    let n = xc.mul(V::set1(std::f32::consts::LOG2_E)).add(magic).sub(magic);
    let r = xc.sub(n.mul(V::set1(0.693_359_4))).sub(n.mul(V::set1(-2.121_944_4e-4)));
    let mut p = V::set1(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p.mul(r).add(V::set1(c));
    }
    let e = p.mul(r).mul(r).add(r).add(V::set1(1.0));
    // Below -87.3 the result would be subnormal: 0 instead.
    e.mul(n.pow2()).zero_where_below(x, lim)
}

/// `sc[jg..jg + V::N] = d * rs[jg..] * scale` (row scales, then the softmax scale, as `dots` and `put`).
///
/// # Safety
/// The CPU must have what `V` needs; `jg + V::N <= TILE`.
#[inline(always)]
unsafe fn put_scores<V: Lanes>(sc: &mut [f32; TILE], rs: &[f32; TILE], jg: usize, d: V, scale: f32) {
    d.mul(V::load(rs.as_ptr().add(jg)))
        .mul(V::set1(scale))
        .store(sc.as_mut_ptr().add(jg));
}

/// `q · k` of `G` groups of `V::N` keys whose elements are at `kt[i * TILE + V::N g + lane]` (element
/// `i`, group `g`): per key, accumulator `l` takes the products of elements `l, l + 8, ...` in order,
/// then `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))` — `dots`' operations.
///
/// # Safety
/// The CPU must have what `V` needs; `q` holds `hd` values and `kt` `hd` rows of `TILE` from the group.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn key_scores<V: Lanes, const G: usize>(q: *const f32, kt: *const f32, hd: usize) -> [V; G] {
    let mut acc = [[V::zero(); 8]; G];
    for c in (0..hd).step_by(8) {
        for l in 0..8 {
            let x = V::set1(*q.add(c + l));
            for g in 0..G {
                let kv = V::load(kt.add((c + l) * TILE + V::N * g));
                acc[g][l] = x.fma(kv, acc[g][l]);
            }
        }
    }
    let mut out = [V::zero(); G];
    for g in 0..G {
        let a = &acc[g];
        out[g] = (a[0].add(a[4]).add(a[1].add(a[5]))).add(a[2].add(a[6]).add(a[3].add(a[7])));
    }
    out
}

/// [`weighted_rows`] for the `N` heads whose outputs start at `row(i)` in `out` and whose weights are
/// `p[i][..len]`, head size `16 * V`: each value row is read once for the `N`, and the `N x V`
/// accumulators stay in registers. Every output element takes the multiply-adds of [`KvRows::axpy`]
/// (`p * row_scale`, exact for f32 rows, times the stored value, plus the sum) in the same order as
/// head by head. Returns `N`.
///
/// # Safety
/// The CPU must have AVX-512 F and AVX.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn rows_x<K: KvRows + ?Sized, const V: usize, const N: usize>(
    v: &K,
    out: &mut [f32],
    p: &[[f32; TILE]],
    row: impl Fn(usize) -> usize,
    len: usize,
    at: impl Fn(usize) -> usize,
) -> usize {
    let p: [&[f32; TILE]; N] = std::array::from_fn(|i| &p[i]);
    let o: [usize; N] = std::array::from_fn(&row);
    let mut acc = [[_mm512_setzero_ps(); V]; N];
    for i in 0..N {
        for c in 0..V {
            acc[i][c] = _mm512_loadu_ps(out.as_ptr().add(o[i] + 16 * c));
        }
    }
    for j in 0..len {
        let r = at(j);
        let s = v.row_scale(r);
        let mut x = [_mm512_setzero_ps(); V];
        for c in 0..V {
            let (lo, hi) = (v.load8(r + 16 * c), v.load8(r + 16 * c + 8));
            let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(lo.as_ptr())));
            x[c] = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                lo,
                _mm256_castps_pd(_mm256_loadu_ps(hi.as_ptr())),
            ));
        }
        for i in 0..N {
            let w = _mm512_set1_ps(p[i][j] * s);
            for c in 0..V {
                acc[i][c] = _mm512_fmadd_ps(w, x[c], acc[i][c]);
            }
        }
    }
    for i in 0..N {
        for c in 0..V {
            _mm512_storeu_ps(out.as_mut_ptr().add(o[i] + 16 * c), acc[i][c]);
        }
    }
    N
}

/// A vector of `N` f32 lanes with the operations the block kernel uses, each one IEEE operation per lane
/// (no fusing but `fma`): `__m512` (AVX-512 F) and `__m256` (AVX2 + FMA). Only inside functions
/// compiled for the vector's instructions.
pub(crate) trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn set1(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `self * b + c`, rounded once.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// `max(self, m)`, `m` where `self` is NaN (`f32::max`'s choice).
    unsafe fn max_or(self, m: Self) -> Self;
    /// `2^self` for whole numbers `self` in -126..=127.
    unsafe fn pow2(self) -> Self;
    /// `self`, with `+0` where `x < lim` (false for NaN).
    unsafe fn zero_where_below(self, x: Self, lim: Self) -> Self;
    /// `acc` plus each group of eight lanes of `self`, lowest group first.
    unsafe fn add_into8(self, acc: __m256) -> __m256;
}

impl Lanes for __m512 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(x: f32) -> Self {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        _mm512_add_ps(self, o)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        _mm512_sub_ps(self, o)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        _mm512_mul_ps(self, o)
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn max_or(self, m: Self) -> Self {
        // `max_ps` returns its second operand when either is NaN.
        _mm512_max_ps(self, m)
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(self), _mm512_set1_epi32(127)));
        _mm512_castsi512_ps(bits)
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, lim: Self) -> Self {
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lim), self, _mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn add_into8(self, acc: __m256) -> __m256 {
        let acc = _mm256_add_ps(acc, _mm512_castps512_ps256(self));
        _mm256_add_ps(
            acc,
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self))),
        )
    }
}

impl Lanes for __m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(x: f32) -> Self {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        _mm256_add_ps(self, o)
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        _mm256_sub_ps(self, o)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        _mm256_mul_ps(self, o)
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn max_or(self, m: Self) -> Self {
        // `max_ps` returns its second operand when either is NaN.
        _mm256_max_ps(self, m)
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(self), _mm256_set1_epi32(127)));
        _mm256_castsi256_ps(bits)
    }
    #[inline(always)]
    unsafe fn zero_where_below(self, x: Self, lim: Self) -> Self {
        _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, lim), self)
    }
    #[inline(always)]
    unsafe fn add_into8(self, acc: __m256) -> __m256 {
        _mm256_add_ps(acc, self)
    }
}
