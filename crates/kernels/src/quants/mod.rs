//! Weight storage formats: how a row of weights is laid out in bytes, how to turn it back into f32
//! (`dequantize_row`) and how to take its dot product with f32 activations (`dot_row`).
//!
//! Each block format is one file implementing [`BlockFormat`]; plain float types share the same trait
//! with a block of one element. The exact path here computes in f32 against the dequantized values;
//! SIMD and int8-activation paths live beside it and are checked against it.

mod floats;
pub mod k_quants;
mod q4_0;
mod q4_1;
mod q5;
pub mod q8;
mod q8_0;

pub use floats::{Bf16, F16, F32};
pub use k_quants::{Q2K, Q3K, Q4K, Q5K, Q6K};
pub use q4_0::Q4_0;
pub use q4_1::Q4_1;
pub use q5::{unpack_q5_0, Q5_0, Q5_1};
pub use q8::{quantize_row_q16, quantize_row_q8, ActScales, BlockQ16, BlockQ16P, BlockQ8, QuantDot, QK8};
pub use q8_0::Q8_0;

use crate::dtype::DType;

/// A block-quantized (or plain) storage format.
pub trait BlockFormat {
    /// Elements per block.
    const LEN: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Writes the `LEN` values of one block.
    fn dequantize_block(block: &[u8], out: &mut [f32]);
    /// Dot product of one block with `LEN` activations.
    fn dot_block(block: &[u8], x: &[f32]) -> f32;
}

fn dequantize_row_as<B: BlockFormat>(row: &[u8], out: &mut [f32]) {
    for (block, out) in row.chunks_exact(B::BYTES).zip(out.chunks_exact_mut(B::LEN)) {
        B::dequantize_block(block, out);
    }
}

fn dot_row_as<B: BlockFormat>(row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(B::BYTES)
        .zip(x.chunks_exact(B::LEN))
        .map(|(block, x)| B::dot_block(block, x))
        .sum()
}

/// Calls `$f::<Format>` for the block format of `$dtype`, or panics for types without kernels
/// (loaders reject those before any kernel runs).
macro_rules! dispatch {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<F32>($($arg),*),
            DType::F16 => $f::<F16>($($arg),*),
            DType::BF16 => $f::<Bf16>($($arg),*),
            DType::Q8_0 => $f::<Q8_0>($($arg),*),
            DType::Q4_0 => $f::<Q4_0>($($arg),*),
            DType::Q4_1 => $f::<Q4_1>($($arg),*),
            DType::Q5_0 => $f::<Q5_0>($($arg),*),
            DType::Q5_1 => $f::<Q5_1>($($arg),*),
            DType::Q4K => $f::<Q4K>($($arg),*),
            DType::Q5K => $f::<Q5K>($($arg),*),
            DType::Q6K => $f::<Q6K>($($arg),*),
            DType::Q2K => $f::<Q2K>($($arg),*),
            DType::Q3K => $f::<Q3K>($($arg),*),
            other => panic!("no kernel for tensor type {other}"),
        }
    };
}

/// Like `dispatch!` for the formats with an int8-activation dot product.
macro_rules! dispatch_q8 {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::Q8_0 => $f::<Q8_0>($($arg),*),
            DType::Q4_0 => $f::<Q4_0>($($arg),*),
            DType::Q4_1 => $f::<Q4_1>($($arg),*),
            DType::Q5_0 => $f::<Q5_0>($($arg),*),
            DType::Q5_1 => $f::<Q5_1>($($arg),*),
            DType::Q4K => $f::<Q4K>($($arg),*),
            DType::Q5K => $f::<Q5K>($($arg),*),
            DType::Q6K => $f::<Q6K>($($arg),*),
            DType::Q2K => $f::<Q2K>($($arg),*),
            DType::Q3K => $f::<Q3K>($($arg),*),
            other => panic!("no int8-activation kernel for tensor type {other}"),
        }
    };
}

/// Whether this crate can compute with weights of type `dtype`.
pub fn supported(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32
            | DType::F16
            | DType::BF16
            | DType::Q8_0
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q4K
            | DType::Q5K
            | DType::Q6K
            | DType::Q2K
            | DType::Q3K
    )
}

/// Whether `dtype` has a dot product with int8-quantized activations ([`BlockQ8`]); the "fast"
/// precision uses it, the plain float types always compute with f32 activations.
pub fn has_q8_dot(dtype: DType) -> bool {
    supported(dtype) && dtype.is_quantized()
}

fn dot_row_q8_as<B: QuantDot>(row: &[u8], x: &[BlockQ8]) -> f32 {
    let per = B::LEN / QK8;
    row.chunks_exact(B::BYTES)
        .zip(x.chunks_exact(per))
        .map(|(block, x)| B::dot_block_q8(block, x))
        .sum()
}

/// Dot product of a stored row with int8-quantized activations (`x.len() * 32` elements): the scalar
/// reference of the fast path. Panics for types without such a kernel (see [`has_q8_dot`]).
pub fn dot_row_q8(dtype: DType, row: &[u8], x: &[BlockQ8]) -> f32 {
    debug_assert_eq!(Some(row.len()), dtype.bytes_for(x.len() * QK8));
    dispatch_q8!(dtype, dot_row_q8_as(row, x))
}

/// Dequantizes `out.len()` values stored in `row` (a whole number of blocks).
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    debug_assert_eq!(Some(row.len()), dtype.bytes_for(out.len()));
    dispatch!(dtype, dequantize_row_as(row, out))
}

/// Dot product of a stored row with `x` (the row has `x.len()` elements), computed in f32.
pub fn dot_row(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(Some(row.len()), dtype.bytes_for(x.len()));
    dispatch!(dtype, dot_row_as(row, x))
}

#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
