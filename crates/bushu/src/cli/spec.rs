//! The speculative-decoding flags, one set for `run`, `chat`, `bench` and `serve`: which proposer
//! (`--draft-model`, `--lookup`, `--self-speculate`) and how long its drafts are (`--draft-max`,
//! `--draft-min`, `--draft-p-min`), checked before any model is loaded; then, with the model, the
//! checks that need it (the layer count, the draft's vocabulary) and the proposer itself.

use super::ModelArgs;
use crate::model::{Model, ModelFile};
use crate::sampling::SamplingParams;
use crate::spec_decode::{
    load_draft, DraftLengthParams, DraftModel, DraftTree, LookupThenDraft, Medusa, MedusaHeads, PromptLookup, Proposer,
    SelfSpeculation, SpecOptions, Speculation, Typical,
};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding with this draft model (same vocabulary as the model).
    #[arg(long, value_name = "PATH")]
    pub draft_model: Option<PathBuf>,
    /// Speculative decoding: draft at most K tokens per step (the length adapts to acceptance).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub draft_max: usize,
    /// Speculative decoding: draft at least K tokens per step; shorter drafts are not verified (0: any).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub draft_min: usize,
    /// Do not pause speculation while it is measured slower than plain decoding (by default it
    /// pauses; timing then decides when to draft, so a seeded sampled run may draw differently from
    /// run to run — its distribution stays the target's).
    #[arg(long)]
    pub no_draft_timing: bool,
    /// With --draft-model or --self-speculate: stop drafting when the draft's top probability is below P.
    #[arg(long, value_name = "P", default_value_t = 0.75, allow_negative_numbers = true)]
    pub draft_p_min: f32,
    /// With --draft-model: the draft's classifier computes only the first N vocabulary entries (FR-Spec;
    /// byte-level BPE numbers tokens most frequent first). 0: the whole vocabulary.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub draft_vocab: usize,
    /// With --draft-model: re-encode the draft's matrices stored in more bits as TYPE when loading
    /// (q4_0, q4_1, q5_0, q8_0): fewer bytes read per draft token; the target verifies every token, so
    /// greedy output is unchanged and sampled output keeps the target's distribution — only how often
    /// drafts are accepted may change.
    #[arg(long, value_name = "TYPE")]
    pub draft_quant: Option<String>,
    /// Speculative decoding by prompt lookup: draft the tokens that followed the last n-gram's most recent
    /// earlier occurrence in the prompt and output. With --draft-model: lookup when it matches at least
    /// 2 tokens, the draft model otherwise.
    #[arg(long)]
    pub lookup: bool,
    /// With --lookup: match n-grams of at most N tokens (longest first).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub lookup_ngram: usize,
    /// With --draft-model (greedy, run and chat): draft a token tree with up to N nodes beyond the chain —
    /// a second choice where the draft is unsure — verified in one pass. 0: chains.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub draft_tree: usize,
    /// With --draft-tree: a drafted position whose top probability is below P gets a sibling.
    #[arg(long, value_name = "P", default_value_t = 0.9, allow_negative_numbers = true)]
    pub draft_tree_p: f32,
    /// Speculative decoding with the model's own first L layers as the draft (early exit).
    #[arg(long, value_name = "L")]
    pub self_speculate: Option<usize>,
    /// Speculative decoding with Medusa heads (run and chat): the heads file `bushu train-medusa` wrote
    /// for this model. Greedy output is plain greedy decoding's; sampling uses typical acceptance (lossy).
    #[arg(long, value_name = "HEADS")]
    pub medusa: Option<PathBuf>,
    /// With --medusa: draft a token tree of at most N nodes per step from the heads' top candidates.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub medusa_tree: usize,
    /// With --medusa: the heads score only the first N token ids (FR-Spec: a cheaper classifier product
    /// for the drafts; the output is unchanged). 0: the heads file's setting (else the whole vocabulary).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub medusa_vocab: usize,
    /// With --medusa and sampling: typical acceptance's hard threshold ε (accept x if
    /// p(x) > min(ε, δ·exp(−H(p)))).
    #[arg(long, value_name = "EPS", default_value_t = 0.09, allow_negative_numbers = true)]
    pub medusa_epsilon: f32,
    /// With --medusa and sampling: typical acceptance's entropy-scaled threshold δ.
    #[arg(long, value_name = "DELTA", default_value_t = 0.3, allow_negative_numbers = true)]
    pub medusa_delta: f32,
    /// With --medusa (bushu run): semi-autoregressive decoding, LOSSY — each pass emits the model's token
    /// and the first K heads' top-1 guesses WITHOUT verification. 0: plain decoding.
    #[arg(long, value_name = "K")]
    pub semi_ar: Option<usize>,
    /// With --medusa (bushu run): non-autoregressive decoding, LOSSY — one pass over the prompt gives the
    /// model's token and every head's guess, and that is the output (at most heads + 1 tokens).
    #[arg(long)]
    pub non_ar: bool,
}

