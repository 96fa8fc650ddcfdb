//! Autoregressive generation (lecture §1–2): prefill the prompt once, then one decode step per token,
//! each feeding only the new token through the model and its KV cache.

use crate::model::llama::{Logits, State};
use crate::model::Model;
use crate::sampling::{top_logprobs, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Maximum number of tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Report the top-`k` log-probabilities of each step (raw logits, before any processor).
    pub logprobs: Option<usize>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
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

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Per generated token, the top-k log-probabilities (when asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<Vec<TokenLogprob>>,
    pub timings: Timings,
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
    if prompt.is_empty() {
        bail!("the prompt is empty (no tokens to start from)");
    }
    let room = state.cache.capacity() - state.pos();
    if prompt.len() > room {
        bail!("the prompt has {} tokens but the context holds {} (use --ctx to enlarge it)", prompt.len(), room);
    }
    let mut sampler = Sampler::new(&opts.sampling)?;
    let mut stream = StreamDecoder::continuation(tokenizer);
    let mut gen = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish_reason: FinishReason::Length,
        logprobs: Vec::new(),
        timings: Timings::default(),
    };

    let t0 = Instant::now();
    let mut logits = model.forward(state, prompt, Logits::Last)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    while gen.tokens.len() < opts.max_tokens {
        if let Some(k) = opts.logprobs {
            let top = top_logprobs(logits, k);
            gen.logprobs.push(top.into_iter().map(|(id, logprob)| TokenLogprob { id, logprob }).collect());
        }
        let next = sampler.sample(logits);
        gen.tokens.push(next);
        if opts.eos_ids.contains(&next) {
            gen.finish_reason = FinishReason::Stop;
            break;
        }
        let piece = stream.push(next);
        if !piece.is_empty() {
            on_text(&piece);
            gen.text.push_str(&piece);
        }
        if gen.tokens.len() == opts.max_tokens || state.pos() == state.cache.capacity() {
            break;
        }
        logits = model.forward(state, &[next], Logits::Last)?;
    }
    let rest = stream.flush();
    if !rest.is_empty() {
        on_text(&rest);
        gen.text.push_str(&rest);
    }
    let decode = t1.elapsed().as_secs_f64();
    // The first token comes from the prefill's logits; decode steps produced the others.
    let decode_steps = gen.tokens.len().saturating_sub(1);
    gen.timings = Timings {
        prefill_ms: prefill * 1e3,
        decode_ms: decode * 1e3,
        prefill_tokens_per_s: prompt.len() as f64 / prefill.max(1e-9),
        decode_tokens_per_s: if decode_steps > 0 { decode_steps as f64 / decode.max(1e-9) } else { 0.0 },
    };
    Ok(gen)
}
