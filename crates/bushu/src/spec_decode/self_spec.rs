//! Self-speculation (LayerSkip, Elhoushi et al. 2024; Draft & Verify, Zhang et al. 2023): the target's
//! own first `L` layers, then its final norm and classifier, are the draft ([`crate::model::Pass`]'s
//! `exit_after`). No second model and no second cache: drafts are run one by one with early-exit passes
//! in the target's own cache (which store keys and values for the first `L` layers only), then the
//! cache is rewound to where verification starts, and the full verification pass over the same
//! positions rewrites every layer's keys and values — the first `L` layers with the very values the
//! draft wrote, the others for the first time.

use super::proposer::{push, DraftSampler, Proposal, Proposer};
use crate::model::llama::State;
use crate::model::{Logits, Model, Pass};
use crate::sampling::{Context, SamplingParams};
use anyhow::{bail, Result};

/// The early-exit draft through the first `layers` layers of the target.
pub struct SelfSpeculation {
    layers: usize,
    sampler: DraftSampler,
}

impl SelfSpeculation {
    /// Drafts with the first `layers` layers of a target of `n_layers` (`1 ≤ layers < n_layers`).
    pub fn new(layers: usize, n_layers: usize, params: &SamplingParams, p_min: f32) -> Result<SelfSpeculation> {
        if layers == 0 || layers >= n_layers {
            bail!("self-speculation drafts with the first L layers: L must be between 1 and {} (the model has {n_layers} layers), got {layers}", n_layers - 1);
        }
        Ok(SelfSpeculation {
            layers,
            sampler: DraftSampler::new(params, p_min)?,
        })
    }
}

impl Proposer for SelfSpeculation {
    fn name(&self) -> &'static str {
        "self-speculation"
    }

    fn propose(&mut self, seq: &Context, k: usize, target: &Model, state: &mut State) -> Result<Proposal> {
        let pos0 = state.pos();
        // The drafts' exit passes take the positions the verification pass (last token + k drafts) takes.
        if pos0 + k + 1 > state.cache.capacity() {
            return Ok(Proposal::default());
        }
        self.sampler.start(seq);
        let mut out = Proposal::default();
        let mut t = *seq.tokens.last().expect("a sequence to draft after");
        let result = (|| -> Result<()> {
            while out.len() < k {
                let logits = target.forward_pass(state, Pass::causal(&[t], Logits::Last).exit_after(self.layers))?;
                let (d, q, sure) = self.sampler.pick(logits);
                push(&mut out, d, q);
                if !sure {
                    out.unsure = 1;
                    break;
                }
                t = d;
            }
            Ok(())
        })();
        // Whatever happened, the cache is back where verification starts.
        state.rewind(pos0);
        result?;
        Ok(out)
    }

    fn accepted(&mut self, _n: usize) {}
}
