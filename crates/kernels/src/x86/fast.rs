//! "Fast" kernels: weights against activations quantized to int8 blocks of 32 ([`BlockQ8`]), integer
//! dot products per 32 weights (through [`IDot`]), one f32 FMA per block for the scales and one
//! scalar term for offsets/minimums (`c += cw * s`, with `s = dx * Σ qx`).

use super::exact::nibbles32;
use super::{f16, hsum, IDot, Kern};
use crate::quants::k_quants::scale_min_k4;
use crate::quants::BlockQ8;
use std::arch::x86_64::*;
use std::marker::PhantomData;

#[derive(Clone, Copy)]
pub(crate) struct FAcc {
    v: __m256,
    c: f32,
}

#[inline(always)]
unsafe fn facc0() -> FAcc {
    FAcc {
        v: _mm256_setzero_ps(),
        c: 0.0,
    }
}

#[inline(always)]
unsafe fn qs(x: &BlockQ8) -> __m256i {
    _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i)
}

/// A 32-weight block format: its codes as bytes, whether they are signed (then the `abs`/`sign` trick
/// makes them unsigned for `maddubs`), its scale and the coefficient of `s` (offset or minimum).
pub(crate) trait Fast32 {
    const BYTES: usize;
    const SIGNED: bool;
    /// Whether `cw` can be nonzero (an offset or minimum to apply).
    const OFFSET: bool = true;
    /// `(codes, d, cw)`.
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32);
}

pub(crate) struct Q8_0f;
pub(crate) struct Q4_0f;
pub(crate) struct Q4_1f;
pub(crate) struct Q5_0f;
pub(crate) struct Q5_1f;

/// The 32 five-bit codes of a Q5_0/Q5_1 block: nibbles at `qs`, bit 4 of code `i` in bit `i` of the
/// little-endian u32 at `qh`.
#[inline(always)]
pub(crate) unsafe fn codes5(qh: *const u8, qs: *const u8) -> __m256i {
    let v = _mm256_set1_epi32(std::ptr::read_unaligned(qh as *const i32));
    // Byte i of the result takes byte i / 8 of `qh`, then tests bit i % 8.
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bits), bits);
    _mm256_or_si256(nibbles32(qs), _mm256_and_si256(set, _mm256_set1_epi8(16)))
}

impl Fast32 for Q5_0f {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        let d = f16(p);
        (codes5(p.add(2), p.add(6)), d, -16.0 * d)
    }
}

impl Fast32 for Q5_1f {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        (codes5(p.add(4), p.add(8)), f16(p), f16(p.add(2)))
    }
}

impl Fast32 for Q8_0f {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        (_mm256_loadu_si256(p.add(2) as *const __m256i), f16(p), 0.0)
    }
}

impl Fast32 for Q4_0f {
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        let d = f16(p);
        (nibbles32(p.add(2)), d, -8.0 * d)
    }
}

impl Fast32 for Q4_1f {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        (nibbles32(p.add(4)), f16(p), f16(p.add(2)))
    }
}

#[derive(Clone, Copy)]
pub(crate) struct W32 {
    u: __m256i,
    sgn: __m256i,
    d: f32,
    cw: f32,
}

pub(crate) struct Blk32<F, D>(PhantomData<(F, D)>);

impl<F: Fast32, D: IDot> Kern for Blk32<F, D> {
    type X = BlockQ8;
    type W = W32;
    type Acc = FAcc;
    const ELEMS: usize = 32;
    const BYTES: usize = F::BYTES;
    #[inline(always)]
    unsafe fn zero() -> FAcc {
        facc0()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> W32 {
        let (q, d, cw) = F::load(p);
        let u = if F::SIGNED { _mm256_abs_epi8(q) } else { q };
        W32 { u, sgn: q, d, cw }
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut FAcc, w: &W32, x: *const BlockQ8) {
        let x = &*x;
        let xq = qs(x);
        let s = if F::SIGNED { _mm256_sign_epi8(xq, w.sgn) } else { xq };
        let i = D::dot(w.u, s);
        acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(w.d * x.d), acc.v);
        if F::OFFSET {
            acc.c += w.cw * x.s;
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: FAcc) -> f32 {
        hsum(acc.v) + acc.c
    }
}

/// Q4_K / Q5_K: the codes of sub-blocks `2j` and `2j + 1` of a super-block.
pub(crate) trait K4Codes {
    const BYTES: usize;
    unsafe fn codes(p: *const u8, j: usize) -> (__m256i, __m256i);
}

pub(crate) struct Q4Kf;
pub(crate) struct Q5Kf;

#[inline(always)]
unsafe fn split_nibbles(v: __m256i) -> (__m256i, __m256i) {
    let m = _mm256_set1_epi8(15);
    (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m))
}

