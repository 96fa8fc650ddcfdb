//! The serving engine (issue 7), one concept per module as in nano-vllm:
//!
//! - [`sequence`]: a request's token stream, its progress through the cache, its sampler.
//! - [`block_manager`]: the paged KV cache's blocks — allocation, ref counts, prefix cache (hash, LRU).
//! - [`scheduler`]: continuous batching with a per-step token budget, chunked prefill, preemption.
//! - [`model_runner`]: the batched forward step with per-sequence paged attention.
//! - [`engine`]: the step loop tying them together; it also verifies a drafter's guesses (chains or
//!   trees of tokens) in the decode pass, so a step may give several tokens per sequence.
//! - [`metrics`]: counters, histograms and gauges in the Prometheus text format.
//!
//! The engine is synchronous and single-threaded at its core (the kernels use the thread pool);
//! [`crate::server`] runs it on its own thread.

pub mod block_manager;
#[allow(clippy::module_inception)]
pub mod engine;
pub mod metrics;
pub mod model_runner;
pub mod scheduler;
pub mod sequence;

pub use engine::{Engine, EngineConfig, KvPlan, KvSizing, Logprobs, Output};
pub use sequence::{FinishReason, Request, SeqId};