impl SpecArgs {
    /// The flags, checked (everything but what needs the model: its layer count, the draft's
    /// vocabulary).
    pub fn options(&self) -> Result<SpecOptions> {
        let length = DraftLengthParams {
            max: self.draft_max,
            min: self.draft_min,
            timed: !self.no_draft_timing,
            ..DraftLengthParams::default()
        };
        length.validate()?;
        if !(0.0..=1.0).contains(&self.draft_p_min) {
            bail!("--draft-p-min must be in [0, 1] (got {})", self.draft_p_min);
        }
        if self.lookup_ngram == 0 {
            bail!("--lookup-ngram must be at least 1 (got 0)");
        }
        if self.medusa.is_some() && (self.self_speculate.is_some() || self.draft_model.is_some() || self.lookup) {
            bail!("--medusa cannot be combined with --draft-model, --lookup or --self-speculate: choose one proposer");
        }
        if self.medusa.is_none() && (self.semi_ar.is_some() || self.non_ar) {
            bail!("--semi-ar and --non-ar emit the guesses of Medusa heads: they need --medusa HEADS");
        }
        if self.medusa_vocab > 0 && self.medusa.is_none() {
            bail!("--medusa-vocab restricts the Medusa heads' classifier: it needs --medusa HEADS");
        }
        if self.semi_ar.is_some() && self.non_ar {
            bail!("--semi-ar and --non-ar cannot be combined: choose one");
        }
        if self.self_speculate.is_some() && (self.draft_model.is_some() || self.lookup) {
            bail!("--self-speculate cannot be combined with --draft-model or --lookup: choose one proposer (--draft-model and --lookup go together)");
        }
        let typical = Typical {
            epsilon: self.medusa_epsilon,
            delta: self.medusa_delta,
        };
        if self.medusa.is_some() {
            typical.validate()?;
            if self.medusa_tree == 0 {
                bail!("--medusa-tree must be at least 1 (the number of draft nodes per step)");
            }
        }
        let method = match (&self.draft_model, self.self_speculate) {
            _ if self.semi_ar.is_some() || self.non_ar => Speculation::Off,
            _ if self.medusa.is_some() => Speculation::Medusa {
                heads: self.medusa.clone().expect("--medusa"),
                nodes: self.medusa_tree,
                typical,
            },
            (Some(p), _) if self.lookup => Speculation::LookupThenDraft {
                draft: p.clone(),
                ngram: self.lookup_ngram,
            },
            (Some(p), _) => Speculation::DraftModel(p.clone()),
            (_, Some(0)) => bail!("--self-speculate must be at least 1 (the number of layers drafting)"),
            (_, Some(l)) => Speculation::SelfSpeculate { layers: l },
            _ if self.lookup => Speculation::Lookup {
                ngram: self.lookup_ngram,
            },
            _ => Speculation::Off,
        };
        if self.draft_vocab > 0 && method.draft_path().is_none() {
            bail!("--draft-vocab restricts a draft model's classifier: it needs --draft-model");
        }
        if self.draft_quant.is_some() && method.draft_path().is_none() {
            bail!("--draft-quant re-encodes a draft model's weights: it needs --draft-model");
        }
        let draft_quant = self
            .draft_quant
            .as_deref()
            .map(crate::quant::requant::parse_draft_type)
            .transpose()?;
        if self.draft_tree > 0 && method.draft_path().is_none() {
            bail!("--draft-tree grows a draft model's token tree: it needs --draft-model");
        }
        if !(0.0..=1.0).contains(&self.draft_tree_p) {
            bail!("--draft-tree-p must be in [0, 1] (got {})", self.draft_tree_p);
        }
        Ok(SpecOptions {
            method,
            length,
            p_min: self.draft_p_min,
            draft_vocab: (self.draft_vocab > 0).then_some(self.draft_vocab),
            draft_quant,
            tree: (self.draft_tree > 0).then_some(DraftTree {
                extra: self.draft_tree,
                p_branch: self.draft_tree_p,
            }),
        })
    }
}

