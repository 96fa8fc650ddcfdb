//! Contrastive search and contrastive decoding with models (the scoring is `sampling::contrastive`).
//!
//! Contrastive search needs the last hidden state (after the final norm) of every position, which the
//! forward pass leaves in [`State::hidden`].

use super::{Decoder, GenerateOptions, Generation};
use crate::model::llama::{Logits, State};
use crate::model::Model;
use crate::sampling::contrastive::{contrastive_decoding_scores, contrastive_search_pick};
use crate::sampling::{softmax, Context, InvalidParam, Processors, Sampler, SamplingParams};
use crate::tokenizer::{Tokenizer, VocabDifference};
use anyhow::{bail, Result};

/// Contrastive search (Su et al. 2022) as HF `generate(penalty_alpha=α, top_k=k)`: the logits
/// processors (penalties, bias, n-gram) apply first; the `k` most probable tokens are each run one step
/// ahead to get their hidden states; the pick maximizes `(1 − α)·p − α·max cos(h, context)`.
pub struct ContrastiveSearch<'a> {
    model: &'a Model,
    state: &'a mut State,
    procs: Processors,
    alpha: f32,
    k: usize,
    context: Vec<Vec<f32>>,
    logits: Vec<f32>,
    history: Vec<u32>,
    prompt_len: usize,
}

impl<'a> ContrastiveSearch<'a> {
    pub fn new(model: &'a Model, state: &'a mut State, p: &SamplingParams, alpha: f32, k: usize) -> Self {
        ContrastiveSearch {
            model,
            state,
            procs: Processors::new(p, false),
            alpha,
            k,
            context: Vec::new(),
            logits: Vec::new(),
            history: Vec::new(),
            prompt_len: 0,
        }
    }
}

impl Decoder for ContrastiveSearch<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        let dim = self.model.config.dim;
        let all = self.model.forward(self.state, prompt, Logits::All)?;
        self.logits = all[all.len() - vocab..].to_vec();
        self.context = self.state.hidden().chunks_exact(dim).map(<[f32]>::to_vec).collect();
        self.history = prompt.to_vec();
        self.prompt_len = prompt.len();
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        &self.logits
    }
    fn choose(&mut self) -> Result<u32> {
        let mut processed = self.logits.clone();
        self.procs.apply_dense(
            &mut processed,
            &Context {
                tokens: &self.history,
                prompt_len: self.prompt_len,
            },
        );
        let probs = softmax(&processed);
        let mut ids: Vec<u32> = (0..probs.len() as u32)
            .filter(|&i| processed[i as usize] > f32::NEG_INFINITY)
            .collect();
        ids.sort_by(|a, b| probs[*b as usize].total_cmp(&probs[*a as usize]).then(a.cmp(b)));
        ids.truncate(self.k.max(1));
        if ids.is_empty() {
            bail!("contrastive search: every token was banned by the logit processors");
        }
        if self.room() == 0 {
            // No position left to look ahead: the most probable token.
            return Ok(ids[0]);
        }
        let cur = self.state.pos();
        let mut cands = Vec::with_capacity(ids.len());
        let mut cand_logits = Vec::with_capacity(ids.len());
        for &t in &ids {
            self.state.cache.truncate(cur);
            let l = self.model.forward(self.state, &[t], Logits::Last)?.to_vec();
            cands.push((probs[t as usize], self.state.hidden().to_vec()));
            cand_logits.push(l);
        }
        let sel = contrastive_search_pick(&cands, &self.context, self.alpha);
        if sel != ids.len() - 1 {
            // The cache holds the last candidate: run the chosen one instead.
            self.state.cache.truncate(cur);
            self.model.forward(self.state, &[ids[sel]], Logits::Last)?;
        }
        self.context.push(std::mem::take(&mut cands[sel].1));
        self.logits = std::mem::take(&mut cand_logits[sel]);
        self.history.push(ids[sel]);
        Ok(ids[sel])
    }
    fn feed(&mut self, _token: u32) -> Result<()> {
        Ok(()) // `choose` already ran the chosen token.
    }
    fn room(&self) -> usize {
        self.state.cache.capacity() - self.state.pos()
    }
}

/// Errors unless the two tokenizers are the same (same size, same token texts and bytes).
pub fn check_same_tokenizer(expert: &Tokenizer, amateur: &Tokenizer) -> Result<()> {
    match expert.vocab_difference(amateur) {
        None => {}
        Some(VocabDifference::Size { ours, theirs }) => bail!(
            "the amateur's tokenizer differs from the model's ({theirs} vs {ours} tokens): contrastive decoding needs one shared vocabulary"
        ),
        Some(VocabDifference::Token { id, ours, theirs }) => bail!(
            "the amateur's tokenizer differs from the model's (token {id}: {theirs:?} vs {ours:?}): contrastive decoding needs one shared vocabulary"
        ),
    }
    Ok(())
}

