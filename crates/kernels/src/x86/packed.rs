//! Fast kernels over [`Packed`](crate::packed::Packed) groups of eight interleaved rows: each 32-byte
//! unit holds four codes of every row, so a `u8 x i8` dot product against four activation bytes
//! broadcast to all lanes leaves the eight rows' partial sums in the eight i32 lanes, and the scales of
//! eight rows multiply them as one vector. Generic over the integer primitive ([`IAcc`]: AVX2
//! `maddubs` or AVX-512 VNNI `vpdpbusd`) like the row-major kernels.

use super::{Avx2Dot, IDot, VnniDot};
use crate::matmul::Job;
use crate::packed::{GROUP, Q2K_Q, Q3K_Q, Q5K_Q, Q5_0_Q, Q6K_Q};
use crate::quants::{BlockQ16, BlockQ8, QK8};
use crate::simd::prefetch_bytes;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// Sums of `u8 x i8` products into i32 lanes for small codes: AVX2 keeps the pair sums in i16 between
/// calls (at most 8 calls for `u <= 15`: `8 * 2 * 15 * 127 < 2^15`; 4 for `u <= 32`), VNNI
/// accumulates i32 directly.
pub(crate) trait IAcc: IDot {
    /// Independent sums a long run of [`IAcc::add_small`] is split into, so that the run is not one
    /// chain of the instruction's latency: 1 for `maddubs` (its sums are one-cycle `vpaddw`s), 2 for
    /// `vpdpbusd` (a chain of eight at its latency was the eight-row VNNI kernels' bound: Q4_K decode
    /// 1.15x faster split in two, Zen 4).
    const CHAINS: usize;
    unsafe fn add_small(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    unsafe fn finish_small(acc: __m256i) -> __m256i;
}

impl IAcc for Avx2Dot {
    const CHAINS: usize = 1;
    #[inline(always)]
    unsafe fn add_small(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s))
    }
    #[inline(always)]
    unsafe fn finish_small(acc: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
    }
}

impl IAcc for VnniDot {
    const CHAINS: usize = 2;
    #[inline(always)]
    unsafe fn add_small(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn finish_small(acc: __m256i) -> __m256i {
        acc
    }
}

/// The i32 sums of [`IAcc::CHAINS`] partial sums (integers: the same whatever the split).
#[inline(always)]
unsafe fn finish_chains<D: IAcc>(i: [__m256i; 2]) -> __m256i {
    if D::CHAINS == 1 {
        D::finish_small(i[0])
    } else {
        _mm256_add_epi32(D::finish_small(i[0]), D::finish_small(i[1]))
    }
}

/// A packed block kernel: `setup` decodes what a record's tokens share (scales, unpacked codes),
/// `dot_tile` adds the products of the `T` tokens of a tile for the eight rows.
pub(crate) trait PackKern {
    /// Weights per block (activation blocks: `ELEMS / 32`).
    const ELEMS: usize;
    type S;
    unsafe fn setup(rec: *const u8) -> Self::S;
    unsafe fn dot_tile<const T: usize>(
        acc: [__m256; T],
        s: &Self::S,
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T];
}

/// How far ahead of the record being read decode prefetches (Q8_0 22 -> 26 GB/s, Q4_K 18 -> 22 on Zen 3;
/// 1-8 KiB measured alike within noise). The first token tile of a chunk prefetches too, whatever its
/// width: it brings the weights from memory, the later tiles find them in L2 (Q8_0 5632 x 2048 with
/// 4-16 tokens 1.1-1.4x faster on the AVX-512 Xeon; Q4_K, compute-bound there, unchanged).
pub(crate) const PF_DIST: usize = 2048;

/// Eight f16 at `p` as f32.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Four activation bytes from `at`, in every lane.
#[inline(always)]
unsafe fn bcast4(x: &BlockQ8, at: usize) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(x.qs.as_ptr().add(at) as *const i32))
}

#[inline(always)]
unsafe fn unit(p: *const u8, u: usize) -> __m256i {
    _mm256_loadu_si256(p.add(u * 4 * GROUP) as *const __m256i)
}

/// Low and high nibbles of a unit.
#[inline(always)]
unsafe fn nibbles(v: __m256i) -> (__m256i, __m256i) {
    let m = _mm256_set1_epi8(15);
    (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m))
}

pub(crate) struct PQ8_0<D>(PhantomData<D>);
pub(crate) struct PQ4<const OFFSET: bool, D>(PhantomData<D>);

impl<D: IAcc> PackKern for PQ8_0<D> {
    const ELEMS: usize = 32;
    type S = __m256;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> __m256 {
        f16x8(rec)
    }
    /// Unit by unit, each unit's codes and their absolute values shared by the `T` tokens (token by
    /// token they would need sixteen registers and spill): the same integers and float operations.
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        d: &__m256,
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let x = x.map(|p| &*p);
        let c = rec.add(2 * GROUP);
        let mut i = [_mm256_setzero_si256(); T];
        for k in 0..8 {
            let w = unit(c, k);
            let u = _mm256_abs_epi8(w);
            for j in 0..T {
                i[j] = _mm256_add_epi32(i[j], D::dot(u, _mm256_sign_epi8(bcast4(x[j], 4 * k), w)));
            }
        }
        for j in 0..T {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i[j]), _mm256_set1_ps(x[j].d));
            acc[j] = _mm256_fmadd_ps(*d, v, acc[j]);
        }
        acc
    }
}

