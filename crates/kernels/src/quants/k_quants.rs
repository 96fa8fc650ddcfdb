//! K-quants (llama.cpp `k_quants`): super-blocks of 256 weights in 8 sub-blocks of 32.
//!
//! - Q4_K (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit sub-block scales and minimums,
//!   128 bytes of nibbles; `w = (d * sc) * q - (dmin * m)`, `q` in 0..16.
//! - Q5_K (176 bytes): as Q4_K plus 32 bytes of high bits (`qh[l]` bit `g` for sub-block `g`), `q` in 0..32.
//! - Q6_K (210 bytes): 128 bytes of low nibbles, 64 of 2-bit highs, 16 signed 8-bit scales (one per 16
//!   weights), f16 `d`; `w = (d * sc) * (q - 32)`, `q` in 0..64.
//!
//! - Q2_K (84 bytes): 16 bytes of 4-bit scale/minimum pairs (one per 16 weights), 64 bytes of 2-bit codes,
//!   f16 `d`, f16 `dmin`; `w = (d * sc) * q - (dmin * m)`, `q` in 0..4.
//! - Q3_K (110 bytes): 32 bytes of high bits (`hmask[l]` bit `g` for sub-block `g`), 64 bytes of 2-bit
//!   low codes, 12 bytes of packed 6-bit scales (one per 16 weights, stored + 32), f16 `d`;
//!   `w = (d * sc) * (q - 4)` with `q = low + 4 * high` in 0..8.
//!
//! The float formulas are evaluated in the same order as llama.cpp and gguf-py, so dequantization is
//! bit-exact. `unpack_*` writes the unsigned codes of sub-block `g`; the SIMD kernels compute the same.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q4K;
pub struct Q5K;
pub struct Q6K;
pub struct Q2K;
pub struct Q3K;

/// Scale and minimum of sub-block `j` from the 12 packed bytes (`get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The 12 bytes that [`scale_min_k4`] reads back as these eight 6-bit scales and minimums.
pub fn pack_scale_min_k4(sc: &[u8], m: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] |= sc[j] & 63;
            s[j + 4] |= m[j] & 63;
        } else {
            s[j + 4] = (sc[j] & 0xf) | ((m[j] & 0xf) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (m[j] >> 4) << 6;
        }
    }
    s
}

/// Codes of Q4_K sub-block `g` (the low nibbles of 32 bytes for even `g`, the high ones for odd).
#[inline]
pub fn unpack_q4k(b: &[u8], g: usize, q: &mut [u8; 32]) {
    let qs = &b[16 + 32 * (g / 2)..][..32];
    for (o, &v) in q.iter_mut().zip(qs) {
        *o = (v >> (4 * (g % 2))) & 15;
    }
}

/// Codes of Q5_K sub-block `g`: nibble plus bit `g` of `qh[l]` as the fifth bit.
#[inline]
pub fn unpack_q5k(b: &[u8], g: usize, q: &mut [u8; 32]) {
    let (qh, qs) = (&b[16..48], &b[48 + 32 * (g / 2)..][..32]);
    for ((o, &v), &h) in q.iter_mut().zip(qs).zip(qh) {
        *o = ((v >> (4 * (g % 2))) & 15) | (((h >> g) & 1) << 4);
    }
}

/// Codes of Q6_K sub-block `g = 4n + k` (weights `32g..32g+32`); its scales are `sc[2g]`, `sc[2g+1]`.
#[inline]
pub fn unpack_q6k(b: &[u8], g: usize, q: &mut [u8; 32]) {
    let (n, k) = (g / 4, g % 4);
    let ql = &b[64 * n + 32 * (k % 2)..][..32];
    let qh = &b[128 + 32 * n..][..32];
    for ((o, &l), &h) in q.iter_mut().zip(ql).zip(qh) {
        *o = ((l >> (4 * (k / 2))) & 15) | (((h >> (2 * k)) & 3) << 4);
    }
}

