//! Activations quantized to 8 bits for the "fast" products (like llama.cpp's `q8_1`): blocks of 32
//! values with one f32 scale `d` and the precomputed `s = d * sum(q)` that formats with an offset or a
//! minimum (Q4_0, Q4_1, K-quants) need; the dot product of a weight block with a block of these is a
//! sum of int8 x int8 (or uint8 x int8) products, which `maddubs` (AVX2) and `dpbusd` (VNNI) compute.

use super::BlockFormat;

/// Values per activation block.
pub const QK8: usize = 32;

/// 32 activations `x[i] ≈ d * qs[i]`, with `s = d * Σ qs` and the integer sums of each half,
/// `h[j] = Σ qs[16j..16j + 16]` (for weights stored with an offset per 16, Q6_K's packed codes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK8],
    pub h: [i16; 2],
}

/// Quantizes `x` (a multiple of 32 values) into `out` (`x.len() / 32` blocks): `d = max|x| / 127`,
/// `q = round_half_even(x / d)`. A block holding a NaN or an infinity becomes codes 0 with `d` and `s`
/// NaN, so that every product with it is NaN (and the caller sees non-finite output) instead of
/// integers that wrapped.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(x.len(), out.len() * QK8, "activation length is not a multiple of 32");
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK8)) {
        if !xs.iter().all(|v| v.is_finite()) {
            *b = BlockQ8 {
                d: f32::NAN,
                s: f32::NAN,
                ..BlockQ8::default()
            };
            continue;
        }
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round_even(v * id) as i8;
        }
        let half = |j: usize| b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum::<i16>();
        b.h = [half(0), half(1)];
        b.d = d;
        b.s = d * (b.h[0] as i32 + b.h[1] as i32) as f32;
    }
}

/// 32 activations `x[i] ≈ d * qs[i]` in 16 bits (`d = max|x| / 32767`): for products whose
/// activation rounding must stay far below f32 noise in the logits (the classifier), at the cost of
/// int16 instead of int8 multiplies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ16 {
    pub d: f32,
    /// `d * Σ qs`: what formats with an offset or a minimum (Q4_0, Q4_1, Q4_K) need.
    pub s: f32,
    pub qs: [i16; QK8],
    /// The integer sums of each half, `h[j] = Σ qs[16j..16j + 16]` (for a minimum per 16 weights:
    /// Q2_K).
    pub h: [i32; 2],
}

/// A [`BlockQ16`] as two byte planes, `qs[i] = 256 hi[i] + lo[i]`, for the AVX-512 VNNI kernels:
/// they multiply the weight codes by each plane with `vpdpbusd` (unsigned by signed bytes) and add
/// the two sums, 256 times the first — the integers of an int16 product without widening the codes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ16P {
    pub d: f32,
    pub s: f32,
    /// [`BlockQ16::h`].
    pub h: [i32; 2],
    /// `Σ hi`.
    pub hs: i32,
    pub lo: [u8; QK8],
    pub hi: [i8; QK8],
}

impl From<&BlockQ16> for BlockQ16P {
    #[inline]
    fn from(b: &BlockQ16) -> Self {
        let mut p = BlockQ16P {
            d: b.d,
            s: b.s,
            h: b.h,
            ..Default::default()
        };
        for ((l, h), &q) in p.lo.iter_mut().zip(&mut p.hi).zip(&b.qs) {
            *l = q as u8;
            *h = (q >> 8) as i8;
        }
        p.hs = p.hi.iter().map(|&h| h as i32).sum();
        p
    }
}

/// What the kernels read of an activation block besides its codes: the scale `d`, `s = d Σ q` and
/// the integer sum of each half.
pub trait ActScales {
    fn d(&self) -> f32;
    fn s(&self) -> f32;
    fn h(&self, half: usize) -> i32;
}

/// The activation blocks of the sixteen-row AVX-512 kernels keep their scales in fields of the same names.
macro_rules! act_scales {
    ($($t:ty),*) => {$(
        impl ActScales for $t {
            #[inline(always)]
            fn d(&self) -> f32 {
                self.d
            }
            #[inline(always)]
            fn s(&self) -> f32 {
                self.s
            }
            #[inline(always)]
            fn h(&self, half: usize) -> i32 {
                self.h[half] as i32
            }
        }
    )*};
}

act_scales!(BlockQ8, BlockQ16P);

/// Quantizes `x` (a multiple of 32 values) into `out`, 16 bits per value, round half to even (a
/// block with a NaN or an infinity: codes 0 and `d` NaN, as [`quantize_row_q8`]).
pub fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16]) {
    assert_eq!(x.len(), out.len() * QK8, "activation length is not a multiple of 32");
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK8)) {
        if !xs.iter().all(|v| v.is_finite()) {
            *b = BlockQ16 {
                d: f32::NAN,
                s: f32::NAN,
                qs: [0; QK8],
                h: [0; 2],
            };
            continue;
        }
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 32767.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round_even(v * id) as i16;
        }
        let half = |j: usize| b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum::<i32>();
        b.h = [half(0), half(1)];
        b.d = d;
        b.s = d * (b.h[0] + b.h[1]) as f32;
    }
}

/// Round half to even for |v| <= 2^22 without a libm call: adding and subtracting 1.5 * 2^23 leaves
/// the integer nearest to `v` (ties to even, the default rounding mode). Equal to `round_ties_even`.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// A weight format with an integer dot product against [`BlockQ8`] activations (`LEN / 32` of them
/// per weight block). This scalar version is the reference for the SIMD ones.
pub trait QuantDot: BlockFormat {
    fn dot_block_q8(block: &[u8], x: &[BlockQ8]) -> f32;
}

/// `Σ u[i] * s[i]` over 32 bytes: what one `maddubs`+`madd` (or `dpbusd`) chain sums.
#[inline]
pub(crate) fn idot(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
    w.zip(x).map(|(a, &b)| a * b as i32).sum()
}