/// Q4_0 (`OFFSET`: codes minus 8) and Q4_1 (`m` per row): scales and the eight nibble vectors.
pub(crate) struct Q4S {
    d: __m256,
    m: __m256,
    q: [__m256i; 8],
}

impl<const OFFSET: bool, D: IAcc> PackKern for PQ4<OFFSET, D> {
    const ELEMS: usize = 32;
    type S = Q4S;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> Q4S {
        let d = f16x8(rec);
        let (m, c) = if OFFSET {
            (_mm256_mul_ps(d, _mm256_set1_ps(-8.0)), rec.add(2 * GROUP))
        } else {
            (f16x8(rec.add(2 * GROUP)), rec.add(4 * GROUP))
        };
        let mut q = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            (q[k], q[k + 4]) = nibbles(unit(c, k));
        }
        Q4S { d, m, q }
    }
    /// Token by token (the nibbles are in registers already).
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        acc: [__m256; T],
        s: &Q4S,
        _rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        q4s_tile::<D, 8, T>(acc, s, x)
    }
}

/// The products of a [`Q4S`] record with `T` tokens, token by token: the eight code units against
/// the activations, `d` times the sum, `m` times the activation sum. `RUN`: the most units one AVX2
/// i16 sum holds (8 for codes up to 15, 4 for codes up to 31).
#[inline(always)]
unsafe fn q4s_tile<D: IAcc, const RUN: usize, const T: usize>(
    mut acc: [__m256; T],
    s: &Q4S,
    x: [*const BlockQ8; T],
) -> [__m256; T] {
    for (a, x) in acc.iter_mut().zip(x) {
        let x = &*x;
        let mut h = [_mm256_setzero_si256(); 2];
        for (u, &q) in s.q.iter().enumerate() {
            let c = if RUN == 8 { u % D::CHAINS } else { u / 4 };
            h[c] = D::add_small(h[c], q, bcast4(x, 4 * u));
        }
        let i = if RUN == 8 {
            finish_chains::<D>(h)
        } else {
            _mm256_add_epi32(D::finish_small(h[0]), D::finish_small(h[1]))
        };
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(x.d));
        *a = _mm256_fmadd_ps(s.m, _mm256_set1_ps(x.s), _mm256_fmadd_ps(s.d, v, *a));
    }
    acc
}

/// [`q4s_tile`] with int16 activations.
#[inline(always)]
unsafe fn q4s_dot16<W: Wide16, const T: usize>(mut acc: [__m256; T], s: &Q4S, x: [*const BlockQ16; T]) -> [__m256; T] {
    let x = x.map(|p| &*p);
    let mut a = [W::zero(); T];
    for (u, &q) in s.q.iter().enumerate() {
        madd16::<W, T>(&mut a, q, x, 4 * u);
    }
    finish16::<W, T>(&mut acc, s.d, a, x);
    for j in 0..T {
        acc[j] = _mm256_fmadd_ps(s.m, _mm256_set1_ps(x[j].s), acc[j]);
    }
    acc
}

/// Q5_0: codes 0..=31 standing for `q − 16` (`−16 d` times the block's activation sum, as Q4_0's
/// `−8 d`), assembled from the file's five bits per weight as Q5_K's ([`q5k_codes`]); `Q4S` holds `d`,
/// `−16 d` and the eight code units in weight order.
pub(crate) struct PQ5_0<D>(PhantomData<D>);

impl<D: IAcc> PackKern for PQ5_0<D> {
    const ELEMS: usize = 32;
    type S = Q4S;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> Q4S {
        let d = f16x8(rec);
        let (lo, hi) = (q5k_codes(rec.add(Q5_0_Q), 0, 0), q5k_codes(rec.add(Q5_0_Q), 0, 1));
        Q4S {
            d,
            m: _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
            q: [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]],
        }
    }
    /// Token by token, in two sums of four units (the most an AVX2 i16 lane holds for codes up to 31).
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        acc: [__m256; T],
        s: &Q4S,
        _rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        q4s_tile::<D, 4, T>(acc, s, x)
    }
}

impl<D: IAcc> WideKern for PQ5_0<D> {
    /// The code units (0..=31, valid signed bytes) against int16 activations, then as Q4_0's.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        acc: [__m256; T],
        s: &Q4S,
        _rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        q4s_dot16::<W, T>(acc, s, x)
    }
}

/// Q4_K: per sub-block, `d * sc` and `-dmin * m` of the eight rows.
pub(crate) struct PQ4K<D>(PhantomData<D>);

pub(crate) struct Q4KS {
    d: [__m256; 8],
    m: [__m256; 8],
}

/// Eight bytes at `p` as f32.
#[inline(always)]
unsafe fn u8x8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

