//! Exact kernels of the K-quants: codes decoded in registers as the fast kernels decode them, widened
//! to f32 and multiplied with f32 activations; each sub-block's partial sum then takes its scale (and
//! minimum, times the sum of its activations). Equal to the scalar path up to f32 summation order.

use super::fast::{codes_2bit, load_offset16, load_q2k, K4Codes, Offset16, K4, W16, WK};
use super::{hsum, Avx2Dot, Kern};
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// Sixteen signed byte codes times sixteen activations at `x`, as eight partial sums.
#[inline(always)]
unsafe fn qdot16(q: __m128i, x: *const f32) -> __m256 {
    let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    let a = _mm256_mul_ps(f(q), _mm256_loadu_ps(x));
    _mm256_fmadd_ps(f(_mm_srli_si128::<8>(q)), _mm256_loadu_ps(x.add(8)), a)
}

/// The two halves (weights 0-15 and 16-31) of a 32-code vector.
#[inline(always)]
unsafe fn halves(q: __m256i) -> (__m128i, __m128i) {
    (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
}

/// Q4_K and Q5_K: `w = d·sc·q − dmin·m` per sub-block of 32.
pub(crate) struct ExK4<F>(PhantomData<F>);

impl<F: K4Codes> Kern for ExK4<F> {
    type X = f32;
    type W = WK;
    type Acc = [__m256; 2];
    const ELEMS: usize = 256;
    const BYTES: usize = F::BYTES;
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> WK {
        <K4<F, Avx2Dot> as Kern>::load(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut Self::Acc, w: &WK, x: *const f32) {
        for j in 0..4 {
            let (lo, hi) = F::codes(w.p, j);
            for (h, q) in [lo, hi].into_iter().enumerate() {
                let g = 2 * j + h;
                let xg = x.add(32 * g);
                let (a, b) = halves(q);
                let s = _mm256_add_ps(qdot16(a, xg), qdot16(b, xg.add(16)));
                let sx = _mm256_add_ps(
                    _mm256_add_ps(_mm256_loadu_ps(xg), _mm256_loadu_ps(xg.add(8))),
                    _mm256_add_ps(_mm256_loadu_ps(xg.add(16)), _mm256_loadu_ps(xg.add(24))),
                );
                acc[0] = _mm256_fmadd_ps(s, _mm256_set1_ps(w.d[g]), acc[0]);
                acc[1] = _mm256_fmadd_ps(sx, _mm256_set1_ps(w.m[g]), acc[1]);
            }
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// Q2_K: `w = d·sc·q − dmin·m`, a scale and a minimum per 16 weights.
pub(crate) struct ExQ2K;

impl Kern for ExQ2K {
    type X = f32;
    type W = W16;
    type Acc = [__m256; 2];
    const ELEMS: usize = 256;
    const BYTES: usize = 84;
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> W16 {
        load_q2k(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut Self::Acc, w: &W16, x: *const f32) {
        for g in 0..8 {
            let (a, b) = halves(codes_2bit(w.p.add(16), g));
            let xg = x.add(32 * g);
            for (h, q) in [a, b].into_iter().enumerate() {
                let xh = xg.add(16 * h);
                let sx = _mm256_add_ps(_mm256_loadu_ps(xh), _mm256_loadu_ps(xh.add(8)));
                acc[0] = _mm256_fmadd_ps(qdot16(q, xh), _mm256_set1_ps(w.d[2 * g + h]), acc[0]);
                acc[1] = _mm256_fnmadd_ps(sx, _mm256_set1_ps(w.m[2 * g + h]), acc[1]);
            }
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// Q6_K and Q3_K: `w = d·sc·(q − offset)`, a scale per 16 weights.
pub(crate) struct ExOff16<F>(PhantomData<F>);

impl<F: Offset16> Kern for ExOff16<F> {
    type X = f32;
    type W = W16;
    type Acc = [__m256; 2];
    const ELEMS: usize = 256;
    const BYTES: usize = F::BYTES;
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> W16 {
        load_offset16::<F>(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut Self::Acc, w: &W16, x: *const f32) {
        for g in 0..8 {
            let q = _mm256_sub_epi8(F::codes(w.p, g), _mm256_set1_epi8(F::OFFSET));
            let (a, b) = halves(q);
            let xg = x.add(32 * g);
            acc[0] = _mm256_fmadd_ps(qdot16(a, xg), _mm256_set1_ps(w.d[2 * g]), acc[0]);
            acc[1] = _mm256_fmadd_ps(qdot16(b, xg.add(16)), _mm256_set1_ps(w.d[2 * g + 1]), acc[1]);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}
