//! Q4_1: blocks of 32 weights, f16 scale `d`, f16 minimum `m` and 16 bytes of nibbles (low nibbles are
//! weights 0..16, high nibbles 16..32); `w = d * q + m`.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q4_1;

impl BlockFormat for Q4_1 {
    const LEN: usize = 32;
    const BYTES: usize = 20;

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (j, &q) in b[4..20].iter().enumerate() {
            out[j] = (q & 0x0f) as f32 * d + m;
            out[j + 16] = (q >> 4) as f32 * d + m;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let (mut s, mut sx) = (0.0f32, 0.0f32);
        for (j, &q) in b[4..20].iter().enumerate() {
            s += (q & 0x0f) as f32 * x[j] + (q >> 4) as f32 * x[j + 16];
            sx += x[j] + x[j + 16];
        }
        d * s + m * sx
    }
}

impl QuantDot for Q4_1 {
    /// `d dx Σ q qx + m s`.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let q = &b[4..20];
        let nib = q
            .iter()
            .map(|&v| (v & 15) as i32)
            .chain(q.iter().map(|&v| (v >> 4) as i32));
        f16_at(b, 0) * x[0].d * idot(nib, &x[0].qs) as f32 + f16_at(b, 2) * x[0].s
    }
}