impl<D: IAcc> PackKern for PQ4K<D> {
    const ELEMS: usize = 256;
    type S = Q4KS;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> Q4KS {
        let d = f16x8(rec);
        let dmin = _mm256_sub_ps(_mm256_setzero_ps(), f16x8(rec.add(2 * GROUP)));
        // Loops, not `array::from_fn`: a closure does not take the target features of the kernel it
        // is inlined into, and its intrinsics became calls (out of line, through memory).
        let mut s = Q4KS {
            d: [d; 8],
            m: [dmin; 8],
        };
        for i in 0..8 {
            s.d[i] = _mm256_mul_ps(d, u8x8(rec.add(32 + i * GROUP)));
            s.m[i] = _mm256_mul_ps(dmin, u8x8(rec.add(96 + i * GROUP)));
        }
        s
    }
    /// Each unit's nibbles split once for the `T` tokens; per token the same sums in the same order.
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        s: &Q4KS,
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let c = rec.add(160);
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            let (mut il, mut ih) = ([[_mm256_setzero_si256(); 2]; T], [[_mm256_setzero_si256(); 2]; T]);
            for k in 0..8 {
                let (lo, hi) = nibbles(unit(c, 8 * j + k));
                let chain = k % D::CHAINS;
                for t in 0..T {
                    il[t][chain] = D::add_small(il[t][chain], lo, bcast4(xl[t], 4 * k));
                    ih[t][chain] = D::add_small(ih[t][chain], hi, bcast4(xh[t], 4 * k));
                }
            }
            for t in 0..T {
                for (sub, i, xb) in [(2 * j, il[t], xl[t]), (2 * j + 1, ih[t], xh[t])] {
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(finish_chains::<D>(i)), _mm256_set1_ps(xb.d));
                    acc[t] = _mm256_fmadd_ps(s.d[sub], v, acc[t]);
                    acc[t] = _mm256_fmadd_ps(s.m[sub], _mm256_set1_ps(xb.s), acc[t]);
                }
            }
        }
        acc
    }
}

/// Q5_K: codes 0..=31 assembled from the file's five bits per weight ([`q5k_codes`]) into a byte each,
/// Q4_K's scales and minimums per sub-block of 32 (its setup).
pub(crate) struct PQ5K<D>(PhantomData<D>);

impl<D: IAcc> PackKern for PQ5K<D> {
    const ELEMS: usize = 256;
    type S = Q4KS;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> Q4KS {
        PQ4K::<D>::setup(rec)
    }
    /// Per sub-block: eight units, in two sums of four (the most an AVX2 i16 lane holds for codes
    /// up to 31), then `d * sc` and `−dmin * m` as Q4_K's.
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        s: &Q4KS,
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let c = rec.add(Q5K_Q);
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            let mut i = [_mm256_setzero_si256(); T];
            for half in 0..2 {
                let q = q5k_codes(c, g, half);
                let mut h = [_mm256_setzero_si256(); T];
                for (k, &u) in q.iter().enumerate() {
                    for t in 0..T {
                        h[t] = D::add_small(h[t], u, bcast4(xg[t], 16 * half + 4 * k));
                    }
                }
                for t in 0..T {
                    i[t] = _mm256_add_epi32(i[t], D::finish_small(h[t]));
                }
            }
            for t in 0..T {
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i[t]), _mm256_set1_ps(xg[t].d));
                acc[t] = _mm256_fmadd_ps(s.d[g], v, acc[t]);
                acc[t] = _mm256_fmadd_ps(s.m[g], _mm256_set1_ps(xg[t].s), acc[t]);
            }
        }
        acc
    }
}

impl<D: IAcc> WideKern for PQ5K<D> {
    /// The codes (0..=31, valid signed bytes) against int16 activations, then as the int8 kernel.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        s: &Q4KS,
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let c = rec.add(Q5K_Q);
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            let mut a = [W::zero(); T];
            for half in 0..2 {
                for (k, &u) in q5k_codes(c, g, half).iter().enumerate() {
                    madd16::<W, T>(&mut a, u, xg, 16 * half + 4 * k);
                }
            }
            finish16::<W, T>(&mut acc, s.d[g], a, xg);
            for t in 0..T {
                acc[t] = _mm256_fmadd_ps(s.m[g], _mm256_set1_ps(xg[t].s), acc[t]);
            }
        }
        acc
    }
}

/// Units `4h..4h + 4` (codes 0..=31) of Q5_K sub-block `g` from its five vectors (the layout of
/// [`crate::packed::Q5K_Q`]).
#[inline(always)]
pub(crate) unsafe fn q5k_codes(c: *const u8, g: usize, h: usize) -> [__m256i; 4] {
    let p = c.add(160 * g);
    let hi = _mm256_loadu_si256(p.add(128) as *const __m256i);
    let (m15, m16) = (_mm256_set1_epi8(15), _mm256_set1_epi8(16));
    // Unit k's top bits moved from bit k to bit 4 of each byte (16-bit shifts: the bits a byte takes
    // from its neighbour are masked off).
    let top = match h {
        0 => [
            _mm256_slli_epi16::<4>(hi),
            _mm256_slli_epi16::<3>(hi),
            _mm256_slli_epi16::<2>(hi),
            _mm256_slli_epi16::<1>(hi),
        ],
        _ => [
            hi,
            _mm256_srli_epi16::<1>(hi),
            _mm256_srli_epi16::<2>(hi),
            _mm256_srli_epi16::<3>(hi),
        ],
    };
    let mut q = [_mm256_setzero_si256(); 4];
    for m in 0..4 {
        let n = _mm256_loadu_si256(p.add(32 * m) as *const __m256i);
        let n = if h == 0 { n } else { _mm256_srli_epi16::<4>(n) };
        q[m] = _mm256_or_si256(_mm256_and_si256(n, m15), _mm256_and_si256(top[m], m16));
    }
    q
}

