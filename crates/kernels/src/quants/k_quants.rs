//! K-quants (llama.cpp `k_quants`): super-blocks of 256 weights in 8 sub-blocks of 32.
//!
//! - Q4_K (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit sub-block scales and minimums,
//!   128 bytes of nibbles; `w = (d * sc) * q - (dmin * m)`, `q` in 0..16.
//! - Q5_K (176 bytes): as Q4_K plus 32 bytes of high bits (`qh[l]` bit `g` for sub-block `g`), `q` in 0..32.
//! - Q6_K (210 bytes): 128 bytes of low nibbles, 64 of 2-bit highs, 16 signed 8-bit scales (one per 16
//!   weights), f16 `d`; `w = (d * sc) * (q - 32)`, `q` in 0..64.
//!
//! The float formulas are evaluated in the same order as llama.cpp and gguf-py, so dequantization is
//! bit-exact. `unpack_*` writes the unsigned codes of sub-block `g`; the SIMD kernels compute the same.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q4K;
pub struct Q5K;
pub struct Q6K;

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