/// The 2-bit codes of Q2_K/Q3_K sub-block `g` (weights `32g..32g+32`): bits `2(g % 4)` of the 32 bytes
/// `qs[32 (g / 4)..]`; its two halves of 16 take scales `2g` and `2g + 1`.
#[inline]
pub fn unpack_2bit(qs: &[u8], g: usize, q: &mut [u8; 32]) {
    for (o, &v) in q.iter_mut().zip(&qs[32 * (g / 4)..][..32]) {
        *o = (v >> (2 * (g % 4))) & 3;
    }
}

/// Codes of Q3_K sub-block `g` in 0..8: the 2-bit low code plus 4 where bit `g` of `hmask[l]` is set.
#[inline]
pub fn unpack_q3k(b: &[u8], g: usize, q: &mut [u8; 32]) {
    unpack_2bit(&b[32..96], g, q);
    for (o, &h) in q.iter_mut().zip(&b[..32]) {
        *o |= ((h >> g) & 1) << 2;
    }
}

/// Scale `j` (0..16) of a Q3_K block from its 12 packed bytes: four low bits from byte `j % 8` (low or
/// high nibble), two high bits from byte `8 + j % 4`, minus 32 (ggml's `kmask` unpacking).
#[inline]
pub fn q3k_scale(sc: &[u8], j: usize) -> i8 {
    let low = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
    (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8 - 32
}

/// The 12 bytes that [`q3k_scale`] reads back as these sixteen scales (each in -32..32).
pub fn pack_q3k_scales(sc: &[i8; 16]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for (j, &s) in sc.iter().enumerate() {
        let v = (s as i32 + 32) as u8 & 63;
        b[j % 8] |= (v & 0xf) << (4 * (j / 8));
        b[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    b
}

/// `(d * sc, dmin * m)` of each 16 weights of a Q2_K block.
#[inline]
pub fn scales_q2k(b: &[u8]) -> [(f32, f32); 16] {
    let (d, min) = (f16_at(b, 80), f16_at(b, 82));
    std::array::from_fn(|j| (d * (b[j] & 0xf) as f32, min * (b[j] >> 4) as f32))
}

/// `d * sc` of each 16 weights of a Q3_K block.
#[inline]
pub fn scales_q3k(b: &[u8]) -> [f32; 16] {
    let d = f16_at(b, 108);
    std::array::from_fn(|j| d * q3k_scale(&b[96..108], j) as f32)
}

impl BlockFormat for Q2K {
    const LEN: usize = 256;
    const BYTES: usize = 84;
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let s = scales_q2k(b);
        let mut q = [0u8; 32];
        for (g, out) in out.chunks_exact_mut(32).enumerate() {
            unpack_2bit(&b[16..80], g, &mut q);
            for (l, (o, &v)) in out.iter_mut().zip(&q).enumerate() {
                let (dl, ml) = s[2 * g + l / 16];
                *o = dl * v as f32 - ml;
            }
        }
    }
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        dot_f32::<Q2K>(b, x)
    }
}

impl QuantDot for Q2K {
    /// Per half of 16: `dx * (d sc Σ q qx) - dx * (dmin m Σ qx)`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let s = scales_q2k(b);
        let mut q = [0u8; 32];
        let mut sum = 0.0f32;
        for (g, xb) in x.iter().enumerate() {
            unpack_2bit(&b[16..80], g, &mut q);
            for h in 0..2 {
                let xs = &xb.qs[16 * h..16 * h + 16];
                let (dl, ml) = s[2 * g + h];
                let dot = idot(q[16 * h..16 * h + 16].iter().map(|&v| v as i32), xs);
                let sx: i32 = xs.iter().map(|&v| v as i32).sum();
                sum += dl * xb.d * dot as f32 - ml * xb.d * sx as f32;
            }
        }
        sum
    }
}

impl BlockFormat for Q3K {
    const LEN: usize = 256;
    const BYTES: usize = 110;
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let s = scales_q3k(b);
        let mut q = [0u8; 32];
        for (g, out) in out.chunks_exact_mut(32).enumerate() {
            unpack_q3k(b, g, &mut q);
            for (l, (o, &v)) in out.iter_mut().zip(&q).enumerate() {
                *o = s[2 * g + l / 16] * (v as i32 - 4) as f32;
            }
        }
    }
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        dot_f32::<Q3K>(b, x)
    }
}

