//! AVX-512 kernels over packed rows: two groups of eight interleaved rows side by side in one 512-bit
//! register (sixteen rows per vector), so each activation broadcast, integer dot product and float
//! epilogue serves sixteen rows instead of eight (ik_llama.cpp's `_r8` kernels pair groups the same
//! way). Every lane does what the 256-bit kernels of [`super::packed`] do for its row — the same
//! integers and the same float operations in the same order — so both give the same bits.
//!
//! Q8_0 has its own trick here: `vpdpbusd` multiplies unsigned by signed bytes, so instead of taking
//! the codes' absolute values and moving their signs onto the activations token by token (two
//! instructions per token and unit), the codes are shifted to unsigned once per unit (`w + 128`, an
//! exclusive-or with `0x80`) and `128 Σ x` is taken off the token's integer sum: the same integer.
//!
//! The same kernels serve `Precision::Wide` ([`Act16`]): its int16 activations split into two byte
//! planes, `q = 256 hi + lo`, each multiplied by the codes with `vpdpbusd` — the integers of an int16
//! product at twice an int8 product's instructions, without widening the codes to 16 bits as the
//! eight-row `vpdpwssd` kernels do (Qwen2.5-Coder-1.5B Q4_K_M at the default precision, Zen 4:
//! prefill 1.35-1.5x, a pass verifying 8 tokens 1.2x, decode 1.04-1.08x).

use super::packed::{WideKern, PF_DIST, PQ2K, PQ3K, PQ4, PQ4K, PQ5K, PQ5_0, PQ6K, PQ8_0};
use super::VnniDot;
use crate::matmul::Job;
use crate::packed::{GROUP, Q2K_Q, Q3K_Q, Q5K_Q, Q5_0_Q, Q6K_Q};
use crate::quants::{ActScales, BlockQ16P, BlockQ8, QK8};
use crate::simd::prefetch_bytes;
use std::arch::x86_64::*;

/// A block kernel over two packed records (rows `0..8` from `r0`, `8..16` from `r1`): `setup` decodes
/// what the tile's tokens share, `dot_tile` adds the products of `T` tokens.
pub(crate) trait Kern16 {
    /// Weights per block.
    const ELEMS: usize;
    type S;
    /// The eight-row kernel of the format (an odd last group; decode where eight rows stream faster).
    type K8: WideKern;
    unsafe fn setup(r0: *const u8, r1: *const u8) -> Self::S;
    unsafe fn dot_tile<A: Act16, const T: usize>(
        acc: [__m512; T],
        s: &Self::S,
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T];
}

/// The activations the sixteen-row kernels multiply the codes by: int8 blocks ([`Q8Acts`],
/// `Precision::Fast`: one `vpdpbusd` per unit and token) or int16 ones as two byte planes
/// ([`Q16Acts`], `Precision::Wide`: `q = 256 hi + lo`, one `vpdpbusd` per plane — the codes as
/// unsigned bytes against the signed `hi`, as signed bytes against the unsigned `lo` — the integers
/// of `vpdpwssd` without widening the codes to 16 bits, which made the eight-row int16 kernels
/// twice as slow as the int8 ones in cache).
pub(crate) trait Act16 {
    type B: ActScales;
    /// Integer sums of sixteen rows.
    type I: Copy;
    /// Whether a pass runs the eight-row kernels throughout where [`crate::simd::decode_eight_rows`].
    fn eight_rows(job: &Job) -> bool;
    /// Whether a tail of one to three tokens joins the last four-token tile (the registers hold it).
    const JOIN_TAIL: bool;
    fn acts<'a>(job: &Job<'a>) -> &'a [Self::B];
    unsafe fn zero() -> Self::I;
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    /// `i + Σ w x` over four codes of each row from activation `at` on: codes in `0..=127`.
    unsafe fn dot(i: Self::I, w: __m512i, x: &Self::B, at: usize) -> Self::I;
    /// The same for signed codes `w` given with `u = w ^ 0x80` (Q8_0); [`Act16::total_signed`] ends it.
    unsafe fn dot_signed(i: Self::I, w: __m512i, u: __m512i, x: &Self::B, at: usize) -> Self::I;
    unsafe fn total(i: Self::I) -> __m512i;
    unsafe fn total_signed(i: Self::I, x: &Self::B) -> __m512i;
    /// The eight-row kernel `K` on groups `g0..g1`, on these activations.
    unsafe fn eight<K: WideKern>(job: &Job, g0: usize, g1: usize);
}

