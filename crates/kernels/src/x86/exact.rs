//! "Exact" kernels: f32 activations against weights dequantized in registers, FMA-accumulated; equal
//! to the scalar path up to f32 rounding (summation order).

use super::{f16, hsum, Kern};
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// A format whose 32-weight chunk dequantizes into four vectors of eight f32.
pub(crate) trait Exact32 {
    const BYTES: usize;
    unsafe fn load(p: *const u8) -> [__m256; 4];
}

pub(crate) struct Ex<E>(PhantomData<E>);

impl<E: Exact32> Kern for Ex<E> {
    type X = f32;
    type W = [__m256; 4];
    type Acc = [__m256; 2];
    const ELEMS: usize = 32;
    const BYTES: usize = E::BYTES;
    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> Self::W {
        E::load(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut Self::Acc, w: &Self::W, x: *const f32) {
        acc[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), acc[0]);
        acc[1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), acc[1]);
        acc[0] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), acc[0]);
        acc[1] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), acc[1]);
    }
    #[inline(always)]
    unsafe fn finish(acc: Self::Acc) -> f32 {
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// A plain float format: eight weights at a time as one vector.
pub(crate) trait Float8 {
    /// Bytes of eight weights.
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
}

/// Float weights eight at a time with one accumulator per (row, token): a small register footprint,
/// so prefill tiles can hold 4 rows x 2 tokens of accumulators with every operand in a register.
pub(crate) struct Fl<E>(PhantomData<E>);

impl<E: Float8> Kern for Fl<E> {
    type X = f32;
    type W = __m256;
    type Acc = __m256;
    const ELEMS: usize = 8;
    const BYTES: usize = E::BYTES;
    const WIDE_TILE: bool = true;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        E::load8(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut __m256, w: &__m256, x: *const f32) {
        *acc = _mm256_fmadd_ps(*w, _mm256_loadu_ps(x), *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: __m256) -> f32 {
        hsum(acc)
    }
}

/// A plain float format sixteen weights at a time (AVX-512).
pub(crate) trait Float16 {
    /// Bytes of sixteen weights.
    const BYTES: usize;
    unsafe fn load16(p: *const u8) -> __m512;
}

/// [`Fl`] in 512-bit vectors: sixteen weights per load, tiles of 4 rows x 4 tokens (sixteen
/// accumulators of the 32 registers). Only inside functions compiled for AVX-512F.
pub(crate) struct Fl16<E>(PhantomData<E>);

impl<E: Float16> Kern for Fl16<E> {
    type X = f32;
    type W = __m512;
    type Acc = __m512;
    const ELEMS: usize = 16;
    const BYTES: usize = E::BYTES;
    const WIDE_TILE: bool = true;
    const WIDE_4X4: bool = true;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512 {
        E::load16(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut __m512, w: &__m512, x: *const f32) {
        *acc = _mm512_fmadd_ps(*w, _mm512_loadu_ps(x), *acc);
    }
    #[inline(always)]
    unsafe fn finish(acc: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        hsum(_mm256_add_ps(_mm512_castps512_ps256(acc), hi))
    }
}

impl Float16 for F32x {
    const BYTES: usize = 64;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
    }
}

impl Float16 for F16x {
    const BYTES: usize = 32;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

impl Float16 for Bf16x {
    const BYTES: usize = 32;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
    }
}

impl Float8 for F32x {
    const BYTES: usize = 32;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
}

impl Float8 for F16x {
    const BYTES: usize = 16;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Float8 for Bf16x {
    const BYTES: usize = 16;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
}

pub(crate) struct F32x;
pub(crate) struct F16x;
pub(crate) struct Bf16x;
pub(crate) struct Q8_0x;
pub(crate) struct Q4_0x;
pub(crate) struct Q4_1x;
pub(crate) struct Q5_0x;
pub(crate) struct Q5_1x;

impl Exact32 for Q5_0x {
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256; 4] {
        let (d, sixteen) = (_mm256_set1_ps(f16(p)), _mm256_set1_ps(16.0));
        u8_floats(super::fast::codes5(p.add(2), p.add(6))).map(|q| _mm256_mul_ps(_mm256_sub_ps(q, sixteen), d))
    }
}

impl Exact32 for Q5_1x {
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256; 4] {
        let (d, m) = (_mm256_set1_ps(f16(p)), _mm256_set1_ps(f16(p.add(2))));
        u8_floats(super::fast::codes5(p.add(4), p.add(8))).map(|q| _mm256_add_ps(_mm256_mul_ps(q, d), m))
    }
}

/// Eight signed bytes at `p` as f32 times `d`.
#[inline(always)]
unsafe fn i8x8(p: *const u8, d: __m256) -> __m256 {
    let v = _mm_loadl_epi64(p as *const __m128i);
    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d)
}

/// The 32 codes of a Q4_0/Q4_1 block (16 bytes at `p`: low nibbles first, then high) as bytes.
#[inline(always)]
pub(crate) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(15);
    let lo = _mm_and_si128(b, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), m);
    _mm256_set_m128i(hi, lo)
}

impl Exact32 for Q8_0x {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256; 4] {
        let d = _mm256_set1_ps(f16(p));
        std::array::from_fn(|i| i8x8(p.add(2 + 8 * i), d))
    }
}

/// Codes of a Q4_0/Q4_1 block at `p` spread to four f32 vectors.
#[inline(always)]
unsafe fn q4_floats(p: *const u8) -> [__m256; 4] {
    u8_floats(nibbles32(p))
}

/// 32 unsigned byte codes as four f32 vectors.
#[inline(always)]
unsafe fn u8_floats(q: __m256i) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
    let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    [f(lo), f(_mm_srli_si128::<8>(lo)), f(hi), f(_mm_srli_si128::<8>(hi))]
}

impl Exact32 for Q4_0x {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256; 4] {
        let (d, eight) = (_mm256_set1_ps(f16(p)), _mm256_set1_ps(8.0));
        q4_floats(p.add(2)).map(|q| _mm256_mul_ps(_mm256_sub_ps(q, eight), d))
    }
}

impl Exact32 for Q4_1x {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> [__m256; 4] {
        let (d, m) = (_mm256_set1_ps(f16(p)), _mm256_set1_ps(f16(p.add(2))));
        q4_floats(p.add(4)).map(|q| _mm256_add_ps(_mm256_mul_ps(q, d), m))
    }
}
