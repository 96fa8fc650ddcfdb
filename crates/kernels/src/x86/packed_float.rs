//! F16/BF16 products over [`Packed`](crate::packed::Packed) groups of sixteen rows stored column by
//! column (record `k` = weight `k` of the sixteen rows): outer products, as BLAS-style GEMMs compute.
//! For each `k` the group's column is converted to f32 once (one `vcvtph2ps` to 512 bits, or two to
//! 256) and multiplied into the accumulators of every token of the tile by that token's activation `k`
//! broadcast; each accumulator lane is one (row, token) output, so there are no horizontal sums, and
//! converts and loads per multiply-add fall with the tile's token count (24 on AVX-512, 6 on AVX2).
//!
//! Summation order: every output is the chain `acc = fma(w[k], x[k], acc)` for `k = 0, 1, ..., cols - 1`
//! from `acc = 0` — whatever the tile shape, the token's place in it, the number of tokens in the call
//! or the level (AVX2 and AVX-512 give the same bits). So one token alone and the same token inside a
//! prefill give identical bits; against exact arithmetic the error is at most `γ_cols · Σ_k |w_k x_k|`
//! (`γ_n = n u / (1 - n u)`, `u = 2^-24`), the textbook bound of a recursive sum.
//!
//! Activations: one token (decode) reads `x` as is; more tokens read a copy in tiles of [`select`]'s
//! tile size, tile `i` (tokens `i * tile..`, `m` of them) at `i * tile * cols` laid out `[k][m]`, so
//! the `m` activations `k` of a tile are adjacent ([`tile_activations`]).

use crate::matmul::Job;
use crate::packed::FLOAT_GROUP;
use std::arch::x86_64::*;

/// A packed float column: sixteen 2-byte weights as f32.
pub(crate) trait FloatCol {
    /// All sixteen (AVX-512 only).
    unsafe fn col16(p: *const u8) -> __m512;
    /// Eight of them (bytes `p..p + 16`).
    unsafe fn col8(p: *const u8) -> __m256;
}

pub(crate) struct F16c;
pub(crate) struct Bf16c;

impl FloatCol for F16c {
    #[inline(always)]
    unsafe fn col16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn col8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl FloatCol for Bf16c {
    #[inline(always)]
    unsafe fn col16(p: *const u8) -> __m512 {
        let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn col8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
}

/// Record bytes: sixteen 2-byte weights.
const REC: usize = 2 * FLOAT_GROUP;

/// Tokens per tile of activations, AVX-512 and AVX2.
const TILE512: usize = 24;
const TILE256: usize = 6;

/// One level's register tile: `G` groups x `T` tokens, accumulated over all columns and stored.
pub(crate) trait Micro {
    /// Activation element: f32, or a pair of bf16 (`x86::packed_bf16`).
    type X;
    /// Groups `g..g + G`, tokens `t..t + T`, whose activations (records) `k` are at `x + k * m + j`.
    unsafe fn tile<const G: usize, const T: usize>(job: &Job, g: usize, t: usize, x: *const Self::X, m: usize);
    /// The job's activations: the one token's (decode), or the tiles' laid out as [`tile_activations`]
    /// lays out f32, with `per_token` elements per token.
    fn acts(job: &Job) -> (*const Self::X, usize);
}

struct L512<C>(std::marker::PhantomData<C>);
struct L256<C>(std::marker::PhantomData<C>);

impl<C: FloatCol> Micro for L512<C> {
    type X = f32;
    fn acts(job: &Job) -> (*const f32, usize) {
        (if job.n == 1 { job.xf.as_ptr() } else { job.xt.as_ptr() }, job.cols)
    }
    #[inline(always)]
    unsafe fn tile<const G: usize, const T: usize>(job: &Job, g: usize, t: usize, x: *const f32, m: usize) {
        let p = job.packed.expect("packed job");
        let w: [*const u8; G] = std::array::from_fn(|i| p.group(g + i).as_ptr());
        let mut acc = [[_mm512_setzero_ps(); T]; G];
        let mut xk = x;
        for k in 0..job.cols {
            for i in 0..G {
                let c = C::col16(w[i].add(k * REC));
                for (j, a) in acc[i].iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(c, _mm512_set1_ps(*xk.add(j)), *a);
                }
            }
            xk = xk.add(m);
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(job.y.add((t + j) * job.rows + (g + i) * FLOAT_GROUP), *a);
            }
        }
    }
}