pub(crate) struct Q8Acts;
pub(crate) struct Q16Acts;

/// Four activation bytes of a plane from `at`, in every lane.
#[inline(always)]
unsafe fn bcast_bytes<B>(p: *const B, at: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned((p as *const u8).add(at) as *const i32))
}

impl Act16 for Q8Acts {
    type B = BlockQ8;
    type I = __m512i;
    fn eight_rows(job: &Job) -> bool {
        job.n <= EIGHT_ROWS_UP_TO
    }
    const JOIN_TAIL: bool = true;
    fn acts<'a>(job: &Job<'a>) -> &'a [BlockQ8] {
        job.xq
    }
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn dot(i: __m512i, w: __m512i, x: &BlockQ8, at: usize) -> __m512i {
        _mm512_dpbusd_epi32(i, w, bcast4(x, at))
    }
    #[inline(always)]
    unsafe fn dot_signed(i: __m512i, _w: __m512i, u: __m512i, x: &BlockQ8, at: usize) -> __m512i {
        _mm512_dpbusd_epi32(i, u, bcast4(x, at))
    }
    #[inline(always)]
    unsafe fn total(i: __m512i) -> __m512i {
        i
    }
    #[inline(always)]
    unsafe fn total_signed(i: __m512i, x: &BlockQ8) -> __m512i {
        _mm512_sub_epi32(i, _mm512_set1_epi32(128 * (x.h[0] as i32 + x.h[1] as i32)))
    }
    #[inline(always)]
    unsafe fn eight<K: WideKern>(job: &Job, g0: usize, g1: usize) {
        super::packed::run::<K>(job, g0, g1, crate::simd::prefetch_512())
    }
}

impl Act16 for Q16Acts {
    type B = BlockQ16P;
    /// The sums against `hi` and against `lo`.
    type I = (__m512i, __m512i);
    /// Up to three tokens over rows of fewer than [`SHORT_ROWS`] columns (the eight-row `vpdpwssd`
    /// kernels, [`super::packed::Dpwssd`]).
    fn eight_rows(job: &Job) -> bool {
        job.n <= EIGHT_ROWS_UP_TO && job.cols < SHORT_ROWS
    }
    const JOIN_TAIL: bool = false;
    fn acts<'a>(job: &Job<'a>) -> &'a [BlockQ16P] {
        job.xp
    }
    #[inline(always)]
    unsafe fn zero() -> Self::I {
        (_mm512_setzero_si512(), _mm512_setzero_si512())
    }
    #[inline(always)]
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I {
        (_mm512_add_epi32(a.0, b.0), _mm512_add_epi32(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn dot(i: Self::I, w: __m512i, x: &BlockQ16P, at: usize) -> Self::I {
        (
            _mm512_dpbusd_epi32(i.0, w, bcast_bytes(x.hi.as_ptr(), at)),
            _mm512_dpbusd_epi32(i.1, bcast_bytes(x.lo.as_ptr(), at), w),
        )
    }
    #[inline(always)]
    unsafe fn dot_signed(i: Self::I, w: __m512i, u: __m512i, x: &BlockQ16P, at: usize) -> Self::I {
        (
            _mm512_dpbusd_epi32(i.0, u, bcast_bytes(x.hi.as_ptr(), at)),
            _mm512_dpbusd_epi32(i.1, bcast_bytes(x.lo.as_ptr(), at), w),
        )
    }
    #[inline(always)]
    unsafe fn total(i: Self::I) -> __m512i {
        _mm512_add_epi32(_mm512_slli_epi32::<8>(i.0), i.1)
    }
    #[inline(always)]
    unsafe fn total_signed(i: Self::I, x: &BlockQ16P) -> __m512i {
        let hi = _mm512_sub_epi32(i.0, _mm512_set1_epi32(128 * x.hs));
        _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), i.1)
    }
    #[inline(always)]
    unsafe fn eight<K: WideKern>(job: &Job, g0: usize, g1: usize) {
        super::packed::run_wide::<K, super::packed::Dpwssd>(job, g0, g1, crate::simd::prefetch_512())
    }
}

