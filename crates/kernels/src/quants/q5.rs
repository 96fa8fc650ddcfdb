//! Q5_0 and Q5_1: blocks of 32 five-bit weights. 16 bytes of nibbles hold the low 4 bits (low nibbles
//! are weights 0..16, high nibbles 16..32, as in Q4_0) and a 32-bit word `qh` holds bit 4 of weight `j`
//! at bit `j`. Q5_0: f16 scale `d`, then `qh`, then the nibbles; `w = d * (q - 16)`.
//! Q5_1: f16 scale `d`, f16 minimum `m`, `qh`, nibbles; `w = d * q + m`.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q5_0;
pub struct Q5_1;

/// The 32 five-bit values of a block whose `qh` word starts at `at` (nibbles follow it).
#[inline]
fn fives(b: &[u8], at: usize) -> impl Iterator<Item = i32> + '_ {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let qs = &b[at + 4..at + 20];
    (0..32).map(move |j| {
        let low = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
        (low | (((qh >> j) & 1) as u8) << 4) as i32
    })
}

/// The 32 codes (0..=31) of a Q5_0 block, in weight order.
pub fn unpack_q5_0(b: &[u8], q: &mut [u8; 32]) {
    for (o, v) in q.iter_mut().zip(fives(b, 2)) {
        *o = v as u8;
    }
}

impl BlockFormat for Q5_0 {
    const LEN: usize = 32;
    const BYTES: usize = 22;

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (o, q) in out.iter_mut().zip(fives(b, 2)) {
            *o = d * (q - 16) as f32;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let s: f32 = fives(b, 2).zip(x).map(|(q, x)| (q - 16) as f32 * x).sum();
        f16_at(b, 0) * s
    }
}

impl QuantDot for Q5_0 {
    /// `d dx Σ (q − 16) qx`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        f16_at(b, 0) * x[0].d * idot(fives(b, 2).map(|q| q - 16), &x[0].qs) as f32
    }
}

impl BlockFormat for Q5_1 {
    const LEN: usize = 32;
    const BYTES: usize = 24;

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (o, q) in out.iter_mut().zip(fives(b, 4)) {
            *o = d * q as f32 + m;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let (s, sx) = fives(b, 4)
            .zip(x)
            .fold((0.0f32, 0.0f32), |(s, sx), (q, &x)| (s + q as f32 * x, sx + x));
        d * s + m * sx
    }
}

impl QuantDot for Q5_1 {
    /// `d dx Σ q qx + m s`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        f16_at(b, 0) * x[0].d * idot(fives(b, 4), &x[0].qs) as f32 + f16_at(b, 2) * x[0].s
    }
}
