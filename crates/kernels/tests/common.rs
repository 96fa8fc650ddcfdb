//! Shared helpers of the kernel tests: a seeded generator and random rows of every weight type.
#![allow(dead_code)]

use half::{bf16, f16};
use kernels::DType;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// The types with kernels.
pub const TYPES: [DType; 13] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::Q2K,
    DType::Q3K,
];

/// `rows` random rows of `cols` weights of type `t`: random codes, finite random scales.
pub fn random_matrix(rng: &mut Rng, t: DType, rows: usize, cols: usize) -> Vec<u8> {
    let n = rows * cols;
    match t {
        DType::F32 => return rng.vec(n, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => {
            return rng
                .vec(n, 1.0)
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect()
        }
        DType::BF16 => {
            return rng
                .vec(n, 1.0)
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let mut data: Vec<u8> = (0..t.bytes_for(n).unwrap()).map(|_| rng.byte()).collect();
    for b in data.chunks_exact_mut(t.block_bytes()) {
        match t {
            DType::Q8_0 => {
                put_f16(b, 0, rng.f32() * 0.01);
                // llama.cpp never stores -128.
                b[2..].iter_mut().for_each(|q| *q = (*q as i8).max(-127) as u8);
            }
            DType::Q4_0 | DType::Q5_0 => put_f16(b, 0, rng.f32() * 0.1),
            DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => {
                put_f16(b, 0, rng.f32() * 0.1);
                put_f16(b, 2, rng.f32() * 0.1);
            }
            DType::Q6K => put_f16(b, 208, rng.f32() * 0.01),
            DType::Q2K => {
                put_f16(b, 80, rng.f32() * 0.01);
                put_f16(b, 82, rng.f32() * 0.01);
            }
            DType::Q3K => put_f16(b, 108, rng.f32() * 0.01),
            other => panic!("no generator for {other}"),
        }
    }
    data
}

/// Largest `|a - b|` relative to the scale `s` of each output (its sum of `|w x|`).
pub fn worst(a: &[f32], b: &[f32], s: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .zip(s)
        .map(|((a, b), s)| (a - b).abs() / s.max(1e-6))
        .fold(0.0, f32::max)
}

/// `Σ |w x|` per output, from dequantized rows.
pub fn abs_scale(t: DType, data: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let m = kernels::QMatrix::new(t, rows, cols, data);
    let mut w = vec![0.0; cols];
    let mut out = vec![0.0; rows * (x.len() / cols)];
    for r in 0..rows {
        m.dequantize_row(r, &mut w);
        for (ti, xt) in x.chunks_exact(cols).enumerate() {
            out[ti * rows + r] = w.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    out
}

/// An F16 or BF16 matrix's bytes as f32 values.
pub fn float_weights(t: DType, data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|b| match t {
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            _ => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        })
        .collect()
}
