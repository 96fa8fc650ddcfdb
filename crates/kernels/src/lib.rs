//! bushu's CPU kernels, kept apart from the model code: storage formats and their dot products,
//! matrix products split across threads, attention, and the per-vector operations of a transformer block.

pub mod attention;
pub mod dtype;
pub mod matmul;
pub mod ops;
pub mod quants;

pub use dtype::DType;
pub use matmul::{matmul, QMatrix};
