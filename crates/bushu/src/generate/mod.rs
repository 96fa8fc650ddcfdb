//! Autoregressive generation (lecture §1–2): prefill the prompt once, then one decode step per token,
//! each feeding only the new token through the model and its KV cache.
//!
//! One loop ([`run_decoder`]) serves every one-token-per-step strategy — a [`Decoder`] chooses the
//! tokens: sampling/greedy ([`SampleDecoder`]), contrastive search and contrastive decoding
//! ([`contrastive`]), early exit by entropy ([`early_exit`]). The loop owns the stop conditions ([`stop`]): EOS, stop strings, the token limit,
//! the context size. Beam search ([`beam`]) keeps several sequences and has its own driver.

pub mod beam;
pub mod contrastive;
pub mod early_exit;
pub mod stop;

use crate::model::llama::{Logits, State};
use crate::model::Model;
use crate::sampling::beam::BeamParams;
use crate::sampling::{top_logprobs, InvalidParam, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;
use stop::StopMatcher;

/// How tokens are chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Strategy {
    /// Greedy or random sampling, after the processors of `GenerateOptions::sampling`.
    #[default]
    Sample,
    /// Beam search (deterministic; the sampling warpers are not used, the logits processors are).
    Beam(BeamParams),
    /// Contrastive search (Su et al. 2022): `penalty_alpha` with the `top_k` most probable tokens.
    ContrastiveSearch { penalty_alpha: f32, top_k: usize },
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Maximum number of tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Report the top-`k` log-probabilities of each step (raw logits, before any processor).
    pub logprobs: Option<usize>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Strings that end generation (never part of the returned text).
    pub stop: Vec<String>,
    pub strategy: Strategy,
    /// Under a structured-output grammar, feed the tokens it forces in one pass
    /// ([`crate::spec_decode::generate_fast_forward`]); the output is the same either way.
    pub fast_forward: bool,
}

impl GenerateOptions {
    /// Sampling with `sampling`, no stop string.
    pub fn new(max_tokens: usize, sampling: SamplingParams, eos_ids: Vec<u32>) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            sampling,
            logprobs: None,
            eos_ids,
            stop: Vec::new(),
            strategy: Strategy::Sample,
            fast_forward: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.logprobs == Some(0) {
            return Err(InvalidParam::error("logprobs", "must be at least 1"));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(InvalidParam::error("stop", "strings must not be empty"));
        }
        match &self.strategy {
            Strategy::Sample => {}
            Strategy::Beam(b) => b.validate()?,
            Strategy::ContrastiveSearch { penalty_alpha, top_k } => {
                if !(0.0..=1.0).contains(penalty_alpha) {
                    return Err(InvalidParam::error(
                        "penalty_alpha",
                        format!("must be in [0, 1] (got {penalty_alpha})"),
                    ));
                }
                if *top_k == 0 {
                    return Err(InvalidParam::error(
                        "top_k",
                        "must be at least 1 for contrastive search (got 0)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a sequence stopped, for the command line (its JSON name: `stop`, `stop_string`, `length`,
/// `context_full`, `abort`) and for the serving engine (the OpenAI string: [`FinishReason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence or stop token was produced.
    Stop,
    /// A stop string appeared in the text.
    StopString,
    /// `max_tokens` reached (the serving engine: or the context, or the whole KV cache, is full).
    Length,
    /// The context is full.
    ContextFull,
    /// Cancelled (client gone, shutdown).
    Abort,
    /// The engine failed (e.g. the model computed non-finite logits); the sequence was ended.
    Error,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string: a stop string is a stop, a full context a length.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopString => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// One of several returned sequences (beam search).
#[derive(Clone, Debug, Serialize)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Beam search: `sum log p / len^length_penalty` (HF `sequences_scores`).
    pub score: f32,
    pub finish_reason: FinishReason,
}

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Per generated token, the top-k log-probabilities (when asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<Vec<TokenLogprob>>,
    /// Per generated token, its own log-probability under the raw logits (when `logprobs` were asked
    /// for; the cascade's reliability features use it). Not serialized.
    #[serde(skip)]
    pub chosen_logprobs: Vec<f32>,
    /// Beam search: the best sequences, best first (the first is also `tokens`/`text`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<Sequence>,
    pub timings: Timings,
}

impl Generation {
    fn empty() -> Generation {
        Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            logprobs: Vec::new(),
            chosen_logprobs: Vec::new(),
            sequences: Vec::new(),
            timings: Timings::default(),
        }
    }
}

/// Chooses tokens one at a time for [`run_decoder`].
pub trait Decoder {
    /// Runs the prompt through the model(s).
    fn prefill(&mut self, prompt: &[u32]) -> Result<()>;
    /// The model's raw logits for the next token (for `logprobs`).
    fn logits(&self) -> &[f32];
    /// Chooses the next token.
    fn choose(&mut self) -> Result<u32>;
    /// Makes `token` part of the sequence (runs it through the model unless `choose` already did).
    fn feed(&mut self, token: u32) -> Result<()>;
    /// Positions left in the context.
    fn room(&self) -> usize;
}

/// Greedy or random sampling with one model.
pub struct SampleDecoder<'a> {
    model: &'a Model,
    state: &'a mut State,
    sampler: Sampler,
    logits: Vec<f32>,
}

impl<'a> SampleDecoder<'a> {
    pub fn new(model: &'a Model, state: &'a mut State, params: &SamplingParams) -> Result<Self> {
        Ok(SampleDecoder {
            model,
            state,
            sampler: Sampler::new(params)?,
            logits: Vec::new(),
        })
    }
}

impl Decoder for SampleDecoder<'_> {
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
        let l = self.model.forward(self.state, &[token], Logits::Last)?;
        self.logits.copy_from_slice(l);
        Ok(())
    }
    fn room(&self) -> usize {
        self.state.cache.capacity() - self.state.pos()
    }
}

/// Generates from `prompt` (token ids) after whatever `state` already holds,
/// calling `on_text` with each piece of completed text as it is produced.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    state: &mut State,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    opts.validate()?;
    check_prompt(state, prompt)?;
    opts.sampling.validate_for_vocab(model.config.vocab_size)?;
    match &opts.strategy {
        Strategy::Sample if opts.fast_forward && opts.sampling.grammar.is_some() => {
            crate::spec_decode::generate_fast_forward((model, tokenizer, state), prompt, opts, on_text).map(|(g, _)| g)
        }
        Strategy::Sample => {
            let mut dec = SampleDecoder::new(model, state, &opts.sampling)?;
            run_decoder(&mut dec, tokenizer, prompt, opts, on_text)
        }
        Strategy::ContrastiveSearch { penalty_alpha, top_k } => {
            let mut dec = contrastive::ContrastiveSearch::new(model, state, &opts.sampling, *penalty_alpha, *top_k);
            run_decoder(&mut dec, tokenizer, prompt, opts, on_text)
        }
        Strategy::Beam(b) => {
            let g = beam::generate_beam(model, None, tokenizer, state, prompt, opts, b)?;
            on_text(&g.text);
            Ok(g)
        }
    }
}