/// Q6_K: codes `q` in 0..=63 standing for `q − 32`, assembled from the file's six bits per weight
/// ([`q6k_codes`]) into a byte each: `u8 x i8` products of the codes as they are (two `maddubs` per i16
/// lane stay in range: `2 * 2 * 63 * 128 < 2^15`), minus `32 Σ x` per 16 activations ([`BlockQ8::h`]):
/// the same integers as `Σ (q − 32) x`; a scale per 16 weights (units 0-3 and 4-7 of a sub-block).
/// (Packed a byte per code before, 30 % more to read: decode from memory is 1.1-1.4x faster with the
/// assembly, Zen 4; the AVX2 kernel in cache 1.2-1.7x slower, still above a 2-thread memory stream.)
pub(crate) struct PQ6K<D>(PhantomData<D>);

impl<D: IAcc> PackKern for PQ6K<D> {
    const ELEMS: usize = 256;
    type S = [__m256; 16];
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> [__m256; 16] {
        let d = f16x8(rec);
        let mut s = [d; 16]; // a loop, not `array::from_fn`: as Q4_K's setup
        for (i, s) in s.iter_mut().enumerate() {
            let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(rec.add(16 + i * GROUP) as *const __m128i));
            *s = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc));
        }
        s
    }
    /// Half sub-block by half sub-block, its codes assembled once for the `T` tokens; per token the
    /// same sums in the same order whatever `T`.
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        s: &[__m256; 16],
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let c = rec.add(Q6K_Q);
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let q = q6k_codes(c, g, half);
                let at = 16 * half;
                for t in 0..T {
                    let i = _mm256_add_epi32(
                        q6k_two::<D>(q[0], q[1], xg[t], at),
                        q6k_two::<D>(q[2], q[3], xg[t], at + 8),
                    );
                    let i = _mm256_sub_epi32(i, _mm256_set1_epi32(32 * xg[t].h[half] as i32));
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(xg[t].d));
                    acc[t] = _mm256_fmadd_ps(s[2 * g + half], v, acc[t]);
                }
            }
        }
        acc
    }
}

/// The four code units (0..=63) of half `h` of Q6_K group `g` from their three vectors (the layout of
/// [`crate::packed::Q6K_Q`]).
#[inline(always)]
pub(crate) unsafe fn q6k_codes(c: *const u8, g: usize, h: usize) -> [__m256i; 4] {
    // No closures here: they would not take the kernel's target features (see Q4_K's setup).
    let p = c.add(192 * g + 96 * h);
    let x1 = _mm256_loadu_si256(p as *const __m256i);
    let x2 = _mm256_loadu_si256(p.add(32) as *const __m256i);
    let y = _mm256_loadu_si256(p.add(64) as *const __m256i);
    let (m63, m15, m48) = (_mm256_set1_epi8(63), _mm256_set1_epi8(15), _mm256_set1_epi8(48));
    [
        _mm256_and_si256(x1, m63),
        _mm256_or_si256(
            _mm256_and_si256(y, m15),
            _mm256_and_si256(_mm256_srli_epi16::<2>(x1), m48),
        ),
        _mm256_and_si256(x2, m63),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(y), m15),
            _mm256_and_si256(_mm256_srli_epi16::<2>(x2), m48),
        ),
    ]
}

/// Products of two Q6_K code units with the activation bytes from `at` (and `at + 4`), as i32 lanes
/// (two `maddubs` sums are the most an i16 lane holds for codes up to 63).
#[inline(always)]
unsafe fn q6k_two<D: IAcc>(qa: __m256i, qb: __m256i, x: &BlockQ8, at: usize) -> __m256i {
    let i = D::add_small(_mm256_setzero_si256(), qa, bcast4(x, at));
    D::finish_small(D::add_small(i, qb, bcast4(x, at + 4)))
}

/// Unit `u` of 2-bit codes shifted right by `2s` and masked: four codes (of weights `32s + 4(u % 8)..` of
/// half `u / 8`) of each of eight rows, in 0..4.
#[inline(always)]
unsafe fn codes2(c: *const u8, u: usize, s: usize) -> __m256i {
    let v = _mm256_srl_epi16(unit(c, u), _mm_cvtsi32_si128(2 * s as i32));
    _mm256_and_si256(v, _mm256_set1_epi8(3))
}

/// Eight bytes at `p`, low nibbles and high nibbles, as f32 (Q2_K's scales and minimums).
#[inline(always)]
unsafe fn nib8(p: *const u8) -> (__m256, __m256) {
    let b = _mm_loadl_epi64(p as *const __m128i);
    let m = _mm_set1_epi8(15);
    let f = |v| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    (f(_mm_and_si128(b, m)), f(_mm_and_si128(_mm_srli_epi16::<4>(b), m)))
}

/// Q2_K: per 16 weights `d * sc · Σ q x − dmin * m · Σ x` ([`BlockQ8::h`] for `Σ x`). Sub-block
/// `g = 4n + s` takes code units `8n..8n + 8` at shift `2s`; each half of 16 is four units.
pub(crate) struct PQ2K<D>(PhantomData<D>);

