//! bushu's CPU kernels, kept apart from the model code: storage formats and their dot products,
//! matrix products split across threads, attention, and the per-vector operations of a transformer block.
//!
//! SIMD: [`simd::Simd`] picks AVX-512 / AVX2 / NEON / scalar kernels at run time (`BUSHU_SIMD`
//! forces one); `x86` and `neon` hold the per-architecture block kernels behind one generic driver.

pub mod attention;
pub mod bf16;
pub mod buffer;
pub mod dtype;
pub mod int8_mixed;
pub mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod ops;
pub mod packed;
pub mod paged_attention;
pub mod pool;
pub mod quants;
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dtype::DType;
pub use matmul::{matmul, matmul_many, matmul_many_on, matmul_on, matmul_with, PackSlot, Precision, QMatrix};
pub use simd::Simd;
