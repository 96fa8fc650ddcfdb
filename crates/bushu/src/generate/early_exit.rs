//! Decoding with early exit by entropy (lossy; [`crate::model::early_exit`]): the prompt runs at full
//! depth, then every decode step is a one-token pass that may leave at an exit layer. Sampling, greedy
//! decoding and structured output's grammar work as in [`super::SampleDecoder`]; the stop conditions are
//! [`super::run_decoder`]'s.

use super::Decoder;
use crate::model::early_exit::{EarlyExit, StepCost};
use crate::model::llama::{Logits, State};
use crate::model::{Model, Pass};
use crate::sampling::{Sampler, SamplingParams};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

/// What early exit did over the decode steps (the prompt's full-depth pass, which gives the first
/// token, is not counted).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExitStats {
    /// Decode steps (one token each).
    pub steps: usize,
    /// Layers run, summed over the steps.
    pub layers: usize,
    /// Classifiers computed (exit heads tried, and the final one), summed over the steps.
    pub heads: usize,
    /// Steps by the number of layers they ran (the layer count: no exit).
    pub exits: BTreeMap<usize, usize>,
    /// Multiply-adds through the weights ([`StepCost`]), summed, and what full-depth steps would take.
    pub macs: f64,
    pub full_macs: f64,
}

impl ExitStats {
    /// Mean layers run per decode step (0 without one).
    pub fn mean_layers(&self) -> f64 {
        self.layers as f64 / self.steps.max(1) as f64
    }

    /// The weights' multiply-adds of the decode steps as a fraction of full-depth decoding (1 without a
    /// step).
    pub fn compute_fraction(&self) -> f64 {
        if self.full_macs > 0.0 {
            self.macs / self.full_macs
        } else {
            1.0
        }
    }

    /// Counts a step that ran `layers` layers under `rule` in a model of `cost`.
    pub fn record(&mut self, layers: usize, rule: &EarlyExit, cost: &StepCost) {
        let heads = if rule.threshold == 0.0 {
            1
        } else if layers == cost.n_layers {
            rule.layers.len() + 1
        } else {
            rule.layers.iter().filter(|&&l| l <= layers).count()
        };
        self.steps += 1;
        self.layers += layers;
        self.heads += heads;
        *self.exits.entry(layers).or_default() += 1;
        self.macs += cost.step(layers, heads);
        if rule.adapters.is_some() && rule.threshold > 0.0 {
            // Every exit head tried (all but the model's own) read the stream through an adapter.
            let exits_tried = heads - usize::from(layers == cost.n_layers);
            self.macs += exits_tried as f64 * cost.adapter;
        }
        self.full_macs += cost.full();
    }
}

/// Greedy or random sampling, each decode step exiting early by entropy.
pub struct EarlyExitDecoder<'a> {
    model: &'a Model,
    state: &'a mut State,
    sampler: Sampler,
    logits: Vec<f32>,
    rule: &'a EarlyExit,
    cost: StepCost,
    pub stats: ExitStats,
}

impl<'a> EarlyExitDecoder<'a> {
    pub fn new(model: &'a Model, state: &'a mut State, params: &SamplingParams, rule: &'a EarlyExit) -> Result<Self> {
        Ok(EarlyExitDecoder {
            model,
            state,
            sampler: Sampler::new(params)?,
            logits: Vec::new(),
            rule,
            cost: StepCost::of(&model.config),
            stats: ExitStats::default(),
        })
    }
}

impl Decoder for EarlyExitDecoder<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.sampler.set_prompt(prompt);
        self.logits = self.model.forward(self.state, prompt, Logits::Last)?.to_vec();
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        &self.logits
    }
    fn choose(&mut self) -> Result<u32> {
        Ok(self.sampler.sample(&self.logits))
    }
    fn feed(&mut self, token: u32) -> Result<()> {
        let tokens = [token];
        let pass = Pass::causal(&tokens, Logits::Last).exit_by_entropy(self.rule.rule());
        let l = self.model.forward_pass(self.state, pass)?;
        self.logits.copy_from_slice(l);
        self.stats.record(self.state.layers_run(), self.rule, &self.cost);
        Ok(())
    }
    fn room(&self) -> usize {
        self.state.cache.capacity() - self.state.pos()
    }
}

/// Generates from `prompt` after whatever `state` holds, every decode step exiting early by `rule`
/// (sampling or greedy decoding only), streaming text to `on_text`; returns what early exit did too.
pub fn generate_early_exit(
    (model, tokenizer, state): (&Model, &crate::tokenizer::Tokenizer, &mut State),
    prompt: &[u32],
    opts: &super::GenerateOptions,
    rule: &EarlyExit,
    on_text: &mut dyn FnMut(&str),
) -> Result<(super::Generation, ExitStats)> {
    opts.validate()?;
    if opts.strategy != super::Strategy::Sample {
        anyhow::bail!("early exit samples or decodes greedily: not with beam search or contrastive search");
    }
    super::check_prompt(state, prompt)?;
    opts.sampling.validate_for_vocab(model.config.vocab_size)?;
    let mut dec = EarlyExitDecoder::new(model, state, &opts.sampling, rule)?;
    let g = super::run_decoder(&mut dec, tokenizer, prompt, opts, on_text)?;
    Ok((g, dec.stats))
}