/// Unit `u` (four codes of each of eight rows) of both records' codes: rows 0-7 low, 8-15 high.
#[inline(always)]
unsafe fn unit16(c0: *const u8, c1: *const u8, u: usize) -> __m512i {
    let lo = _mm256_loadu_si256(c0.add(u * 4 * GROUP) as *const __m256i);
    let hi = _mm256_loadu_si256(c1.add(u * 4 * GROUP) as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Eight f16 at `p0` and eight at `p1` as sixteen f32.
#[inline(always)]
unsafe fn f16x16(p0: *const u8, p1: *const u8) -> __m512 {
    let lo = _mm_loadu_si128(p0 as *const __m128i);
    let hi = _mm_loadu_si128(p1 as *const __m128i);
    _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
}

/// Eight bytes at `p0` and eight at `p1` as sixteen f32 (unsigned: Q4_K's scales and minimums).
#[inline(always)]
unsafe fn u8x16(p0: *const u8, p1: *const u8) -> __m512 {
    let b = _mm_unpacklo_epi64(
        _mm_loadl_epi64(p0 as *const __m128i),
        _mm_loadl_epi64(p1 as *const __m128i),
    );
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
}

/// Eight bytes at `p0` and eight at `p1` as sixteen f32 (signed: Q6_K's scales).
#[inline(always)]
unsafe fn i8x16(p0: *const u8, p1: *const u8) -> __m512 {
    let b = _mm_unpacklo_epi64(
        _mm_loadl_epi64(p0 as *const __m128i),
        _mm_loadl_epi64(p1 as *const __m128i),
    );
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
}

/// Four activation bytes from `at`, in every lane.
#[inline(always)]
unsafe fn bcast4(x: &BlockQ8, at: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(x.qs.as_ptr().add(at) as *const i32))
}

/// Low and high nibbles of sixteen rows' unit.
#[inline(always)]
unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
    let m = _mm512_set1_epi8(15);
    (_mm512_and_si512(v, m), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m))
}

/// `acc + d * (cvt(i) * x.d)`: the 256-bit kernels' epilogue.
#[inline(always)]
unsafe fn scaled(acc: __m512, d: __m512, i: __m512i, xd: f32) -> __m512 {
    _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(xd)), acc)
}

pub(crate) struct P16Q8_0;

impl Kern16 for P16Q8_0 {
    const ELEMS: usize = 32;
    type S = __m512;
    type K8 = PQ8_0<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> __m512 {
        f16x16(r0, r1)
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        d: &__m512,
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let x = x.map(|p| &*p);
        let (c0, c1) = (r0.add(2 * GROUP), r1.add(2 * GROUP));
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut i = [A::zero(); T];
        for k in 0..8 {
            // w + 128 as unsigned bytes.
            let w = unit16(c0, c1, k);
            let u = _mm512_xor_si512(w, flip);
            for j in 0..T {
                i[j] = A::dot_signed(i[j], w, u, x[j], 4 * k);
            }
        }
        for j in 0..T {
            acc[j] = scaled(acc[j], *d, A::total_signed(i[j], x[j]), x[j].d());
        }
        acc
    }
}

/// Q4_0 (`OFFSET`) and Q4_1: scales, offsets and the eight nibble vectors of sixteen rows.
pub(crate) struct P16Q4<const OFFSET: bool>;

pub(crate) struct Q4S16 {
    d: __m512,
    m: __m512,
    q: [__m512i; 8],
}

impl<const OFFSET: bool> Kern16 for P16Q4<OFFSET> {
    const ELEMS: usize = 32;
    type S = Q4S16;
    type K8 = PQ4<OFFSET, VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> Q4S16 {
        let d = f16x16(r0, r1);
        let (m, at) = if OFFSET {
            (_mm512_mul_ps(d, _mm512_set1_ps(-8.0)), 2 * GROUP)
        } else {
            (f16x16(r0.add(2 * GROUP), r1.add(2 * GROUP)), 4 * GROUP)
        };
        let mut q = [_mm512_setzero_si512(); 8];
        for k in 0..4 {
            (q[k], q[k + 4]) = nibbles(unit16(r0.add(at), r1.add(at), k));
        }
        Q4S16 { d, m, q }
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        acc: [__m512; T],
        s: &Q4S16,
        _r0: *const u8,
        _r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        q4s16_tile::<A, T>(acc, s, x)
    }
}

