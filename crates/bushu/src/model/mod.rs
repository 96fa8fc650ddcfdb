//! The Llama-family transformer (Llama 2/3, Mistral, Qwen2, TinyLlama, SmolLM).
//!
//! - [`config`]: hyper-parameters, whatever file they come from.
//! - [`loader`]: opens a model path (GGUF file, Hugging Face directory, llama2.c checkpoint) into a
//!   [`ModelFile`]: config, tensors under canonical GGUF names, tokenizer, metadata.
//! - [`weights`]: the tensors of each layer, checked against the config.
//! - [`kv_cache`]: keys and values of past positions.
//! - [`llama`]: the forward pass (prefill and incremental decode).
//! - [`pass`]: what a pass computes: rows that get logits, causal or token-tree visibility.

pub mod config;
pub mod kv_cache;
pub mod llama;
pub mod loader;
pub mod pass;
pub mod weights;

pub use config::{Config, RopeScaling};
pub use kv_cache::{KvCache, KvType};
pub use llama::Model;
pub use loader::{load, ModelFile};
pub use pass::{Logits, Pass};
