//! Prefill attention by blocks of query tokens (AVX-512): the query heads of up to [`QB`] consecutive tokens
//! that share a KV head take each tile of keys together. The tile is transposed once — element `i` of
//! sixteen keys in one vector — so a query head's scores for sixteen keys are eight accumulators of
//! broadcast query elements times key vectors, with no horizontal sums.
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
    crate::Simd::active() == crate::Simd::Avx512
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
        // call; the CPU has AVX-512 F and FMA (`applies`).
        unsafe {
            let out = std::slice::from_raw_parts_mut(out_ptr.get(), len);
            block(q, k, v, out, &s, kvh, t0..t1, pos0, |p| at(kvh, p));
        }
    });
}

/// One block of query tokens `tokens` for KV head `kvh`.
///
/// # Safety
/// The CPU must have AVX-512 F and FMA; `out` is written only at this block's rows of this KV head.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<K: KvRows + ?Sized>(
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
            // Two groups of sixteen keys at a time while they are both needed (each broadcast query
            // element serves both), then one.
            let mut jg = 0;
            while jg < len {
                if jg + 16 < len {
                    let d = scores16::<2>(qh.as_ptr(), kt.as_ptr().add(jg), hd);
                    for (i, d) in d.into_iter().enumerate() {
                        let d = _mm512_mul_ps(d, _mm512_loadu_ps(rs.as_ptr().add(jg + 16 * i)));
                        _mm512_storeu_ps(
                            sc.as_mut_ptr().add(jg + 16 * i),
                            _mm512_mul_ps(d, _mm512_set1_ps(scale)),
                        );
                    }
                    jg += 32;
                } else {
                    let [d] = scores16::<1>(qh.as_ptr(), kt.as_ptr().add(jg), hd);
                    let d = _mm512_mul_ps(d, _mm512_loadu_ps(rs.as_ptr().add(jg)));
                    _mm512_storeu_ps(sc.as_mut_ptr().add(jg), _mm512_mul_ps(d, _mm512_set1_ps(scale)));
                    jg += 16;
                }
            }
            let sc = &mut sc[..len];
            let oh = &mut out[row(qi)..row(qi) + hd];
            let tile_max = max16(sc);
            // Rescale what was accumulated under the old maximum.
            if tile_max > max[qi] {
                let c = (max[qi] - tile_max).exp();
                sum[qi] *= c;
                oh.iter_mut().for_each(|o| *o *= c);
                max[qi] = tile_max;
            }
            sum[qi] += exp_shifted16(sc, max[qi]);
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
                let n = match (hd, g - h) {
                    (64, 4..) => {
                        rows_x::<K, 4, 4>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j))
                    }
                    (64, 3) => {
                        rows_x::<K, 4, 3>(v, out, &scores[q0 + h..], |i| row(q0 + h + i), len, |j| at(start + j))
                    }
                    (64, 2..) | (128, 2..) => match hd {
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

/// [`max_of`] sixteen lanes at a time: `max(x, m)` returns `m` for a NaN `x`, as `f32::max` does; the
/// maximum of a set does not depend on the order it is taken in.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn max16(s: &[f32]) -> f32 {
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        m = _mm512_max_ps(_mm512_loadu_ps(c.as_ptr()), m);
    }
    let mut lanes = [0.0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), m);
    max_of(chunks.remainder()).max(max_of(&lanes))
}

/// [`super::exp_shifted`] sixteen lanes at a time: the same operations on each element (Cephes' `exp`), and
/// the sum in the same eight lanes — elements `i, i + 8, ...` into lane `i`, in order — then the same
/// tree and tail.
///
/// # Safety
/// The CPU must have AVX-512 F and AVX.
#[inline(always)]
unsafe fn exp_shifted16(s: &mut [f32], m: f32) -> f32 {
    let mv = _mm512_set1_ps(m);
    let mut acc = _mm256_setzero_ps();
    let mut chunks = s.chunks_exact_mut(16);
    for c in &mut chunks {
        let y = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mv));
        _mm512_storeu_ps(c.as_mut_ptr(), y);
        acc = _mm256_add_ps(acc, _mm512_castps512_ps256(y));
        acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(y))));
    }
    let rest = chunks.into_remainder();
    // The rest as `exp_shifted` takes it: whole eights into the lanes, then the tail.
    let mut a = [0.0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    let tail = exp_shifted_from(rest, m, &mut a);
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
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

/// Cephes' `exp` of [`super::exp_shifted`] on sixteen lanes, operation for operation.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn exp16(x: __m512) -> __m512 {
    const MAGIC: f32 = 12_582_912.0;
    let lim = _mm512_set1_ps(-87.3);
    let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lim);
    // `x.max(-87.3)`: -87.3 for a NaN `x`, as `max_ps` returns its second operand then.
    let x = _mm512_max_ps(x, lim);
    let magic = _mm512_set1_ps(MAGIC);
    let n = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), magic),
        magic,
    );
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693_359_4))),
        _mm512_mul_ps(n, _mm512_set1_ps(-2.121_944_4e-4)),
    );
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
    }
    let e = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
        _mm512_set1_ps(1.0),
    );
    // `n` is a whole number in -126..=0 here: the conversion is exact.
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    let y = _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
    _mm512_mask_blend_ps(tiny, y, _mm512_setzero_ps())
}

/// `q · k` of `16 G` keys whose elements are at `kt[i * TILE + 16 g + lane]` (element `i`, group `g`):
/// per key, accumulator `l` takes the products of elements `l, l + 8, ...` in order, then
/// `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))` — `dots`' operations.
///
/// # Safety
/// The CPU must have AVX-512 F; `q` holds `hd` values and `kt` `hd` rows of `TILE` from the group.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn scores16<const G: usize>(q: *const f32, kt: *const f32, hd: usize) -> [__m512; G] {
    let mut acc = [[_mm512_setzero_ps(); 8]; G];
    for c in (0..hd).step_by(8) {
        for l in 0..8 {
            let x = _mm512_set1_ps(*q.add(c + l));
            for g in 0..G {
                let kv = _mm512_loadu_ps(kt.add((c + l) * TILE + 16 * g));
                acc[g][l] = _mm512_fmadd_ps(x, kv, acc[g][l]);
            }
        }
    }
    let mut out = [_mm512_setzero_ps(); G];
    for g in 0..G {
        let a = &acc[g];
        out[g] = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[1], a[5])),
            _mm512_add_ps(_mm512_add_ps(a[2], a[6]), _mm512_add_ps(a[3], a[7])),
        );
    }
    out
}