/// The products of a [`Q4S16`] record (eight code units in weight order) with `T` tokens: as the
/// 256-bit `q4s_tile`, per row the same integers and float operations.
#[inline(always)]
unsafe fn q4s16_tile<A: Act16, const T: usize>(mut acc: [__m512; T], s: &Q4S16, x: [*const A::B; T]) -> [__m512; T] {
    let x = x.map(|p| &*p);
    let mut i = [A::zero(); T];
    for (u, &q) in s.q.iter().enumerate() {
        for j in 0..T {
            i[j] = A::dot(i[j], q, x[j], 4 * u);
        }
    }
    for j in 0..T {
        let a = scaled(acc[j], s.d, A::total(i[j]), x[j].d());
        acc[j] = _mm512_fmadd_ps(s.m, _mm512_set1_ps(x[j].s()), a);
    }
    acc
}

/// Q5_0 for sixteen rows: `d`, `−16 d` and the eight code units, in the 256-bit kernel's order.
pub(crate) struct P16Q5_0;

impl Kern16 for P16Q5_0 {
    const ELEMS: usize = 32;
    type S = Q4S16;
    type K8 = PQ5_0<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> Q4S16 {
        let d = f16x16(r0, r1);
        let (c0, c1) = (r0.add(Q5_0_Q), r1.add(Q5_0_Q));
        let (lo, hi) = (q5k_codes16(c0, c1, 0, 0), q5k_codes16(c0, c1, 0, 1));
        Q4S16 {
            d,
            m: _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
            q: [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]],
        }
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        acc: [__m512; T],
        s: &Q4S16,
        _r0: *const u8,
        _r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        q4s16_tile::<A, T>(acc, s, x)
    }
}

/// Q4_K: `d` and `−dmin` of sixteen rows; each sub-block's scales and minimums are applied as the
/// 256-bit kernel applies them (`d * sc`, `−dmin * m`, then per token).
pub(crate) struct P16Q4K;

impl Kern16 for P16Q4K {
    const ELEMS: usize = 256;
    type S = (__m512, __m512);
    type K8 = PQ4K<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> (__m512, __m512) {
        let dmin = f16x16(r0.add(2 * GROUP), r1.add(2 * GROUP));
        (f16x16(r0, r1), _mm512_sub_ps(_mm512_setzero_ps(), dmin))
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        &(d, dmin): &(__m512, __m512),
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let (c0, c1) = (r0.add(160), r1.add(160));
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            let (mut il, mut ih) = ([A::zero(); T], [A::zero(); T]);
            for k in 0..8 {
                let (lo, hi) = nibbles(unit16(c0, c1, 8 * j + k));
                for t in 0..T {
                    il[t] = A::dot(il[t], lo, xl[t], 4 * k);
                    ih[t] = A::dot(ih[t], hi, xh[t], 4 * k);
                }
            }
            let sc = |sub: usize| _mm512_mul_ps(d, u8x16(r0.add(32 + sub * GROUP), r1.add(32 + sub * GROUP)));
            let mn = |sub: usize| _mm512_mul_ps(dmin, u8x16(r0.add(96 + sub * GROUP), r1.add(96 + sub * GROUP)));
            let (dl, dh, ml, mh) = (sc(2 * j), sc(2 * j + 1), mn(2 * j), mn(2 * j + 1));
            for t in 0..T {
                for (ds, ms, i, xb) in [(dl, ml, il[t], xl[t]), (dh, mh, ih[t], xh[t])] {
                    acc[t] = scaled(acc[t], ds, A::total(i), xb.d());
                    acc[t] = _mm512_fmadd_ps(ms, _mm512_set1_ps(xb.s()), acc[t]);
                }
            }
        }
        acc
    }
}

/// Q5_K for sixteen rows: byte codes, Q4_K's scales and minimums, in the 256-bit kernel's order.
pub(crate) struct P16Q5K;

