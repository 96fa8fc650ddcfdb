//! The decoder-only transformers bushu runs (Llama 2/3, Mistral, Qwen2, TinyLlama, SmolLM, Gemma 3).
//!
//! - [`arch`]: the table of model families: names, tensors, how each block differs from Llama's.
//! - [`config`]: hyper-parameters, whatever file they come from.
//! - [`hf`], [`llama2c`]: a Hugging Face directory, a llama2.c checkpoint as a model (GGUF: [`arch`]).
//! - [`loader`]: opens a model path (GGUF file, Hugging Face directory, llama2.c checkpoint) into a
//!   [`ModelFile`]: config, tensors under canonical GGUF names, tokenizer, metadata.
//! - [`weights`]: the tensors of each layer, checked against the config.
//! - [`check`]: `--check-tensors`, every weight finite.
//! - [`kv_cache`]: keys and values of past positions.
//! - [`memory`]: the memory available, and size checks before allocating.
//! - [`options`]: the one builder from a model file to a runnable model.
//! - [`llama`]: the forward pass (prefill and incremental decode).
//! - [`early_exit`]: early exit by entropy (the exit rule, state propagation of skipped layers' K, V).
//! - [`mixture_of_depths`]: per-layer routers that let a token skip a layer (the routers file, thresholds).
//! - [`pass`]: what a pass computes: rows that get logits, causal or token-tree visibility.

pub mod arch;
pub mod check;
pub mod config;
pub mod early_exit;
pub mod exit_adapters;
pub mod hf;
pub mod kv_cache;
pub mod llama;
pub mod llama2c;
pub mod loader;
pub mod memory;
pub mod mixture_of_depths;
pub mod options;
pub mod pass;
pub mod weights;

pub use config::{Activation, Block, Config, RopeScaling};
pub use kv_cache::{KvCache, KvType};
pub use llama::{Model, Probe};
pub use loader::{load, GenerationDefaults, ModelFile};
pub use options::ModelOptions;
pub use pass::{Logits, Pass};
