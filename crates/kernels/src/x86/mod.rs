//! x86-64 kernels: one generic driver tiles `R` weight rows x `T` tokens and calls a per-format
//! [`Kern`] for each block; it is compiled twice, once with AVX2+FMA+F16C and once with AVX-512
//! (F/BW/VL/VNNI) enabled. The "fast" kernels are generic over the int8 dot primitive [`IDot`]:
//! `maddubs`+`madd` on AVX2, `vpdpbusd` on AVX-512 VNNI; both sum the same four products per i32
//! lane, so the two levels compute identical integers and share every other line of code.

mod exact;
mod exact_k;
mod fast;
pub(crate) mod packed;
mod packed512;
pub(crate) mod packed_bf16;
pub(crate) mod packed_float;
pub(crate) mod quantize;

use crate::dtype::DType;
use crate::matmul::{Job, RowsFn};
use crate::quants::{dot_row, BlockQ8, QK8};
use crate::simd::{prefetch_bytes, Simd};
use std::arch::x86_64::*;

/// A block kernel: decodes one chunk of a weight row (`load`) and accumulates its dot product with one
/// token's activations (`dot`); `load` runs once per row and chunk, `dot` once per token of the tile.
pub(crate) trait Kern {
    /// Activation element: `f32` (exact) or [`BlockQ8`] (fast).
    type X: Act;
    type W: Copy;
    type Acc: Copy;
    /// Weights per chunk.
    const ELEMS: usize;
    /// Bytes per chunk.
    const BYTES: usize;
    /// Prefill tiles of 4 rows x 2 tokens instead of 2 x 4 (for small `W` and `Acc`).
    const WIDE_TILE: bool = false;
    /// With `WIDE_TILE`, tiles of 4 rows x 4 tokens (AVX-512's 32 registers hold their 16 accumulators).
    const WIDE_4X4: bool = false;
    unsafe fn zero() -> Self::Acc;
    unsafe fn load(w: *const u8) -> Self::W;
    unsafe fn dot(acc: &mut Self::Acc, w: &Self::W, x: *const Self::X);
    unsafe fn finish(acc: Self::Acc) -> f32;
}

/// Where a token's activations start, and how many units a chunk of `elems` weights takes.
pub(crate) trait Act: Sized {
    fn token(job: &Job, t: usize) -> *const Self;
    fn units(elems: usize) -> usize;
}

impl Act for f32 {
    #[inline(always)]
    fn token(job: &Job, t: usize) -> *const f32 {
        job.xf[t * job.cols..].as_ptr()
    }
    #[inline(always)]
    fn units(elems: usize) -> usize {
        elems
    }
}

impl Act for BlockQ8 {
    #[inline(always)]
    fn token(job: &Job, t: usize) -> *const BlockQ8 {
        job.xq[t * (job.cols / QK8)..].as_ptr()
    }
    #[inline(always)]
    fn units(elems: usize) -> usize {
        elems / QK8
    }
}

