//! Plain float storage (F32, F16, BF16) as one-element blocks.

use super::BlockFormat;

pub struct F32;
pub struct F16;
pub struct Bf16;

impl BlockFormat for F32 {
    const LEN: usize = 1;
    const BYTES: usize = 4;
    #[inline]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    #[inline]
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x[0]
    }
}

impl BlockFormat for F16 {
    const LEN: usize = 1;
    const BYTES: usize = 2;
    #[inline]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = super::f16_at(b, 0);
    }
    #[inline]
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        super::f16_at(b, 0) * x[0]
    }
}

impl BlockFormat for Bf16 {
    const LEN: usize = 1;
    const BYTES: usize = 2;
    #[inline]
    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        out[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
    #[inline]
    fn dot_block(b: &[u8], x: &[f32]) -> f32 {
        half::bf16::from_le_bytes([b[0], b[1]]).to_f32() * x[0]
    }
}