impl K4Codes for Q4Kf {
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn codes(p: *const u8, j: usize) -> (__m256i, __m256i) {
        split_nibbles(_mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i))
    }
}

impl K4Codes for Q5Kf {
    const BYTES: usize = 176;
    #[inline(always)]
    unsafe fn codes(p: *const u8, j: usize) -> (__m256i, __m256i) {
        let (lo, hi) = split_nibbles(_mm256_loadu_si256(p.add(48 + 32 * j) as *const __m256i));
        let qh = _mm256_loadu_si256(p.add(16) as *const __m256i);
        let sixteen = _mm256_set1_epi8(16);
        let bit = |b: i32| {
            let m = _mm256_set1_epi8((1u8 << b) as i8);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), sixteen)
        };
        (
            _mm256_or_si256(lo, bit(2 * j as i32)),
            _mm256_or_si256(hi, bit(2 * j as i32 + 1)),
        )
    }
}

#[derive(Clone, Copy)]
pub(crate) struct WK {
    pub p: *const u8,
    /// `d * sc` and `-dmin * m` of each sub-block of 32 (Q4_K/Q5_K).
    pub d: [f32; 8],
    pub m: [f32; 8],
}

pub(crate) struct K4<F, D>(PhantomData<(F, D)>);

impl<F: K4Codes, D: IDot> Kern for K4<F, D> {
    type X = BlockQ8;
    type W = WK;
    type Acc = FAcc;
    const ELEMS: usize = 256;
    const BYTES: usize = F::BYTES;
    #[inline(always)]
    unsafe fn zero() -> FAcc {
        facc0()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> WK {
        let (d, dmin) = (f16(p), f16(p.add(2)));
        let s = std::slice::from_raw_parts(p.add(4), 12);
        let mut w = WK {
            p,
            d: [0.0; 8],
            m: [0.0; 8],
        };
        for g in 0..8 {
            let (sc, m) = scale_min_k4(g, s);
            w.d[g] = d * sc as f32;
            w.m[g] = -(dmin * m as f32);
        }
        w
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut FAcc, w: &WK, x: *const BlockQ8) {
        for j in 0..4 {
            let (lo, hi) = F::codes(w.p, j);
            for (h, q) in [lo, hi].into_iter().enumerate() {
                let g = 2 * j + h;
                let xb = &*x.add(g);
                let i = D::dot(q, qs(xb));
                acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(w.d[g] * xb.d), acc.v);
                acc.c += w.m[g] * xb.s;
            }
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: FAcc) -> f32 {
        hsum(acc.v) + acc.c
    }
}

/// The 32 codes (0..64, offset 32 not subtracted) of sub-block `g` (0..8) of the Q6_K block at `p`.
#[inline(always)]
pub(crate) unsafe fn q6k_codes(p: *const u8, g: usize) -> __m256i {
    let (n, k) = (g / 4, g % 4);
    let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
    let ql = _mm256_loadu_si256(p.add(64 * n + 32 * (k % 2)) as *const __m256i);
    let nib = if k < 2 { ql } else { _mm256_srli_epi16::<4>(ql) };
    let h = _mm256_and_si256(
        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)),
        _mm256_set1_epi8(3),
    );
    _mm256_or_si256(_mm256_and_si256(nib, _mm256_set1_epi8(15)), _mm256_slli_epi16::<4>(h))
}

/// The 32 two-bit codes of sub-block `g` (0..8) of the Q2_K/Q3_K code bytes at `qs` (64 bytes).
#[inline(always)]
pub(crate) unsafe fn codes_2bit(qs: *const u8, g: usize) -> __m256i {
    let v = _mm256_loadu_si256(qs.add(32 * (g / 4)) as *const __m256i);
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (g % 4) as i32)),
        _mm256_set1_epi8(3),
    )
}

/// The 32 codes (0..8, offset 4 not subtracted) of sub-block `g` of the Q3_K block at `p`.
#[inline(always)]
pub(crate) unsafe fn q3k_codes(p: *const u8, g: usize) -> __m256i {
    let hm = _mm256_loadu_si256(p as *const __m256i);
    let bit = _mm256_set1_epi8((1u8 << g) as i8);
    let high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), _mm256_set1_epi8(4));
    _mm256_or_si256(codes_2bit(p.add(32), g), high)
}

/// Scales and minimums of a Q2_K, Q3_K or Q6_K block, one per 16 weights: `d * sc` and `dmin * m`
/// (Q2_K; zero for the others).
#[derive(Clone, Copy)]
pub(crate) struct W16 {
    pub p: *const u8,
    pub d: [f32; 16],
    pub m: [f32; 16],
}