/// Contrastive decoding (Li et al. 2022), one token per step: the contrastive scores take the place of
/// the logits in the processor chain, so greedy picks their argmax and sampling samples from them.
pub struct ContrastiveDecoding<'a> {
    expert: &'a Model,
    amateur: &'a Model,
    se: &'a mut State,
    sa: &'a mut State,
    alpha: f32,
    temperature: f32,
    sampler: Sampler,
    le: Vec<f32>,
    la: Vec<f32>,
}

impl<'a> ContrastiveDecoding<'a> {
    pub fn new(
        expert: (&'a Model, &'a mut State),
        amateur: super::beam::Amateur<'a>,
        p: &SamplingParams,
    ) -> Result<Self> {
        Ok(ContrastiveDecoding {
            expert: expert.0,
            se: expert.1,
            amateur: amateur.model,
            sa: amateur.state,
            alpha: amateur.alpha,
            temperature: amateur.temperature,
            sampler: Sampler::new(p)?,
            le: Vec::new(),
            la: Vec::new(),
        })
    }
}

impl Decoder for ContrastiveDecoding<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.sampler.set_prompt(prompt);
        self.le = self.expert.forward(self.se, prompt, Logits::Last)?.to_vec();
        self.la = self.amateur.forward(self.sa, prompt, Logits::Last)?.to_vec();
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        &self.le
    }
    fn choose(&mut self) -> Result<u32> {
        let s = contrastive_decoding_scores(&self.le, &self.la, self.alpha, self.temperature);
        Ok(self.sampler.sample(&s))
    }
    fn feed(&mut self, token: u32) -> Result<()> {
        self.le
            .copy_from_slice(self.expert.forward(self.se, &[token], Logits::Last)?);
        self.la
            .copy_from_slice(self.amateur.forward(self.sa, &[token], Logits::Last)?);
        Ok(())
    }
    fn room(&self) -> usize {
        (self.se.cache.capacity() - self.se.pos()).min(self.sa.cache.capacity() - self.sa.pos())
    }
}

/// Contrastive decoding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CdParams {
    /// Plausibility threshold α in (0, 1]: keep tokens with `p_expert ≥ α·max p_expert`.
    pub alpha: f32,
    /// Temperature of the amateur's distribution.
    pub amateur_temperature: f32,
}

impl Default for CdParams {
    fn default() -> Self {
        CdParams {
            alpha: 0.1,
            amateur_temperature: 1.0,
        }
    }
}

impl CdParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(InvalidParam::error(
                "alpha",
                format!("must be in (0, 1] (got {})", self.alpha),
            ));
        }
        if !(self.amateur_temperature > 0.0 && self.amateur_temperature.is_finite()) {
            let got = self.amateur_temperature;
            return Err(InvalidParam::error(
                "amateur_temperature",
                format!("must be a finite number > 0 (got {got})"),
            ));
        }
        Ok(())
    }
}

/// Generates with contrastive decoding: greedy/sampled token by token, or beam search over the
/// contrastive objective when `opts.strategy` is `Beam`. Refuses models with different tokenizers.
#[allow(clippy::too_many_arguments)]
pub fn generate_contrastive(
    expert: (&Model, &Tokenizer, &mut State),
    amateur: (&Model, &Tokenizer, &mut State),
    prompt: &[u32],
    opts: &GenerateOptions,
    cd: CdParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    opts.validate()?;
    cd.validate()?;
    check_same_tokenizer(expert.1, amateur.1)?;
    if expert.0.config.vocab_size != amateur.0.config.vocab_size {
        bail!(
            "the amateur's vocabulary has {} logits, the model's {}: contrastive decoding needs one shared vocabulary",
            amateur.0.config.vocab_size,
            expert.0.config.vocab_size
        );
    }
    super::check_prompt(expert.2, prompt)?;
    super::check_prompt(amateur.2, prompt)?;
    opts.sampling.validate_for_vocab(expert.0.config.vocab_size)?;
    let am = super::beam::Amateur {
        model: amateur.0,
        state: amateur.2,
        alpha: cd.alpha,
        temperature: cd.amateur_temperature,
    };
    match &opts.strategy {
        super::Strategy::Beam(b) => {
            let g = super::beam::generate_beam(expert.0, Some(am), expert.1, expert.2, prompt, opts, b)?;
            on_text(&g.text);
            Ok(g)
        }
        super::Strategy::Sample => {
            let mut dec = ContrastiveDecoding::new((expert.0, expert.2), am, &opts.sampling)?;
            super::run_decoder(&mut dec, expert.1, prompt, opts, on_text)
        }
        super::Strategy::ContrastiveSearch { .. } => {
            bail!("contrastive decoding (an amateur model) and contrastive search (penalty_alpha) cannot be combined")
        }
    }
}