impl QuantDot for Q3K {
    /// Per half of 16: `dx * d sc Σ (q - 4) qx`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let s = scales_q3k(b);
        let mut q = [0u8; 32];
        let mut sum = 0.0f32;
        for (g, xb) in x.iter().enumerate() {
            unpack_q3k(b, g, &mut q);
            let half = |h: usize| idot(q[16 * h..16 * h + 16].iter().map(|&v| v as i32 - 4), &xb.qs[16 * h..]);
            sum += s[2 * g] * xb.d * half(0) as f32 + s[2 * g + 1] * xb.d * half(1) as f32;
        }
        sum
    }
}

fn dot_f32<B: BlockFormat>(b: &[u8], x: &[f32]) -> f32 {
    let mut w = [0.0f32; 256];
    B::dequantize_block(b, &mut w);
    w.iter().zip(x).map(|(w, x)| w * x).sum()
}

/// The Q4_K / Q5_K layout shared by both: `(d * sc, dmin * m)` of sub-block `g`.
#[inline]
pub fn scales_k(b: &[u8], g: usize) -> (f32, f32) {
    let (sc, m) = scale_min_k4(g, &b[4..16]);
    (f16_at(b, 0) * sc as f32, f16_at(b, 2) * m as f32)
}

macro_rules! k4_like {
    ($t:ty, $bytes:expr, $unpack:ident) => {
        impl BlockFormat for $t {
            const LEN: usize = 256;
            const BYTES: usize = $bytes;
            fn dequantize_block(b: &[u8], out: &mut [f32]) {
                let mut q = [0u8; 32];
                for (g, out) in out.chunks_exact_mut(32).enumerate() {
                    $unpack(b, g, &mut q);
                    let (d, m) = scales_k(b, g);
                    for (o, &v) in out.iter_mut().zip(&q) {
                        *o = d * v as f32 - m;
                    }
                }
            }
            fn dot_block(b: &[u8], x: &[f32]) -> f32 {
                dot_f32::<$t>(b, x)
            }
        }

        impl QuantDot for $t {
            fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
                let mut q = [0u8; 32];
                let mut sum = 0.0f32;
                for (g, xb) in x.iter().enumerate() {
                    $unpack(b, g, &mut q);
                    let (d, m) = scales_k(b, g);
                    sum += d * xb.d * idot(q.iter().map(|&v| v as i32), &xb.qs) as f32 - m * xb.s;
                }
                sum
            }
        }
    };
}

k4_like!(Q4K, 144, unpack_q4k);
k4_like!(Q5K, 176, unpack_q5k);

impl BlockFormat for Q6K {
    const LEN: usize = 256;
    const BYTES: usize = 210;
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 208);
        let mut q = [0u8; 32];
        for (g, out) in out.chunks_exact_mut(32).enumerate() {
            unpack_q6k(b, g, &mut q);
            for (l, (o, &v)) in out.iter_mut().zip(&q).enumerate() {
                let sc = b[192 + 2 * g + l / 16] as i8;
                *o = (d * sc as f32) * (v as i32 - 32) as f32;
            }
        }
    }
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        dot_f32::<Q6K>(b, x)
    }
}

impl QuantDot for Q6K {
    /// Per sub-block: `dx * (d sc_a Σ_{l<16} (q-32) qx + d sc_b Σ_{l>=16} (q-32) qx)`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let d = f16_at(b, 208);
        let mut q = [0u8; 32];
        let mut sum = 0.0f32;
        for (g, xb) in x.iter().enumerate() {
            unpack_q6k(b, g, &mut q);
            let half = |h: usize| idot(q[16 * h..16 * h + 16].iter().map(|&v| v as i32 - 32), &xb.qs[16 * h..]);
            let (sa, sb) = (b[192 + 2 * g] as i8 as f32, b[193 + 2 * g] as i8 as f32);
            sum += d * sa * xb.d * half(0) as f32 + d * sb * xb.d * half(1) as f32;
        }
        sum
    }
}
