//! Speculative decoding (lecture §6; issue 18): a cheap proposer drafts up to `k` tokens, the target
//! model checks them all in one forward pass, and the tokens it would have produced anyway are kept —
//! several tokens for one pass of the large model, with exactly the target's output distribution.
//!
//! One concept per file, as vLLM's `spec_decode`:
//!
//! - [`proposer`]: the [`Proposer`] trait (draft up to `k` tokens, hear how many were accepted) and the
//!   draft sampling the model-based proposers share;
//! - [`lookup`]: prompt lookup (n-gram match over prompt and output, no model);
//! - [`draft_model`]: a second, smaller model with the same vocabulary and its own KV cache;
//! - [`self_spec`]: the target's own first layers as the draft (early exit, sharing its cache);
//! - [`combined`]: prompt lookup when it has a match, the draft model otherwise;
//! - [`medusa`]: Medusa heads on the target's last hidden state drafting a token tree (typical
//!   acceptance when sampling);
//! - [`semi_ar`]: the Medusa heads' guesses emitted without verification (semi-autoregressive
//!   decoding, lossy);
//! - [`rejection`]: the per-position acceptance rule (greedy match, or rejection sampling);
//! - [`verify`]: one verification step — one target pass over the last token and the drafts, the
//!   rule applied row by row, the cache and the sampler brought back to the accepted length;
//! - [`adaptive`]: the draft length, grown and shrunk from recent acceptance, and switched off when
//!   drafts keep being rejected;
//! - [`serving`]: the same proposers inside the serving engine, drafting for every running sequence
//!   in batched passes (a draft model in its own paged cache over the target's block tables);
//! - [`decoder`]: all of it as a [`crate::generate::Decoder`] for the ordinary generation loop (stop
//!   conditions, streaming, logprobs), entered through [`generate_speculative`].
//!
//! Plain decoding does not go through any of this: it costs nothing when speculation is off.

pub mod adaptive;
pub mod combined;
pub mod decoder;
pub mod draft_model;
pub mod lookup;
pub mod medusa;
pub mod proposer;
pub mod rejection;
pub mod self_spec;
pub mod semi_ar;
pub mod serving;
pub mod verify;

pub use adaptive::{DraftLength, DraftLengthParams};
pub use combined::LookupThenDraft;
pub use decoder::{generate_fast_forward, generate_speculative, SpecDecoder, MAX_FORCED};
pub use draft_model::{check_same_vocabulary, load_draft, DraftModel, DraftTree};
pub use lookup::PromptLookup;
pub use medusa::{Medusa, MedusaHeads, Typical};
pub use proposer::{Proposal, Proposer};
pub use self_spec::SelfSpeculation;

use serde::Serialize;
use std::path::{Path, PathBuf};

/// The proposer asked for (`--draft-model`, `--lookup`, `--self-speculate`, `--draft-model` with
/// `--lookup`, or none).
#[derive(Clone, Debug, PartialEq)]
pub enum Speculation {
    Off,
    DraftModel(PathBuf),
    Lookup {
        ngram: usize,
    },
    SelfSpeculate {
        layers: usize,
    },
    /// Prompt lookup when it has a match, the draft model otherwise ([`combined`]).
    LookupThenDraft {
        draft: PathBuf,
        ngram: usize,
    },
    /// Medusa heads drafting token trees of at most `nodes` nodes ([`medusa`]; run and chat).
    Medusa {
        heads: PathBuf,
        nodes: usize,
        typical: Typical,
    },
}

impl Speculation {
    /// The draft model to load, if any.
    pub fn draft_path(&self) -> Option<&Path> {
        match self {
            Speculation::DraftModel(p) | Speculation::LookupThenDraft { draft: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// Speculative decoding as asked for: the proposer, the draft length, the draft confidence floor.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecOptions {
    pub method: Speculation,
    pub length: DraftLengthParams,
    pub p_min: f32,
    /// The draft model's classifier over the first `n` vocabulary entries only
    /// ([`crate::model::Model::head_rows`]).
    pub draft_vocab: Option<usize>,
    /// The draft model's matrices re-encoded in this type when loaded ([`crate::quant::requant`]).
    pub draft_quant: Option<kernels::DType>,
    /// A draft model drafting token trees (`bushu run` and `chat`, greedy).
    pub tree: Option<DraftTree>,
}

impl SpecOptions {
    /// No speculation.
    pub fn off() -> SpecOptions {
        SpecOptions {
            method: Speculation::Off,
            length: DraftLengthParams::default(),
            p_min: 0.75,
            draft_vocab: None,
            draft_quant: None,
            tree: None,
        }
    }
}

/// What speculation did over one generation (llama-server's `draft_n`, `draft_n_accepted`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SpecStats {
    /// Draft tokens proposed and verified.
    pub draft_n: usize,
    /// Draft tokens the target accepted.
    pub draft_n_accepted: usize,
    /// Target passes that verified at least one draft.
    pub draft_steps: usize,
    /// Target passes in all after the prefill (with drafts or without).
    pub target_passes: usize,
    /// Whether speculation was switched off for lack of acceptance.
    pub switched_off: bool,
    /// Times speculation paused for being slower than plain steps (timed draft length only).
    pub pauses: usize,
    /// Steps that verified a token tree.
    pub tree_steps: usize,
    /// Tree steps whose accepted branch took a second choice of the draft (what a chain would have
    /// missed).
    pub tree_second_choices: usize,
    /// Structured output's fast-forward: grammar-forced tokens fed as drafts, how many of them were
    /// kept, and the passes that fed them (counted in `target_passes` too, not in `draft_*`).
    pub forced_n: usize,
    pub forced_n_accepted: usize,
    pub forced_steps: usize,
}

impl SpecStats {
    /// Mean accepted length: tokens produced per target pass that verified drafts (accepted drafts + the
    /// target's own token), EAGLE's τ; 0 when nothing was drafted.
    pub fn mean_accepted_length(&self) -> f64 {
        if self.draft_steps == 0 {
            return 0.0;
        }
        (self.draft_n_accepted + self.draft_steps) as f64 / self.draft_steps as f64
    }

    /// Fraction of the drafted tokens accepted (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.draft_n == 0 {
            return 0.0;
        }
        self.draft_n_accepted as f64 / self.draft_n as f64
    }
}