impl Kern16 for P16Q5K {
    const ELEMS: usize = 256;
    type S = (__m512, __m512);
    type K8 = PQ5K<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> (__m512, __m512) {
        P16Q4K::setup(r0, r1)
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        &(d, dmin): &(__m512, __m512),
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let (c0, c1) = (r0.add(Q5K_Q), r1.add(Q5K_Q));
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            let mut i = [A::zero(); T];
            for half in 0..2 {
                let q = q5k_codes16(c0, c1, g, half);
                let mut h = [A::zero(); T];
                for (k, &u) in q.iter().enumerate() {
                    for t in 0..T {
                        h[t] = A::dot(h[t], u, xg[t], 16 * half + 4 * k);
                    }
                }
                for t in 0..T {
                    i[t] = A::add(i[t], h[t]);
                }
            }
            let ds = _mm512_mul_ps(d, u8x16(r0.add(32 + g * GROUP), r1.add(32 + g * GROUP)));
            let ms = _mm512_mul_ps(dmin, u8x16(r0.add(96 + g * GROUP), r1.add(96 + g * GROUP)));
            for t in 0..T {
                acc[t] = scaled(acc[t], ds, A::total(i[t]), xg[t].d());
                acc[t] = _mm512_fmadd_ps(ms, _mm512_set1_ps(xg[t].s()), acc[t]);
            }
        }
        acc
    }
}

/// Q6_K: codes 0..=63 standing for `q − 32` (`Σ q x − 32 Σ x` per 16 activations, [`BlockQ8::h`]),
/// a scale per 16 weights.
pub(crate) struct P16Q6K;

impl Kern16 for P16Q6K {
    const ELEMS: usize = 256;
    type S = __m512;
    type K8 = PQ6K<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> __m512 {
        f16x16(r0, r1)
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        d: &__m512,
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let (c0, c1) = (r0.add(Q6K_Q), r1.add(Q6K_Q));
        for g in 0..8 {
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let s = _mm512_mul_ps(
                    *d,
                    i8x16(r0.add(16 + (2 * g + half) * GROUP), r1.add(16 + (2 * g + half) * GROUP)),
                );
                let q = q6k_codes16(c0, c1, g, half);
                let mut i = [A::zero(); T];
                for (k, &u) in q.iter().enumerate() {
                    for t in 0..T {
                        i[t] = A::dot(i[t], u, xg[t], 16 * half + 4 * k);
                    }
                }
                for t in 0..T {
                    let i = _mm512_sub_epi32(A::total(i[t]), _mm512_set1_epi32(32 * xg[t].h(half)));
                    acc[t] = scaled(acc[t], s, i, xg[t].d());
                }
            }
        }
        acc
    }
}

/// Units `4h..4h + 4` of Q5_K sub-block `g` for sixteen rows (`c0`: rows 0-7, `c1`: 8-15), as the
/// 256-bit kernel's [`super::packed::q5k_codes`] assembles them.
#[inline(always)]
unsafe fn q5k_codes16(c0: *const u8, c1: *const u8, g: usize, h: usize) -> [__m512i; 4] {
    let at = 160 * g / (4 * GROUP);
    let hi = unit16(c0, c1, at + 4);
    let (m15, m16) = (_mm512_set1_epi8(15), _mm512_set1_epi8(16));
    let top = match h {
        0 => [
            _mm512_slli_epi16::<4>(hi),
            _mm512_slli_epi16::<3>(hi),
            _mm512_slli_epi16::<2>(hi),
            _mm512_slli_epi16::<1>(hi),
        ],
        _ => [
            hi,
            _mm512_srli_epi16::<1>(hi),
            _mm512_srli_epi16::<2>(hi),
            _mm512_srli_epi16::<3>(hi),
        ],
    };
    let mut q = [_mm512_setzero_si512(); 4];
    for m in 0..4 {
        let n = unit16(c0, c1, at + m);
        let n = if h == 0 { n } else { _mm512_srli_epi16::<4>(n) };
        q[m] = _mm512_or_si512(_mm512_and_si512(n, m15), _mm512_and_si512(top[m], m16));
    }
    q
}