/// A note on stderr when a draft model (loaded without `--draft-quant`) would read at least 15 % fewer
/// bytes per token re-encoded as Q4_0 — drafting is bound by those bytes and the output does not
/// depend on them (docs/SPECULATIVE.md). Printed once the proposer is built (after every check).
pub fn draft_note(opts: &SpecOptions, draft: Option<&Model>) {
    let (None, Some(d)) = (opts.draft_quant, draft) else {
        return;
    };
    let now = d.weights.bytes_per_token();
    let q4 = crate::quant::requant::bytes_as(d.weights.matrices(), kernels::DType::Q4_0);
    if (q4 as f64) < 0.85 * now as f64 {
        let mb = |b: usize| crate::model::memory::fmt_bytes(b as u128);
        eprintln!(
            "note: the draft model reads {} per token; --draft-quant q4_0 would read {} (greedy output stays the same)",
            mb(now),
            mb(q4)
        );
    }
}

/// The checks that need the target (self-speculation's layer count; the draft model's vocabulary, when
/// it is opened) and the draft model of `opts`, built as the target is (`None` without one).
pub fn load_draft_for(opts: &SpecOptions, file: &ModelFile, model: &Model, margs: &ModelArgs) -> Result<Option<Model>> {
    if let Some(path) = opts.method.draft_path() {
        let d = load_draft(path, file, &margs.options(), opts).map_err(|e| super::sampling::flag_error(e, &[]))?;
        return Ok(Some(d));
    }
    match &opts.method {
        Speculation::SelfSpeculate { layers } if *layers >= model.config.n_layers => bail!(
            "--self-speculate must be between 1 and {} (the model has {} layers), got {layers}",
            model.config.n_layers.max(2) - 1,
            model.config.n_layers
        ),
        _ => Ok(None),
    }
}

/// The Medusa heads `--medusa` names, checked against the model (`None` without the flag).
pub fn load_medusa_for(a: &SpecArgs, file: &ModelFile) -> Result<Option<MedusaHeads>> {
    let heads = a.medusa.as_ref().map(|p| MedusaHeads::load(p, file)).transpose()?;
    match heads {
        Some(h) if a.medusa_vocab > 0 => Ok(Some(h.with_vocab(Some(a.medusa_vocab))?)),
        h => Ok(h),
    }
}

/// The proposer of `opts` for `model` decoding with `sampling` in a context of `ctx` (`draft`: the model
/// [`load_draft_for`] built; `medusa`: the heads [`load_medusa_for`] read); `None` without speculation.
pub fn proposer<'a>(
    opts: &SpecOptions,
    draft: Option<&'a Model>,
    medusa: Option<&'a MedusaHeads>,
    model: &Model,
    ctx: usize,
    sampling: &SamplingParams,
) -> Result<Option<Box<dyn Proposer + 'a>>> {
    Ok(match &opts.method {
        Speculation::Off => None,
        Speculation::Medusa { nodes, typical, .. } => {
            let heads = medusa.expect("the Medusa heads were loaded");
            let rule = (!sampling.is_greedy()).then_some(*typical);
            Some(Box::new(Medusa::new(heads, *nodes, rule)?))
        }
        Speculation::DraftModel(_) => Some(Box::new(draft_model(opts, draft, ctx, sampling)?)),
        Speculation::Lookup { ngram } => Some(Box::new(PromptLookup::new(*ngram)?)),
        Speculation::LookupThenDraft { ngram, .. } => Some(Box::new(LookupThenDraft::new(
            PromptLookup::new(*ngram)?,
            draft_model(opts, draft, ctx, sampling)?,
        ))),
        Speculation::SelfSpeculate { layers } => Some(Box::new(SelfSpeculation::new(
            *layers,
            model.config.n_layers,
            sampling,
            opts.p_min,
        )?)),
    })
}

/// The draft model's proposer, drafting trees when `opts` asks for them.
fn draft_model<'a>(
    opts: &SpecOptions,
    draft: Option<&'a Model>,
    ctx: usize,
    sampling: &SamplingParams,
) -> Result<DraftModel<'a>> {
    let d = DraftModel::new(draft.expect("the draft model was loaded"), ctx, sampling, opts.p_min)?;
    match opts.tree {
        Some(t) => d.with_tree(t),
        None => Ok(d),
    }
}