/// Errors for an empty prompt or one that does not fit.
pub fn check_prompt(state: &State, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        bail!("the prompt is empty (no tokens to start from)");
    }
    let room = state.cache.capacity() - state.pos();
    if prompt.len() > room {
        return Err(ContextTooSmall {
            what: "prompt",
            tokens: prompt.len(),
            room,
        }
        .into());
    }
    Ok(())
}

/// The prompt (or a chat's conversation) does not fit in the context. A type rather than a message so
/// that the command line can add how to enlarge the context (its `--ctx`) without the library naming
/// flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextTooSmall {
    /// What did not fit: "prompt", "conversation".
    pub what: &'static str,
    pub tokens: usize,
    /// Positions left in the context.
    pub room: usize,
}

impl std::fmt::Display for ContextTooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ContextTooSmall { what, tokens, room } = self;
        write!(f, "the {what} has {tokens} tokens but the context holds {room}")
    }
}

impl std::error::Error for ContextTooSmall {}

/// The generation loop around a [`Decoder`]: stop conditions, streaming, logprobs, timings.
pub fn run_decoder(
    dec: &mut dyn Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut stream = StreamDecoder::continuation(tokenizer);
    let mut stop = StopMatcher::new(&opts.stop);
    let mut gen = Generation::empty();
    let mut emit = |gen: &mut Generation, s: &str| {
        if !s.is_empty() {
            on_text(s);
            gen.text.push_str(s);
        }
    };

    let t0 = Instant::now();
    dec.prefill(prompt)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    while gen.tokens.len() < opts.max_tokens {
        if let Some(k) = opts.logprobs {
            let top = top_logprobs(dec.logits(), k);
            gen.logprobs.push(
                top.into_iter()
                    .map(|(id, logprob)| TokenLogprob { id, logprob })
                    .collect(),
            );
        }
        let next = dec.choose()?;
        if opts.logprobs.is_some() {
            gen.chosen_logprobs
                .push(crate::sampling::logprob_of(dec.logits(), next));
        }
        gen.tokens.push(next);
        if opts.eos_ids.contains(&next) {
            gen.finish_reason = FinishReason::Stop;
            break;
        }
        let (text, hit) = stop.push(&stream.push(next));
        emit(&mut gen, &text);
        if hit {
            gen.finish_reason = FinishReason::StopString;
            break;
        }
        if gen.tokens.len() == opts.max_tokens {
            gen.finish_reason = FinishReason::Length;
            break;
        }
        if dec.room() == 0 {
            gen.finish_reason = FinishReason::ContextFull;
            break;
        }
        dec.feed(next)?;
    }
    if gen.finish_reason != FinishReason::StopString {
        let (text, hit) = stop.push(&stream.flush());
        emit(&mut gen, &text);
        if hit {
            gen.finish_reason = FinishReason::StopString;
        } else {
            let rest = stop.finish();
            emit(&mut gen, &rest);
        }
    }
    let decode = t1.elapsed().as_secs_f64();
    // The first token comes from the prefill's logits; decode steps produced the others.
    gen.timings = timings(prompt.len(), gen.tokens.len().saturating_sub(1), prefill, decode);
    Ok(gen)
}

fn timings(prompt: usize, decode_steps: usize, prefill: f64, decode: f64) -> Timings {
    Timings {
        prefill_ms: prefill * 1e3,
        decode_ms: decode * 1e3,
        prefill_tokens_per_s: prompt as f64 / prefill.max(1e-9),
        decode_tokens_per_s: if decode_steps > 0 {
            decode_steps as f64 / decode.max(1e-9)
        } else {
            0.0
        },
    }
}
