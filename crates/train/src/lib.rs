//! bushu-train: bushu's training path, apart from the inference crates. Autograd and AdamW come from
//! candle (`candle-core`/`candle-nn`, CPU); bushu does what it does best — the teacher's forward pass
//! (logits at every position, the residual stream after chosen layers: `Pass::keep_hidden`),
//! tokenization, GGUF reading, and GGUF writing (the writer `bushu quantize` uses).
//!
//! - [`student`]: a Llama decoder in candle ops that have gradients, laid out as bushu reads GGUF.
//! - [`loss`]: hard-label cross-entropy, top-k logit KD at a temperature, feature KD through a learned Φ.
//! - [`teacher`]: training windows and the teacher's cached top-k logits and hidden states.
//! - [`distill`]: the training loop (`bushu distill`).
//! - [`medusa`]: Medusa heads for a frozen model (`bushu train-medusa`), written as a GGUF side file;
//!   [`medusa_eval`] measures them (`bushu-train eval-medusa`).
//! - [`routers`]: mixture-of-depths routers for a frozen model (`bushu train-routers`), a GGUF side file.
//! - [`exit_adapters`]: early-exit adapters, the tuned lens, for a frozen model (`bushu train-exit-adapters`),
//!   a GGUF side file.
//! - [`selfgen`]: self-distillation data, the teacher's own greedy continuations and answers.
//! - [`export`]: the student as a Llama GGUF with the teacher's tokenizer.
//! - [`optim`], [`checkpoint`]: AdamW with open state, and resumable checkpoints.
//! - [`progress`]: a progress bar on a terminal, plain lines elsewhere.
//!
//! docs/DISTILLATION.md has the method, the measurements and the commands to rerun them.

pub mod checkpoint;
pub mod distill;
pub mod exit_adapters;
pub mod export;
pub mod loss;
pub mod medusa;
pub mod medusa_eval;
pub mod optim;
pub mod progress;
pub mod routers;
pub mod selfgen;
pub mod student;
pub mod teacher;