impl<D: IAcc> PackKern for PQ2K<D> {
    const ELEMS: usize = 256;
    /// `d` and `−dmin` of the eight rows.
    type S = (__m256, __m256);
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> (__m256, __m256) {
        let dmin = f16x8(rec.add(2 * GROUP));
        (f16x8(rec), _mm256_sub_ps(_mm256_setzero_ps(), dmin))
    }
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        &(d, dmin): &(__m256, __m256),
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let c = rec.add(Q2K_Q);
        for g in 0..8 {
            let (n, sh) = (g / 4, g % 4);
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let mut i = [_mm256_setzero_si256(); T];
                for k in 4 * half..4 * half + 4 {
                    let q = codes2(c, 8 * n + k, sh);
                    for t in 0..T {
                        i[t] = D::add_small(i[t], q, bcast4(xg[t], 4 * k));
                    }
                }
                let (sc, m) = nib8(rec.add(32 + (2 * g + half) * GROUP));
                let (ds, ms) = (_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, m));
                for t in 0..T {
                    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(D::finish_small(i[t])), _mm256_set1_ps(xg[t].d));
                    acc[t] = _mm256_fmadd_ps(ds, v, acc[t]);
                    let sx = xg[t].d * xg[t].h[half] as f32;
                    acc[t] = _mm256_fmadd_ps(ms, _mm256_set1_ps(sx), acc[t]);
                }
            }
        }
        acc
    }
}

/// Q3_K: codes `low + 4 high` in 0..8 (nibbles, as Q4_K's) standing for `q − 4` (`Σ q x − 4 Σ x` per
/// 16 activations), a signed scale per 16 weights.
pub(crate) struct PQ3K<D>(PhantomData<D>);

/// The scales `d * sc` of Q3_K's 16 weights `i` (0..16) of eight rows.
#[inline(always)]
unsafe fn q3k_scales(rec: *const u8, d: __m256, i: usize) -> __m256 {
    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(rec.add(16 + i * GROUP) as *const __m128i));
    _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc))
}

impl<D: IAcc> PackKern for PQ3K<D> {
    const ELEMS: usize = 256;
    type S = __m256;
    #[inline(always)]
    unsafe fn setup(rec: *const u8) -> __m256 {
        f16x8(rec)
    }
    /// Per sub-block pair and half: each unit's nibbles split once for the tile's tokens.
    #[inline(always)]
    unsafe fn dot_tile<const T: usize>(
        mut acc: [__m256; T],
        d: &__m256,
        rec: *const u8,
        x: [*const BlockQ8; T],
    ) -> [__m256; T] {
        let c = rec.add(Q3K_Q);
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            for half in 0..2 {
                let (mut il, mut ih) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
                for k in 4 * half..4 * half + 4 {
                    let (lo, hi) = nibbles(unit(c, 8 * j + k));
                    for t in 0..T {
                        il[t] = D::add_small(il[t], lo, bcast4(xl[t], 4 * k));
                        ih[t] = D::add_small(ih[t], hi, bcast4(xh[t], 4 * k));
                    }
                }
                let (sl, sh) = (q3k_scales(rec, *d, 4 * j + half), q3k_scales(rec, *d, 4 * j + 2 + half));
                for t in 0..T {
                    for (s, i, xb) in [(sl, il[t], xl[t]), (sh, ih[t], xh[t])] {
                        let i = _mm256_sub_epi32(D::finish_small(i), _mm256_set1_epi32(4 * xb.h[half] as i32));
                        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(xb.d));
                        acc[t] = _mm256_fmadd_ps(s, v, acc[t]);
                    }
                }
            }
        }
        acc
    }
}

/// A packed format's product with int16 activations ([`BlockQ16`]), for `Precision::Wide`: the codes
/// of a unit are decoded and widened once for the `T` tokens of a tile.
pub(crate) trait WideKern: PackKern {
    unsafe fn dot16<W: Wide16, const T: usize>(
        acc: [__m256; T],
        s: &Self::S,
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T];
}

/// The int16 products of the wide kernels: a unit (four signed byte codes of each of eight rows) widened
/// once, then per token multiplied by four int16 activations broadcast to every row, each i32 lane
/// summing two products of one row (lanes: row 0's two pairs, row 1's, ...); [`Wide16::rows`] adds the
/// pairs. AVX2: `madd` on two 256-bit halves; AVX-512 VNNI: one `vpdpwssd` on 512 bits — the same
/// integers (exact, no saturation), so the two levels give the same bits. (The AVX-512 level's
/// sixteen-row kernels take the activations as byte planes instead: `x86::packed512::Q16Acts`.)
pub(crate) trait Wide16 {
    type W: Copy;
    type A: Copy;
    unsafe fn zero() -> Self::A;
    unsafe fn widen(u: __m256i) -> Self::W;
    unsafe fn madd(a: Self::A, w: &Self::W, x: &BlockQ16, at: usize) -> Self::A;
    /// The eight rows' sums, as f32 in row order.
    unsafe fn rows(a: Self::A) -> __m256;
}

/// AVX2: rows 0-3 in the low accumulator, 4-7 in the high one.
pub(crate) struct Madd16;
/// AVX-512 VNNI: rows 0-3 in the low 256 bits, 4-7 in the high.
pub(crate) struct Dpwssd;