/// The four code units of half `h` of Q6_K group `g` for sixteen rows (`c0`: rows 0-7, `c1`: 8-15), as
/// the 256-bit kernel's [`super::packed::q6k_codes`] assembles them.
#[inline(always)]
unsafe fn q6k_codes16(c0: *const u8, c1: *const u8, g: usize, h: usize) -> [__m512i; 4] {
    let at = (192 * g + 96 * h) / (4 * GROUP);
    let (x1, x2, y) = (unit16(c0, c1, at), unit16(c0, c1, at + 1), unit16(c0, c1, at + 2));
    let (m63, m15, m48) = (_mm512_set1_epi8(63), _mm512_set1_epi8(15), _mm512_set1_epi8(48));
    [
        _mm512_and_si512(x1, m63),
        _mm512_or_si512(
            _mm512_and_si512(y, m15),
            _mm512_and_si512(_mm512_srli_epi16::<2>(x1), m48),
        ),
        _mm512_and_si512(x2, m63),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(y), m15),
            _mm512_and_si512(_mm512_srli_epi16::<2>(x2), m48),
        ),
    ]
}

/// Unit `u` of sixteen rows' 2-bit codes at shift `2s`, in 0..4.
#[inline(always)]
unsafe fn codes2_16(c0: *const u8, c1: *const u8, u: usize, s: usize) -> __m512i {
    let v = _mm512_srl_epi16(unit16(c0, c1, u), _mm_cvtsi32_si128(2 * s as i32));
    _mm512_and_si512(v, _mm512_set1_epi8(3))
}

/// Q2_K for sixteen rows: the 256-bit kernel's integers and float operations per lane.
pub(crate) struct P16Q2K;

impl Kern16 for P16Q2K {
    const ELEMS: usize = 256;
    type S = (__m512, __m512);
    type K8 = PQ2K<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> (__m512, __m512) {
        let dmin = f16x16(r0.add(2 * GROUP), r1.add(2 * GROUP));
        (f16x16(r0, r1), _mm512_sub_ps(_mm512_setzero_ps(), dmin))
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        &(d, dmin): &(__m512, __m512),
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let (c0, c1) = (r0.add(Q2K_Q), r1.add(Q2K_Q));
        for g in 0..8 {
            let (n, sh) = (g / 4, g % 4);
            let xg = x.map(|p| &*p.add(g));
            for half in 0..2 {
                let mut i = [A::zero(); T];
                for k in 4 * half..4 * half + 4 {
                    let q = codes2_16(c0, c1, 8 * n + k, sh);
                    for t in 0..T {
                        i[t] = A::dot(i[t], q, xg[t], 4 * k);
                    }
                }
                let at = 32 + (2 * g + half) * GROUP;
                let b = _mm_unpacklo_epi64(
                    _mm_loadl_epi64(r0.add(at) as *const __m128i),
                    _mm_loadl_epi64(r1.add(at) as *const __m128i),
                );
                let m15 = _mm_set1_epi8(15);
                let f = |v| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
                let (sc, m) = (f(_mm_and_si128(b, m15)), f(_mm_and_si128(_mm_srli_epi16::<4>(b), m15)));
                let (ds, ms) = (_mm512_mul_ps(d, sc), _mm512_mul_ps(dmin, m));
                for t in 0..T {
                    acc[t] = scaled(acc[t], ds, A::total(i[t]), xg[t].d());
                    let sx = xg[t].d() * xg[t].h(half) as f32;
                    acc[t] = _mm512_fmadd_ps(ms, _mm512_set1_ps(sx), acc[t]);
                }
            }
        }
        acc
    }
}

/// Q3_K for sixteen rows: nibble codes, `Σ q x − 4 Σ x` per 16 activations, a signed scale per 16
/// weights, in the 256-bit kernel's order.
pub(crate) struct P16Q3K;