/// Sum of the four `u8 x i8` products of each i32 lane.
pub(crate) trait IDot {
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `maddubs` (pairs to i16; no saturation for |s| <= 127, u <= 128) then `madd` by ones.
pub(crate) struct Avx2Dot;
/// AVX-512 VNNI (256-bit, VL): one `vpdpbusd`.
pub(crate) struct VnniDot;

impl IDot for Avx2Dot {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

impl IDot for VnniDot {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// f16 at `p` to f32 with F16C.
#[inline(always)]
pub(crate) unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// `R` rows from `r`, `T` tokens from `t`: every chunk of each row is loaded once and used `T` times.
#[inline(always)]
unsafe fn tile<K: Kern, const R: usize, const T: usize>(job: &Job, r: usize, t: usize) {
    let nc = job.cols / K::ELEMS;
    let xu = K::X::units(K::ELEMS);
    let wp: [*const u8; R] = std::array::from_fn(|i| job.w.as_ptr().add((r + i) * job.row_bytes));
    let xp: [*const K::X; T] = std::array::from_fn(|j| K::X::token(job, t + j));
    let mut acc = [[K::zero(); T]; R];
    for c in 0..nc {
        for i in 0..R {
            if T == 1 {
                // Decode reads R rows as R streams, which the hardware prefetcher does not follow
                // (Zen 3: Q4_0 16 -> 25-29 GMAC/s, Q6_K 6.5 -> 17-19): fetch the same place of the next
                // tile's rows, one tile ahead.
                prefetch_bytes(wp[i].wrapping_add(R * job.row_bytes + c * K::BYTES), K::BYTES);
            }
            let w = K::load(wp[i].add(c * K::BYTES));
            for j in 0..T {
                K::dot(&mut acc[i][j], &w, xp[j].add(c * xu));
            }
        }
    }
    let tail = job.cols - nc * K::ELEMS;
    for (i, acc) in acc.iter().enumerate() {
        for (j, &acc) in acc.iter().enumerate() {
            let mut v = K::finish(acc);
            if tail > 0 {
                // Plain float rows whose length is not a multiple of the chunk: the rest in scalar.
                let row = &job.w[(r + i) * job.row_bytes..][..job.row_bytes];
                let xt = &job.xf[(t + j) * job.cols..][..job.cols];
                let at = nc * K::ELEMS;
                v += dot_row(job.dtype, &row[job.dtype.bytes_for(at).unwrap()..], &xt[at..]);
            }
            *job.y.add((t + j) * job.rows + r + i) = v;
        }
    }
}

/// Tokens in a prefill tile and rows in a tile, decode and prefill.
const TT: usize = 4;
const TR: usize = 2;
const DR: usize = 4;

/// Rows `r0..r1` for every token of the job.
#[inline(always)]
unsafe fn run<K: Kern>(job: &Job, r0: usize, r1: usize) {
    let mut t = 0;
    if K::WIDE_TILE && K::WIDE_4X4 {
        wide_tiles::<K, 4>(job, r0, r1, &mut t);
    }
    if K::WIDE_TILE {
        wide_tiles::<K, 2>(job, r0, r1, &mut t);
    }
    while t + TT <= job.n {
        let mut r = r0;
        while r + TR <= r1 {
            tile::<K, TR, TT>(job, r, t);
            r += TR;
        }
        while r < r1 {
            tile::<K, 1, TT>(job, r, t);
            r += 1;
        }
        t += TT;
    }
    while t < job.n {
        let mut r = r0;
        while r + DR <= r1 {
            tile::<K, DR, 1>(job, r, t);
            r += DR;
        }
        while r < r1 {
            tile::<K, 1, 1>(job, r, t);
            r += 1;
        }
        t += 1;
    }
}

/// Tiles of 4 rows x `T` tokens from token `*t` while `T` tokens remain (advancing `*t`).
#[inline(always)]
unsafe fn wide_tiles<K: Kern, const T: usize>(job: &Job, r0: usize, r1: usize, t: &mut usize) {
    while *t + T <= job.n {
        let mut r = r0;
        while r + 4 <= r1 {
            tile::<K, 4, T>(job, r, *t);
            r += 4;
        }
        while r < r1 {
            tile::<K, 1, T>(job, r, *t);
            r += 1;
        }
        *t += T;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: Kern>(job: &Job, r0: usize, r1: usize) {
    run::<K>(job, r0, r1)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_avx512<K: Kern>(job: &Job, r0: usize, r1: usize) {
    run::<K>(job, r0, r1)
}

/// The kernel for `dtype` at `level` with f32 (`fast == false`) or int8 activations; `None` when the
/// level is not an x86 one or has no kernel for the type (the caller then uses the scalar path).
pub(crate) fn select(dtype: DType, fast: bool, level: Simd) -> Option<RowsFn> {
    use exact::*;
    use exact_k::*;
    use fast::*;
    macro_rules! pick {
        ($run:ident, $D:ty) => {
            Some(match (dtype, fast) {
                (DType::F32, _) => $run::<Fl<F32x>> as RowsFn,
                (DType::F16, _) => $run::<Fl<F16x>>,
                (DType::BF16, _) => $run::<Fl<Bf16x>>,
                (DType::Q8_0, false) => $run::<Ex<Q8_0x>>,
                (DType::Q4_0, false) => $run::<Ex<Q4_0x>>,
                (DType::Q4_1, false) => $run::<Ex<Q4_1x>>,
                (DType::Q5_0, false) => $run::<Ex<Q5_0x>>,
                (DType::Q5_1, false) => $run::<Ex<Q5_1x>>,
                (DType::Q4K, false) => $run::<ExK4<Q4Kf>>,
                (DType::Q5K, false) => $run::<ExK4<Q5Kf>>,
                (DType::Q6K, false) => $run::<ExOff16<Q6Kc>>,
                (DType::Q2K, false) => $run::<ExQ2K>,
                (DType::Q3K, false) => $run::<ExOff16<Q3Kc>>,
                (DType::Q8_0, true) => $run::<Blk32<Q8_0f, $D>>,
                (DType::Q4_0, true) => $run::<Blk32<Q4_0f, $D>>,
                (DType::Q4_1, true) => $run::<Blk32<Q4_1f, $D>>,
                (DType::Q5_0, true) => $run::<Blk32<Q5_0f, $D>>,
                (DType::Q5_1, true) => $run::<Blk32<Q5_1f, $D>>,
                (DType::Q4K, true) => $run::<K4<Q4Kf, $D>>,
                (DType::Q5K, true) => $run::<K4<Q5Kf, $D>>,
                (DType::Q6K, true) => $run::<Off16<Q6Kc, $D>>,
                (DType::Q2K, true) => $run::<Q2Kf<$D>>,
                (DType::Q3K, true) => $run::<Off16<Q3Kc, $D>>,
                _ => return None,
            })
        };
    }
    match level {
        Simd::Avx2 if Simd::Avx2.available() => pick!(run_avx2, Avx2Dot),
        Simd::Avx512 if Simd::Avx512.available() => match dtype {
            // Float weights sixteen at a time in 512-bit vectors.
            DType::F32 => Some(run_avx512::<Fl16<F32x>> as RowsFn),
            DType::F16 => Some(run_avx512::<Fl16<F16x>>),
            DType::BF16 => Some(run_avx512::<Fl16<Bf16x>>),
            _ => pick!(run_avx512, VnniDot),
        },
        _ => None,
    }
}