/// Four int16 activations from `at`.
#[inline(always)]
unsafe fn x4(x: &BlockQ16, at: usize) -> i64 {
    std::ptr::read_unaligned(x.qs.as_ptr().add(at) as *const i64)
}

impl Wide16 for Madd16 {
    type W = (__m256i, __m256i);
    type A = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn zero() -> Self::A {
        (_mm256_setzero_si256(), _mm256_setzero_si256())
    }
    #[inline(always)]
    unsafe fn widen(w: __m256i) -> Self::W {
        (
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(w)),
        )
    }
    #[inline(always)]
    unsafe fn madd(a: Self::A, w: &Self::W, x: &BlockQ16, at: usize) -> Self::A {
        let xv = _mm256_set1_epi64x(x4(x, at));
        (
            _mm256_add_epi32(a.0, _mm256_madd_epi16(w.0, xv)),
            _mm256_add_epi32(a.1, _mm256_madd_epi16(w.1, xv)),
        )
    }
    #[inline(always)]
    unsafe fn rows(a: Self::A) -> __m256 {
        rows8(a.0, a.1)
    }
}

impl Wide16 for Dpwssd {
    type W = __m512i;
    type A = __m512i;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn widen(w: __m256i) -> __m512i {
        _mm512_cvtepi8_epi16(w)
    }
    #[inline(always)]
    unsafe fn madd(a: __m512i, w: &__m512i, x: &BlockQ16, at: usize) -> __m512i {
        _mm512_dpwssd_epi32(a, *w, _mm512_set1_epi64(x4(x, at)))
    }
    #[inline(always)]
    unsafe fn rows(a: __m512i) -> __m256 {
        rows8(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a))
    }
}

/// The eight row sums of two accumulators: `lo` holds (pairs of) rows 0-3, `hi` rows 4-7, each row's
/// two i32 adjacent; summed and put in row order.
#[inline(always)]
unsafe fn rows8(lo: __m256i, hi: __m256i) -> __m256 {
    // Per 128-bit lane: [r0 r1 r4 r5] and [r2 r3 r6 r7].
    let s = _mm256_hadd_epi32(lo, hi);
    _mm256_cvtepi32_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(s))
}

/// Products of one unit (four signed byte codes of each of eight rows, `w`) with four int16
/// activations from `at` of each token, added to the tokens' accumulators.
#[inline(always)]
unsafe fn madd16<W: Wide16, const T: usize>(a: &mut [W::A; T], w: __m256i, x: [&BlockQ16; T], at: usize) {
    let wd = W::widen(w);
    for j in 0..T {
        a[j] = W::madd(a[j], &wd, x[j], at);
    }
}

/// Adds `scale * rows(a) * x.d` to each token's accumulator.
#[inline(always)]
unsafe fn finish16<W: Wide16, const T: usize>(acc: &mut [__m256; T], scale: __m256, a: [W::A; T], x: [&BlockQ16; T]) {
    for j in 0..T {
        let v = _mm256_mul_ps(W::rows(a[j]), _mm256_set1_ps(x[j].d));
        acc[j] = _mm256_fmadd_ps(scale, v, acc[j]);
    }
}

impl<D: IAcc> WideKern for PQ8_0<D> {
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        d: &__m256,
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let x = x.map(|p| &*p);
        let c = rec.add(2 * GROUP);
        let mut a = [W::zero(); T];
        for k in 0..8 {
            madd16::<W, T>(&mut a, unit(c, k), x, 4 * k);
        }
        finish16::<W, T>(&mut acc, *d, a, x);
        acc
    }
}

impl<D: IAcc> WideKern for PQ6K<D> {
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        s: &[__m256; 16],
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let c = rec.add(Q6K_Q);
        let m32 = _mm256_set1_epi8(32);
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let q = q6k_codes(c, g, half);
                let mut a = [W::zero(); T];
                for (k, &q) in q.iter().enumerate() {
                    madd16::<W, T>(&mut a, _mm256_sub_epi8(q, m32), xg, 16 * half + 4 * k);
                }
                finish16::<W, T>(&mut acc, s[2 * g + half], a, xg);
            }
        }
        acc
    }
}

impl<const OFFSET: bool, D: IAcc> WideKern for PQ4<OFFSET, D> {
    /// The nibble vectors of [`PackKern::setup`] against int16 activations; the offset (Q4_0's `−8 d`)
    /// or minimum (Q4_1's `m`) times the block's activation sum.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        acc: [__m256; T],
        s: &Q4S,
        _rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        q4s_dot16::<W, T>(acc, s, x)
    }
}

impl<D: IAcc> WideKern for PQ4K<D> {
    /// Per sub-block: the nibbles against int16 activations, `d * sc` and `−dmin * m` as in the int8
    /// kernel.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        s: &Q4KS,
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let c = rec.add(160);
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            let (mut al, mut ah) = ([W::zero(); T], [W::zero(); T]);
            for k in 0..8 {
                let (lo, hi) = nibbles(unit(c, 8 * j + k));
                madd16::<W, T>(&mut al, lo, xl, 4 * k);
                madd16::<W, T>(&mut ah, hi, xh, 4 * k);
            }
            finish16::<W, T>(&mut acc, s.d[2 * j], al, xl);
            for t in 0..T {
                acc[t] = _mm256_fmadd_ps(s.m[2 * j], _mm256_set1_ps(xl[t].s), acc[t]);
            }
            finish16::<W, T>(&mut acc, s.d[2 * j + 1], ah, xh);
            for t in 0..T {
                acc[t] = _mm256_fmadd_ps(s.m[2 * j + 1], _mm256_set1_ps(xh[t].s), acc[t]);
            }
        }
        acc
    }
}