impl<C: FloatCol> Micro for L256<C> {
    type X = f32;
    fn acts(job: &Job) -> (*const f32, usize) {
        L512::<C>::acts(job)
    }
    #[inline(always)]
    unsafe fn tile<const G: usize, const T: usize>(job: &Job, g: usize, t: usize, x: *const f32, m: usize) {
        let p = job.packed.expect("packed job");
        let w: [*const u8; G] = std::array::from_fn(|i| p.group(g + i).as_ptr());
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; G];
        let mut xk = x;
        for k in 0..job.cols {
            for i in 0..G {
                let c = [C::col8(w[i].add(k * REC)), C::col8(w[i].add(k * REC + 16))];
                for (j, a) in acc[i].iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*xk.add(j));
                    a[0] = _mm256_fmadd_ps(c[0], b, a[0]);
                    a[1] = _mm256_fmadd_ps(c[1], b, a[1]);
                }
            }
            xk = xk.add(m);
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                let y = job.y.add((t + j) * job.rows + (g + i) * FLOAT_GROUP);
                _mm256_storeu_ps(y, a[0]);
                _mm256_storeu_ps(y.add(8), a[1]);
            }
        }
    }
}

/// Groups `g0..g1` for tokens `t..t + T`: `G` groups at a time, then two, then one.
#[inline(always)]
unsafe fn span<M: Micro, const G: usize, const T: usize>(
    job: &Job,
    g0: usize,
    g1: usize,
    t: usize,
    x: *const M::X,
    m: usize,
) {
    let mut g = g0;
    while g + G <= g1 {
        M::tile::<G, T>(job, g, t, x, m);
        g += G;
    }
    while G > 2 && g + 2 <= g1 {
        M::tile::<2, T>(job, g, t, x, m);
        g += 2;
    }
    while g < g1 {
        M::tile::<1, T>(job, g, t, x, m);
        g += 1;
    }
}

/// Groups `g0..g1` for every token of the job: whole tiles of `TILE` tokens, `GT` groups at a time; the
/// last tile's tokens in pieces of 8 (when `TILE > 8`), 4, 2 and 1 tokens, `G8`, `G4`, `G2` and `G1`
/// groups at a time (more groups for fewer tokens: enough independent accumulators to hide the FMA
/// latency). One token alone (decode) is a piece of 1.
#[inline(always)]
pub(crate) unsafe fn run<
    M: Micro,
    const TILE: usize,
    const GT: usize,
    const G8: usize,
    const G4: usize,
    const G2: usize,
    const G1: usize,
>(
    job: &Job,
    g0: usize,
    g1: usize,
) {
    if job.n == 1 {
        return span::<M, G1, 1>(job, g0, g1, 0, M::acts(job).0, 1);
    }
    // Blocks of groups (as the pool's prefill chunks): a block's weights stay in L2 while every token
    // tile passes over them.
    let mut b0 = g0;
    while b0 < g1 {
        let b1 = g1.min(b0 + BLOCK);
        tiles::<M, TILE, GT, G8, G4, G2, G1>(job, b0, b1);
        b0 = b1;
    }
}

/// Groups per block of [`run`]: 64 rows (weights 720 KB at 5632 columns, with a token tile's 540 KB).
const BLOCK: usize = 4;

/// Groups `g0..g1` for every token of the job (more than one), tile by tile.
#[inline(always)]
unsafe fn tiles<
    M: Micro,
    const TILE: usize,
    const GT: usize,
    const G8: usize,
    const G4: usize,
    const G2: usize,
    const G1: usize,
