//! Quantization (lecture §5): affine integer quantization, llama.cpp's GGUF block types, GPTQ.
//!
//! - [`affine`]: `X_q = R(X/S) − Z`, `X~ = S(X_q + Z)`, symmetric/asymmetric, per tensor/channel/group,
//!   reconstruction error reports.
//! - [`gguf_types`]: llama.cpp's block encoders (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K), as `llama-quantize`.
//! - [`mixture`]: llama.cpp's file types (Q4_K_M, Q3_K_S, ...) and the tensor type each gives every tensor.
//! - [`int_types`]: bushu's `intB-{sym,asym}-{tensor,channel,gN}` types and the containers they are stored in.
//! - [`calib`]: calibration statistics (`XᵀX` per projection input) from a text.
//! - [`gptq`]: GPTQ with damping, groups and act-order.
//! - [`llm_int8`]: LLM.int8() mixed-precision inference (int8 weights and activations, f32 outliers).
//! - [`convert`]: GGUF → GGUF conversion behind `bushu quantize`.
//! - [`requant`]: a loaded model's matrices re-encoded in memory (`--draft-quant`).

pub mod affine;
pub mod calib;
pub mod convert;
pub mod gguf_types;
pub mod gptq;
pub mod int_types;
pub mod llm_int8;
pub mod mixture;
pub mod requant;