impl<D: IAcc> WideKern for PQ2K<D> {
    /// Per 16 weights: the codes against int16 activations times `d * sc`, then `−dmin * m` times the
    /// half's activation sum ([`BlockQ16::h`]), as the int8 kernel.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        &(d, dmin): &(__m256, __m256),
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let c = rec.add(Q2K_Q);
        for g in 0..8 {
            let (n, sh) = (g / 4, g % 4);
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let mut a = [W::zero(); T];
                for k in 4 * half..4 * half + 4 {
                    madd16::<W, T>(&mut a, codes2(c, 8 * n + k, sh), xg, 4 * k);
                }
                let (sc, m) = nib8(rec.add(32 + (2 * g + half) * GROUP));
                finish16::<W, T>(&mut acc, _mm256_mul_ps(d, sc), a, xg);
                let ms = _mm256_mul_ps(dmin, m);
                for t in 0..T {
                    let sx = xg[t].d * xg[t].h[half] as f32;
                    acc[t] = _mm256_fmadd_ps(ms, _mm256_set1_ps(sx), acc[t]);
                }
            }
        }
        acc
    }
}

impl<D: IAcc> WideKern for PQ3K<D> {
    /// The nibbles minus 4 (signed bytes) against int16 activations, times `d * sc`, in the int8
    /// kernel's order.
    #[inline(always)]
    unsafe fn dot16<W: Wide16, const T: usize>(
        mut acc: [__m256; T],
        d: &__m256,
        rec: *const u8,
        x: [*const BlockQ16; T],
    ) -> [__m256; T] {
        let c = rec.add(Q3K_Q);
        let four = _mm256_set1_epi8(4);
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            for half in 0..2 {
                let (mut al, mut ah) = ([W::zero(); T], [W::zero(); T]);
                for k in 4 * half..4 * half + 4 {
                    let (lo, hi) = nibbles(unit(c, 8 * j + k));
                    madd16::<W, T>(&mut al, _mm256_sub_epi8(lo, four), xl, 4 * k);
                    madd16::<W, T>(&mut ah, _mm256_sub_epi8(hi, four), xh, 4 * k);
                }
                finish16::<W, T>(&mut acc, q3k_scales(rec, *d, 4 * j + half), al, xl);
                finish16::<W, T>(&mut acc, q3k_scales(rec, *d, 4 * j + 2 + half), ah, xh);
            }
        }
        acc
    }
}