impl Kern16 for P16Q3K {
    const ELEMS: usize = 256;
    type S = __m512;
    type K8 = PQ3K<VnniDot>;
    #[inline(always)]
    unsafe fn setup(r0: *const u8, r1: *const u8) -> __m512 {
        f16x16(r0, r1)
    }
    #[inline(always)]
    unsafe fn dot_tile<A: Act16, const T: usize>(
        mut acc: [__m512; T],
        d: &__m512,
        r0: *const u8,
        r1: *const u8,
        x: [*const A::B; T],
    ) -> [__m512; T] {
        let (c0, c1) = (r0.add(Q3K_Q), r1.add(Q3K_Q));
        let sc = |i: usize| _mm512_mul_ps(*d, i8x16(r0.add(16 + i * GROUP), r1.add(16 + i * GROUP)));
        for j in 0..4 {
            let (xl, xh) = (x.map(|p| &*p.add(2 * j)), x.map(|p| &*p.add(2 * j + 1)));
            for half in 0..2 {
                let (mut il, mut ih) = ([A::zero(); T], [A::zero(); T]);
                for k in 4 * half..4 * half + 4 {
                    let (lo, hi) = nibbles(unit16(c0, c1, 8 * j + k));
                    for t in 0..T {
                        il[t] = A::dot(il[t], lo, xl[t], 4 * k);
                        ih[t] = A::dot(ih[t], hi, xh[t], 4 * k);
                    }
                }
                let (sl, sh) = (sc(4 * j + half), sc(4 * j + 2 + half));
                for t in 0..T {
                    for (s, i, xb) in [(sl, il[t], xl[t]), (sh, ih[t], xh[t])] {
                        let i = _mm512_sub_epi32(A::total(i), _mm512_set1_epi32(4 * xb.h(half)));
                        acc[t] = scaled(acc[t], s, i, xb.d());
                    }
                }
            }
        }
        acc
    }
}

/// Groups `g, g + 1` (rows `8g..8g + 16`) for tokens `t..t + T`.
#[inline(always)]
unsafe fn tile16<K: Kern16, A: Act16, const T: usize>(job: &Job, g: usize, t: usize) {
    let p = job.packed.expect("packed job");
    let (nb, rec) = (job.cols / K::ELEMS, p.rec);
    let (b0, b1) = (p.group(g).as_ptr(), p.group(g + 1).as_ptr());
    let per_tok = job.cols / QK8;
    let xp: [*const A::B; T] = std::array::from_fn(|j| A::acts(job)[(t + j) * per_tok..].as_ptr());
    let mut acc = [_mm512_setzero_ps(); T];
    let prefetch = t == 0 && crate::simd::prefetch_512();
    for b in 0..nb {
        let (r0, r1) = (b0.add(b * rec), b1.add(b * rec));
        if prefetch {
            prefetch_bytes(r0.wrapping_add(PF_DIST), rec);
            prefetch_bytes(r1.wrapping_add(PF_DIST), rec);
        }
        let s = K::setup(r0, r1);
        acc = K::dot_tile::<A, T>(acc, &s, r0, r1, xp.map(|p| p.add(b * K::ELEMS / QK8)));
    }
    for (j, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(job.y.add((t + j) * job.rows + g * GROUP), *a);
    }
}

/// Passes of at most this many tokens run the int8 eight-row kernels throughout where
/// [`crate::simd::decode_eight_rows`]: on Zen 4 they stream 1.1-1.9x faster than the sixteen-row ones
/// for two and three tokens too (`matbench` 5632 x 2048 from memory, 2 threads: Q4_K 0.26 -> 0.15-0.19
/// ms for two tokens, Q4_0 0.28 -> 0.18, Q5_0 0.35 -> 0.18, Q6_K 0.36 -> 0.28, Q8_0 0.40 -> 0.34),
/// not for four or more (Q4_K 0.32-0.33 -> 0.40-0.46 ms; in tiles of two and three alike).
const EIGHT_ROWS_UP_TO: usize = 3;

/// With int16 activations the eight-row kernels stream faster on Zen 4 only over rows shorter than
/// this (`matbench`, from memory, 2 threads, one and two tokens, ms: Q4_K 1536 x 1536 0.05 / 0.06
/// eight rows against 0.08 / 0.08 sixteen, 5632 x 2048 0.21-0.23 / 0.26-0.28 against 0.27-0.28 /
/// 0.32-0.33, Q5_0 4864 x 896 0.09 / 0.11 against 0.16 / 0.19, the Q6_K classifier 151936 x 1536
/// 4.1-5.4 / 6.9-7.1 against 7.0-7.4 / 7.7-8.8; but Q4_K 2048 x 5632 0.26 / 0.43 against 0.22 /
/// 0.29, 1536 x 8960 0.33-0.55 / 0.55-0.64 against 0.26-0.28 / 0.34-0.37, Q6_K 1536 x 8960 about
/// alike / 0.67-0.71 against 0.41-0.44).
const SHORT_ROWS: usize = 4096;

