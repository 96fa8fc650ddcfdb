//! Q8_0: blocks of 32 weights, an f16 scale `d` and 32 signed bytes; `w = d * q`.

use super::q8::{idot, BlockQ8, QuantDot};
use super::{f16_at, BlockFormat};

pub struct Q8_0;

impl BlockFormat for Q8_0 {
    const LEN: usize = 32;
    const BYTES: usize = 34;

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0);
        for (o, &q) in out.iter_mut().zip(&b[2..34]) {
            *o = d * (q as i8) as f32;
        }
    }

    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        let d = f16_at(b, 0);
        let s: f32 = x.iter().zip(&b[2..34]).map(|(x, &q)| x * (q as i8) as f32).sum();
        d * s
    }
}

impl QuantDot for Q8_0 {
    fn dot_block_q8(b: &[u8], x: &[BlockQ8]) -> f32 {
        let i = idot(b[2..34].iter().map(|&q| q as i8 as i32), &x[0].qs);
        f16_at(b, 0) * x[0].d * i as f32
    }
}