/// [`run`] with int16 activations.
#[inline(always)]
pub(crate) unsafe fn run_wide<K: WideKern, W: Wide16>(job: &Job, g0: usize, g1: usize, prefetch: bool) {
    let mut b0 = g0;
    while b0 < g1 {
        let b1 = g1.min(b0 + BLOCK);
        let mut t = 0;
        while t + 4 <= job.n {
            for g in b0..b1 {
                tile_wide::<K, W, 4>(job, g, t, prefetch);
            }
            t += 4;
        }
        for g in b0..b1 {
            match job.n - t {
                0 => break,
                1 => tile_wide::<K, W, 1>(job, g, t, prefetch),
                2 => tile_wide::<K, W, 2>(job, g, t, prefetch),
                _ => tile_wide::<K, W, 3>(job, g, t, prefetch),
            }
        }
        b0 = b1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_wide_avx2<K: WideKern>(job: &Job, g0: usize, g1: usize) {
    run_wide::<K, Madd16>(job, g0, g1, true)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_wide_avx512<K: WideKern>(job: &Job, g0: usize, g1: usize) {
    run_wide::<K, Dpwssd>(job, g0, g1, crate::simd::prefetch_512())
}

#[inline(always)]
unsafe fn tile_wide<K: WideKern, W: Wide16, const T: usize>(job: &Job, g: usize, t: usize, prefetch: bool) {
    let p = job.packed.expect("packed job");
    let (nb, rec) = (job.cols / K::ELEMS, p.rec);
    let base = p.group(g).as_ptr();
    let per_tok = job.cols / QK8;
    let xp: [*const BlockQ16; T] = std::array::from_fn(|j| job.xw[(t + j) * per_tok..].as_ptr());
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let r = base.add(b * rec);
        if prefetch && t == 0 {
            prefetch_bytes(r.wrapping_add(PF_DIST), rec);
        }
        let mut x = xp;
        for p in &mut x {
            *p = p.add(b * K::ELEMS / QK8);
        }
        acc = K::dot16::<W, T>(acc, &K::setup(r), r, x);
    }
    for (j, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(job.y.add((t + j) * job.rows + g * GROUP), *a);
    }
}

/// The int16-activation packed kernel for `dtype` at `level`, if there is one: AVX2 `madd`, or
/// AVX-512 VNNI `vpdpwssd` (the same integers).
pub(crate) fn select_wide(dtype: crate::DType, level: crate::Simd) -> Option<crate::matmul::RowsFn> {
    use crate::{DType, Simd};
    macro_rules! pick {
        ($run:ident, $D:ty) => {
            Some(match dtype {
                DType::Q8_0 => $run::<PQ8_0<$D>> as crate::matmul::RowsFn,
                DType::Q6K => $run::<PQ6K<$D>>,
                DType::Q4_0 => $run::<PQ4<true, $D>>,
                DType::Q5_0 => $run::<PQ5_0<$D>>,
                DType::Q4_1 => $run::<PQ4<false, $D>>,
                DType::Q4K => $run::<PQ4K<$D>>,
                DType::Q2K => $run::<PQ2K<$D>>,
                DType::Q5K => $run::<PQ5K<$D>>,
                DType::Q3K => $run::<PQ3K<$D>>,
                _ => return None,
            })
        };
    }
    match level {
        Simd::Avx2 if Simd::Avx2.available() => pick!(run_wide_avx2, Avx2Dot),
        Simd::Avx512 if Simd::Avx512.available() => {
            super::packed512::select_wide(dtype).or_else(|| pick!(run_wide_avx512, VnniDot))
        }
        _ => None,
    }
}

/// Group `g` (rows `8g..8g+8`) for tokens `t..t+T`, with int8 activations: each record's shared state
/// is decoded once for the `T` tokens.
#[inline(always)]
unsafe fn tile<K: PackKern, const T: usize>(job: &Job, g: usize, t: usize, prefetch: bool) {
    let p = job.packed.expect("packed job");
    let (nb, rec) = (job.cols / K::ELEMS, p.rec);
    let base = p.group(g).as_ptr();
    let per_tok = job.cols / QK8;
    let xp: [*const BlockQ8; T] = std::array::from_fn(|j| job.xq[(t + j) * per_tok..].as_ptr());
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let r = base.add(b * rec);
        if prefetch && t == 0 {
            prefetch_bytes(r.wrapping_add(PF_DIST), rec);
        }
        let s = K::setup(r);
        acc = K::dot_tile(acc, &s, r, xp.map(|p| p.add(b * K::ELEMS / QK8)));
    }
    for (j, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(job.y.add((t + j) * job.rows + g * GROUP), *a);
    }
}

/// Groups per block of the packed kernels' passes: every token tile passes over a block's weights (32
/// rows: 37 KB of Q4_K at 2048 columns) while they are in L2, so the pool's chunks may be of any size
/// — one token's or a few's (a verification pass) in big chunks that stream, many tokens' in small ones.
pub(crate) const BLOCK: usize = 4;

/// Groups `g0..g1` for every token of the job, block by block ([`BLOCK`]); tokens four at a time, the
/// last one to three tokens in one tile (a tile decodes each record once for all its tokens: three
/// one-token tiles would decode them three times). A token's sums do not depend on its tile: the same
/// bits in any pass.
#[inline(always)]
pub(crate) unsafe fn run<K: PackKern>(job: &Job, g0: usize, g1: usize, prefetch: bool) {
    let mut b0 = g0;
    while b0 < g1 {
        let b1 = g1.min(b0 + BLOCK);
        let mut t = 0;
        while t + 4 <= job.n {
            for g in b0..b1 {
                tile::<K, 4>(job, g, t, prefetch);
            }
            t += 4;
        }
        for g in b0..b1 {
            match job.n - t {
                0 => break,
                1 => tile::<K, 1>(job, g, t, prefetch),
                2 => tile::<K, 2>(job, g, t, prefetch),
                _ => tile::<K, 3>(job, g, t, prefetch),
            }
        }
        b0 = b1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: PackKern>(job: &Job, g0: usize, g1: usize) {
    run::<K>(job, g0, g1, true)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_avx512<K: PackKern>(job: &Job, g0: usize, g1: usize) {
    run::<K>(job, g0, g1, crate::simd::prefetch_512())
}

/// The packed kernel for `dtype` at `level` (groups `g0..g1` of a job), if there is one.
pub(crate) fn select(dtype: crate::DType, level: crate::Simd) -> Option<crate::matmul::RowsFn> {
    use crate::{DType, Simd};
    macro_rules! pick {
        ($run:ident, $D:ty) => {
            Some(match dtype {
                DType::Q8_0 => $run::<PQ8_0<$D>> as crate::matmul::RowsFn,
                DType::Q4_0 => $run::<PQ4<true, $D>>,
                DType::Q5_0 => $run::<PQ5_0<$D>>,
                DType::Q4_1 => $run::<PQ4<false, $D>>,
                DType::Q4K => $run::<PQ4K<$D>>,
                DType::Q6K => $run::<PQ6K<$D>>,
                DType::Q2K => $run::<PQ2K<$D>>,
                DType::Q5K => $run::<PQ5K<$D>>,
                DType::Q3K => $run::<PQ3K<$D>>,
                _ => return None,
            })
        };
    }
    match level {
        Simd::Avx2 if Simd::Avx2.available() => pick!(run_avx2, Avx2Dot),
        Simd::Avx512 if Simd::Avx512.available() => {
            super::packed512::select(dtype).or_else(|| pick!(run_avx512, VnniDot))
        }
        _ => None,
    }
}
