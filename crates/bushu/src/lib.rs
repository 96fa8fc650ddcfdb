//! bushu (部署, "deploy"): an LLM inference and serving engine.
//!
//! - [`formats`]: GGUF, Hugging Face safetensors directories and llama2.c checkpoints, memory-mapped.
//! - [`model`]: the Llama-family transformer: config, weights, KV cache and the forward pass.
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers, streaming detokenization.
//! - [`sampling`]: logit processors and token choice (greedy, temperature, top-k, top-p).
//! - [`generate`]: the prefill / decode loop that ties them together.
//! - [`structured`]: structured output (JSON Schema, regex, Lark grammars on llguidance), tool calls.
//! - [`spec_decode`]: speculative decoding for `bushu run` (prompt lookup, draft model, self-speculation).
//! - [`engine`]: the serving engine: paged KV cache, continuous batching, prefix caching, preemption.
//! - [`server`]: the OpenAI-compatible HTTP server over the engine (`bushu serve`).
//! - [`quant`]: quantization (affine int types, llama.cpp block types, GPTQ); [`perplexity`]: evaluation.
//! - [`chat`]: chat templates (Jinja, Hugging Face semantics); [`pull`]: the model cache and `bushu pull`.
//! - [`cli`]: the `bushu` command line; [`display`]: untrusted text in messages, control characters escaped.

pub mod chat;
pub mod cli;
pub mod display;
pub mod engine;
pub mod formats;
pub mod generate;
pub mod model;
pub mod perplexity;
pub mod pull;
pub mod quant;
pub mod roofline;
pub mod sampling;
pub mod server;
pub mod spec_decode;
pub mod structured;
pub mod tokenizer;
pub mod tradeoff;
