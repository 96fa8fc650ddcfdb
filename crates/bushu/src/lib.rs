//! bushu (部署, "deploy"): an LLM inference and serving engine.
//!
//! - [`formats`]: GGUF, Hugging Face safetensors directories and llama2.c checkpoints, memory-mapped.
//! - [`model`]: the Llama-family transformer: config, weights, KV cache and the forward pass.
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers, streaming detokenization.
//! - [`sampling`]: logit processors and token choice (greedy, temperature, top-k, top-p).
//! - [`generate`]: the prefill / decode loop that ties them together.
//! - [`cli`]: the `bushu` command line.

pub mod cli;
pub mod formats;
pub mod generate;
pub mod model;
pub mod roofline;
pub mod sampling;
pub mod tokenizer;