/// Groups `g0..g1` for every token: pairs of groups with the sixteen-row kernel `K` on activations
/// `A`, tokens `T` at a time, an odd last group with the format's eight-row kernel; decode and short
/// verification passes ([`Act16::eight_rows`]) with the eight-row kernel throughout where
/// [`crate::simd::decode_eight_rows`] (the same bits).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run16<K: Kern16, A: Act16, const T: usize>(job: &Job, g0: usize, g1: usize) {
    if crate::simd::decode_eight_rows() && A::eight_rows(job) {
        return A::eight::<K::K8>(job, g0, g1);
    }
    let pairs = (g1 - g0) / 2;
    // Tiles of T tokens, then the rest in one tile; with four-token tiles of int8 activations the last
    // one to three tokens join the last full tile instead (a tile of five to seven: 32 vector
    // registers hold it).
    let full = match job.n % T {
        r if A::JOIN_TAIL && T == 4 && r > 0 && job.n > 4 => job.n - 4 - r,
        r => job.n - r,
    };
    // Block by block (`packed::BLOCK` groups, whole pairs), every tile over a block's weights.
    let end = g0 + 2 * pairs;
    let mut b0 = g0;
    while b0 < end {
        let b1 = end.min(b0 + super::packed::BLOCK);
        let mut t = 0;
        while t < full {
            for g in (b0..b1).step_by(2) {
                tile16::<K, A, T>(job, g, t);
            }
            t += T;
        }
        // The last tokens in one tile: each record is decoded once for all of them.
        for g in (b0..b1).step_by(2) {
            match job.n - t {
                0 => break,
                1 => tile16::<K, A, 1>(job, g, t),
                2 => tile16::<K, A, 2>(job, g, t),
                3 => tile16::<K, A, 3>(job, g, t),
                4 => tile16::<K, A, 4>(job, g, t),
                5 => tile16::<K, A, 5>(job, g, t),
                6 => tile16::<K, A, 6>(job, g, t),
                _ => tile16::<K, A, 7>(job, g, t),
            }
        }
        b0 = b1;
    }
    if g0 + 2 * pairs < g1 {
        A::eight::<K::K8>(job, g1 - 1, g1);
    }
}

/// The sixteen-row kernel for `dtype` on activations `A` (the CPU has AVX-512 F/BW/VL/VNNI), if there
/// is one: K-quants four tokens a tile, the 32-weight formats `T32`.
fn pick<A: Act16, const T32: usize>(dtype: crate::DType) -> Option<crate::matmul::RowsFn> {
    use crate::DType;
    Some(match dtype {
        DType::Q8_0 => run16::<P16Q8_0, A, T32> as crate::matmul::RowsFn,
        DType::Q4_0 => run16::<P16Q4<true>, A, T32>,
        DType::Q4_1 => run16::<P16Q4<false>, A, T32>,
        DType::Q5_0 => run16::<P16Q5_0, A, T32>,
        DType::Q4K => run16::<P16Q4K, A, 4>,
        DType::Q6K => run16::<P16Q6K, A, 4>,
        DType::Q2K => run16::<P16Q2K, A, 4>,
        DType::Q5K => run16::<P16Q5K, A, 4>,
        DType::Q3K => run16::<P16Q3K, A, 4>,
        _ => return None,
    })
}

/// The sixteen-row kernel for `dtype` with int8 activations, if there is one.
pub(crate) fn select(dtype: crate::DType) -> Option<crate::matmul::RowsFn> {
    pick::<Q8Acts, 8>(dtype)
}

/// The sixteen-row kernel for `dtype` with int16 activations (two byte planes, [`Q16Acts`]), if
/// there is one: four tokens a tile (eight sums a token fill the registers).
pub(crate) fn select_wide(dtype: crate::DType) -> Option<crate::matmul::RowsFn> {
    pick::<Q16Acts, 4>(dtype)
}