#[inline(always)]
pub(crate) unsafe fn load_q2k(p: *const u8) -> W16 {
    let s = crate::quants::k_quants::scales_q2k(std::slice::from_raw_parts(p, 84));
    W16 {
        p,
        d: s.map(|v| v.0),
        m: s.map(|v| v.1),
    }
}

/// `a` in lanes 0-3 (the first 16 weights of a sub-block), `b` in lanes 4-7.
#[inline(always)]
unsafe fn halves_ps(a: f32, b: f32) -> __m256 {
    _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a))
}

/// Q2_K: codes 0..4 with a scale and a minimum per 16 weights; the minimums take a second dot with ones
/// (the sum of each half's activation codes).
pub(crate) struct Q2Kf<D>(PhantomData<D>);

impl<D: IDot> Kern for Q2Kf<D> {
    type X = BlockQ8;
    type W = W16;
    type Acc = FAcc;
    const ELEMS: usize = 256;
    const BYTES: usize = 84;
    #[inline(always)]
    unsafe fn zero() -> FAcc {
        facc0()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> W16 {
        load_q2k(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut FAcc, w: &W16, x: *const BlockQ8) {
        let ones = _mm256_set1_epi8(1);
        for g in 0..8 {
            let xb = &*x.add(g);
            let xq = qs(xb);
            let i = D::dot(codes_2bit(w.p.add(16), g), xq);
            let sx = D::dot(ones, xq);
            let (d, m) = (
                halves_ps(w.d[2 * g], w.d[2 * g + 1]),
                halves_ps(w.m[2 * g], w.m[2 * g + 1]),
            );
            let dx = _mm256_set1_ps(xb.d);
            acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(d, dx), acc.v);
            acc.v = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(sx), _mm256_mul_ps(m, dx), acc.v);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: FAcc) -> f32 {
        hsum(acc.v)
    }
}

/// Q6_K and Q3_K: unsigned codes minus a fixed offset, a scale per 16 weights.
pub(crate) trait Offset16 {
    const BYTES: usize;
    /// Subtracted from every code.
    const OFFSET: i8;
    /// `d * sc` of each 16 weights.
    unsafe fn scales(p: *const u8) -> [f32; 16];
    /// The 32 unsigned codes of sub-block `g` (0..8).
    unsafe fn codes(p: *const u8, g: usize) -> __m256i;
}

pub(crate) struct Q6Kc;
pub(crate) struct Q3Kc;

impl Offset16 for Q6Kc {
    const BYTES: usize = 210;
    const OFFSET: i8 = 32;
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> [f32; 16] {
        let d = f16(p.add(208));
        std::array::from_fn(|i| d * (*p.add(192 + i) as i8) as f32)
    }
    #[inline(always)]
    unsafe fn codes(p: *const u8, g: usize) -> __m256i {
        q6k_codes(p, g)
    }
}

impl Offset16 for Q3Kc {
    const BYTES: usize = 110;
    const OFFSET: i8 = 4;
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> [f32; 16] {
        crate::quants::k_quants::scales_q3k(std::slice::from_raw_parts(p, 110))
    }
    #[inline(always)]
    unsafe fn codes(p: *const u8, g: usize) -> __m256i {
        q3k_codes(p, g)
    }
}

#[inline(always)]
pub(crate) unsafe fn load_offset16<F: Offset16>(p: *const u8) -> W16 {
    W16 {
        p,
        d: F::scales(p),
        m: [0.0; 16],
    }
}

/// [`Offset16`] formats against int8 activations: the offset subtracted as a second dot with the
/// offset's bytes, a scale per 16 weights applied to the i32 lanes (lanes 0-3 hold weights 0-15 of a
/// sub-block, lanes 4-7 weights 16-31).
pub(crate) struct Off16<F, D>(PhantomData<(F, D)>);

impl<F: Offset16, D: IDot> Kern for Off16<F, D> {
    type X = BlockQ8;
    type W = W16;
    type Acc = FAcc;
    const ELEMS: usize = 256;
    const BYTES: usize = F::BYTES;
    #[inline(always)]
    unsafe fn zero() -> FAcc {
        facc0()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> W16 {
        load_offset16::<F>(p)
    }
    #[inline(always)]
    unsafe fn dot(acc: &mut FAcc, w: &W16, x: *const BlockQ8) {
        let off = _mm256_set1_epi8(F::OFFSET);
        for g in 0..8 {
            let xb = &*x.add(g);
            let xq = qs(xb);
            let i = _mm256_sub_epi32(D::dot(F::codes(w.p, g), xq), D::dot(off, xq));
            let sc = _mm256_mul_ps(halves_ps(w.d[2 * g], w.d[2 * g + 1]), _mm256_set1_ps(xb.d));
            acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), sc, acc.v);
        }
    }
    #[inline(always)]
    unsafe fn finish(acc: FAcc) -> f32 {
        hsum(acc.v)
    }
}
