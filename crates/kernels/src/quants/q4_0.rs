//! Q4_0: blocks of 32 weights, an f16 scale `d` and 16 bytes of nibbles; weight `j` is the low nibble of
//! byte `j` and weight `j + 16` its high nibble; `w = d * (q - 8)`.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q4_0;

impl BlockFormat for Q4_0 {
    const LEN: usize = 32;
    const BYTES: usize = 18;

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (j, &q) in b[2..18].iter().enumerate() {
            out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = f16_at(b, 0);
        let mut s = 0.0f32;
        for (j, &q) in b[2..18].iter().enumerate() {
            s += ((q & 0x0f) as i32 - 8) as f32 * x[j] + ((q >> 4) as i32 - 8) as f32 * x[j + 16];
        }
        d * s
    }
}

impl QuantDot for Q4_0 {
    /// `d dx Σ q qx - 8 d s`: unsigned nibbles times signed activations, offset applied once.
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let q = &b[2..18];
        let nib = q
            .iter()
            .map(|&v| (v & 15) as i32)
            .chain(q.iter().map(|&v| (v >> 4) as i32));
        let d = f16_at(b, 0);
        d * x[0].d * idot(nib, &x[0].qs) as f32 - 8.0 * d * x[0].s
    }
}