>(
    job: &Job,
    g0: usize,
    g1: usize,
) {
    let (x, per_token) = M::acts(job);
    let mut t = 0;
    while t < job.n {
        let m = TILE.min(job.n - t);
        let xt = x.add(t * per_token);
        if m == TILE {
            span::<M, GT, TILE>(job, g0, g1, t, xt, m);
        } else {
            let mut j = 0;
            if TILE > 8 {
                while j + 8 <= m {
                    span::<M, G8, 8>(job, g0, g1, t + j, xt.add(j), m);
                    j += 8;
                }
            }
            while j + 4 <= m {
                span::<M, G4, 4>(job, g0, g1, t + j, xt.add(j), m);
                j += 4;
            }
            while j + 2 <= m {
                span::<M, G2, 2>(job, g0, g1, t + j, xt.add(j), m);
                j += 2;
            }
            if j < m {
                span::<M, G1, 1>(job, g0, g1, t + j, xt.add(j), m);
            }
        }
        t += m;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<C: FloatCol>(job: &Job, g0: usize, g1: usize) {
    // Accumulators (two registers per group and token): 12, -, 8, 8, 8 of the 16 registers.
    run::<L256<C>, TILE256, 1, 1, 1, 2, 4>(job, g0, g1)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn run_avx512<C: FloatCol>(job: &Job, g0: usize, g1: usize) {
    // Accumulators: 24, 16, 16, 8, 8 of the 32 registers.
    run::<L512<C>, TILE512, 1, 2, 4, 4, 8>(job, g0, g1)
}

/// The packed F16/BF16 kernel of `level` (it computes groups `g0..g1` of sixteen rows) and its token
/// tile for [`tile_activations`]; `None` for other types or levels.
pub(crate) fn select(dtype: crate::DType, level: crate::Simd) -> Option<(crate::matmul::RowsFn, usize)> {
    use crate::{DType, Simd};
    Some(match (level, dtype) {
        (Simd::Avx2, DType::F16) if Simd::Avx2.available() => (run_avx2::<F16c> as crate::matmul::RowsFn, TILE256),
        (Simd::Avx2, DType::BF16) if Simd::Avx2.available() => (run_avx2::<Bf16c>, TILE256),
        (Simd::Avx512, DType::F16) if Simd::Avx512.available() => (run_avx512::<F16c>, TILE512),
        (Simd::Avx512, DType::BF16) if Simd::Avx512.available() => (run_avx512::<Bf16c>, TILE512),
        _ => return None,
    })
}

/// `x` (`n` tokens of `cols`, token-major) into `out` in tiles of `tile` tokens, each `[k][m]`; tiles
/// in parallel on the pool when there are several.
pub(crate) fn tile_activations(x: &[f32], cols: usize, tile: usize, out: &mut [f32]) {
    tile_with(x, cols, cols, tile, out, &|xj, o, m, j| {
        for (k, &v) in xj.iter().enumerate() {
            o[k * m + j] = v;
        }
    })
}

/// Writes token `j` (its f32 row) of a tile of `m` tokens into the tile: `put(x_j, tile, m, j)`.
pub(crate) type PutToken<T> = dyn Fn(&[f32], &mut [T], usize, usize) + Sync;

/// `x` (`n` tokens of `cols`) into `out` in tiles of `tile` tokens of `per_token` elements each:
/// `put(x_j, o, m, j)` writes token `j` of a tile of `m` into the tile's `o`; tiles in parallel on the
/// pool when there are several.
pub(crate) fn tile_with<T: Send>(
    x: &[f32],
    cols: usize,
    per_token: usize,
    tile: usize,
    out: &mut [T],
    put: &PutToken<T>,
) {
    let n = x.len() / cols;
    let one = |i: usize, o: &mut [T]| {
        let (t, m) = (i * tile, o.len() / per_token);
        for j in 0..m {
            put(&x[(t + j) * cols..][..cols], o, m, j);
        }
    };
    let out = &mut out[..n * per_token];
    if n > tile {
        crate::pool::for_each_chunk_mut(out, tile * per_token, &one);
    } else {
        one(0, out);
    }
}
