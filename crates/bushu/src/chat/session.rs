//! A multi-turn conversation with one model that keeps its KV cache between turns.
//!
//! Each turn renders the whole conversation with the chat template, tokenizes it, and compares it with the
//! tokens the cache already holds: only the tokens after the longest common prefix are run through the model
//! (normally just the new user turn and the assistant header). Whatever differs (a re-tokenized answer, an
//! edited history) is truncated from the cache and recomputed, so the result always equals a full re-prefill.
//!
//! With a proposer ([`ChatSession::set_speculation`]) every answer is decoded speculatively
//! ([`crate::spec_decode::SpecDecoder`]): the same answer (greedy: token for token), the proposer drafting
//! from the whole conversation, and the cache left as plain decoding leaves it. With early exit
//! ([`ChatSession::set_early_exit`]) every answer's decode steps may leave at an exit layer (lossy).

use super::template::{ChatTemplate, Message};
use crate::generate::early_exit::{EarlyExitDecoder, ExitStats};
use crate::generate::{run_decoder, ContextTooSmall, Decoder, FinishReason, GenerateOptions, SampleDecoder};
use crate::model::early_exit::EarlyExit;
use crate::model::llama::State;
use crate::model::{Model, ModelFile};
use crate::spec_decode::{DraftLengthParams, Proposer, SpecDecoder, SpecStats};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// ChatML, for models whose file carries no template.
pub const CHATML: &str =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] \
    + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// End-of-turn markers of common templates: a template that prints one (and whose vocabulary has it as a
/// single token) stops generation on it, whatever the file's EOS says.
const END_OF_TURN: [&str; 7] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<｜end▁of▁sentence｜>",
];

/// The chat template of a model file (ChatML when it has none) and the token ids that end a turn.
pub fn template_for(file: &ModelFile) -> Result<(ChatTemplate, Vec<u32>, bool)> {
    let tok = &file.tokenizer;
    let (src, own) = match file.chat_template.as_deref().or(tok.chat_template()) {
        Some(s) => (s.to_string(), true),
        None => (CHATML.to_string(), false),
    };
    let template = ChatTemplate::new(&src, tok.bos_token().unwrap_or(""), tok.eos_token().unwrap_or(""))?;
    let mut stops = file.eos_ids.clone();
    for marker in END_OF_TURN {
        if src.contains(marker) {
            if let Some(id) = tok.token_to_id(marker) {
                if !stops.contains(&id) {
                    stops.push(id);
                }
            }
        }
    }
    Ok((template, stops, own))
}

/// What one turn did.
#[derive(Clone, Debug)]
pub struct Turn {
    pub text: String,
    pub finish_reason: FinishReason,
    /// Stopped by the interrupt flag.
    pub interrupted: bool,
    /// Prompt tokens taken from the cache / run through the model.
    pub reused_tokens: usize,
    pub new_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// What speculative decoding did in this turn (`None` without a proposer).
    pub spec: Option<SpecStats>,
    /// What early exit did in this turn (`None` without it).
    pub early_exit: Option<ExitStats>,
}

pub struct ChatSession<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    state: State,
    /// The tokens whose keys and values the cache holds, in order.
    cached: Vec<u32>,
    system: Option<String>,
    messages: Vec<Message>,
    /// Speculative decoding: the proposer (kept across turns, with whatever cache it has) and the draft
    /// length.
    spec: Option<(Box<dyn Proposer + 'm>, DraftLengthParams)>,
    /// Early exit by entropy for every answer's decode steps (lossy).
    early_exit: Option<EarlyExit>,
}

/// Stops a decoder ([`SampleDecoder`], or [`SpecDecoder`] for speculative decoding and structured
/// output's fast-forward) at the next token once `flag` is set, by choosing an end-of-turn token.
struct Interruptible<'a, 'd> {
    inner: &'a mut (dyn Decoder + 'd),
    flag: &'a AtomicBool,
    stop_id: u32,
}

impl Decoder for Interruptible<'_, '_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.inner.prefill(prompt)
    }
    fn logits(&self) -> &[f32] {
        self.inner.logits()
    }
    fn choose(&mut self) -> Result<u32> {
        if self.flag.load(Ordering::Relaxed) {
            return Ok(self.stop_id);
        }
        self.inner.choose()
    }
    fn feed(&mut self, token: u32) -> Result<()> {
        self.inner.feed(token)
    }
    fn room(&self) -> usize {
        self.inner.room()
    }
}

impl<'m> ChatSession<'m> {
    pub fn new(
        model: &'m Model,
        tokenizer: &'m Tokenizer,
        template: ChatTemplate,
        stop_ids: Vec<u32>,
        ctx: usize,
        system: Option<String>,
    ) -> Result<ChatSession<'m>> {
        if stop_ids.is_empty() {
            bail!("the model has no end-of-turn token: a chat answer could not stop");
        }
        let state = model.new_state(ctx);
        let mut s = ChatSession {
            model,
            tokenizer,
            template,
            stop_ids,
            state,
            cached: Vec::new(),
            system,
            messages: vec![],
            spec: None,
            early_exit: None,
        };
        s.reset();
        Ok(s)
    }

    /// Decodes every answer speculatively, `proposer` drafting up to `length` tokens a step (the
    /// answers do not change: greedy ones token for token, sampled ones in distribution).
    pub fn set_speculation(&mut self, proposer: Box<dyn Proposer + 'm>, length: DraftLengthParams) -> Result<()> {
        length.validate()?;
        self.spec = Some((proposer, length));
        Ok(())
    }

    /// Decodes every answer with early exit by entropy (lossy: answers may differ from the full
    /// model's; not with speculation).
    pub fn set_early_exit(&mut self, rule: EarlyExit) -> Result<()> {
        if self.spec.is_some() {
            bail!("early exit and speculative decoding cannot be combined");
        }
        self.early_exit = Some(rule);
        Ok(())
    }

    /// The system prompt (`None`: the template's own, if any).
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Sets the system prompt and starts a new conversation with it.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system;
        self.reset();
    }

    /// Forgets the conversation (keeps the system prompt); the cache is reused for the common prefix.
    pub fn reset(&mut self) {
        self.messages.clear();
        if let Some(s) = &self.system {
            self.messages.push(Message::new("system", s));
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Tokens in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// The conversation so far plus `user`, rendered for generation, as token ids.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.tokenizer.encode_with(&text, false, true)
    }

    /// Answers `user`, streaming text to `on_text`; stops early when `interrupt` is set.
    pub fn reply(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        interrupt: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Turn> {
        let mut messages = self.messages.clone();
        messages.push(Message::new("user", user));
        let ids = self.prompt_ids(&messages)?;
        // Reuse the longest common prefix, but always run at least one token to get logits.
        let mut keep = self.cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        keep = keep.min(ids.len().saturating_sub(1));
        let room = self.state.cache.capacity();
        if ids.len() + 1 > room {
            return Err(ContextTooSmall {
                what: "conversation",
                tokens: ids.len(),
                room,
            }
            .into());
        }
        self.state.cache.truncate(keep);
        self.cached.truncate(keep);
        let prompt = &ids[keep..];
        let mut opts = opts.clone();
        opts.eos_ids = self.stop_ids.clone();
        let stop_id = self.stop_ids[0];
        let fast_forward = opts.fast_forward && opts.sampling.grammar.is_some();
        let speculating = self.spec.is_some();
        let mut exit_stats = None;
        let (g, spec) = match &mut self.spec {
            None if self.early_exit.is_some() => {
                let rule = self.early_exit.as_ref().expect("early exit");
                let mut inner = EarlyExitDecoder::new(self.model, &mut self.state, &opts.sampling, rule)?;
                let mut dec = Interruptible {
                    inner: &mut inner,
                    flag: interrupt,
                    stop_id,
                };
                let g = run_decoder(&mut dec, self.tokenizer, prompt, &opts, on_text)?;
                exit_stats = Some(inner.stats);
                (g, None)
            }
            None if !fast_forward => {
                let mut inner = SampleDecoder::new(self.model, &mut self.state, &opts.sampling)?;
                let mut dec = Interruptible {
                    inner: &mut inner,
                    flag: interrupt,
                    stop_id,
                };
                (run_decoder(&mut dec, self.tokenizer, prompt, &opts, on_text)?, None)
            }
            spec => {
                // Speculative decoding, or plain decoding with fast-forward (no proposer).
                let (proposer, length) = match spec {
                    Some((p, l)) => (Some(p.as_mut() as &mut dyn Proposer), *l),
                    None => (None, DraftLengthParams::default()),
                };
                let mut inner =
                    SpecDecoder::new(self.model, &mut self.state, proposer, &opts, length)?.after(&self.cached);
                let mut dec = Interruptible {
                    inner: &mut inner,
                    flag: interrupt,
                    stop_id,
                };
                let g = run_decoder(&mut dec, self.tokenizer, prompt, &opts, on_text)?;
                // Verified tokens after a stop (or replaced by an interrupt) leave the cache.
                inner.settle(g.tokens.len());
                let stats = inner.stats;
                (g, speculating.then_some(stats))
            }
        };
        let interrupted = interrupt.load(Ordering::Relaxed);
        let generated_tokens = g.tokens.len() - usize::from(g.finish_reason == FinishReason::Stop);
        // The end-of-turn token an interrupt chose is not the model's: the answer was cut (Abort).
        let finish_reason = match g.finish_reason {
            FinishReason::Stop if interrupted => FinishReason::Abort,
            f => f,
        };
        self.cached.extend_from_slice(prompt);
        self.cached.extend_from_slice(&g.tokens);
        self.cached.truncate(self.state.pos());
        // Fast-forward may have run forced tokens past the end of the answer: the cache keeps the answer.
        self.state.rewind(self.cached.len());
        debug_assert_eq!(self.cached.len(), self.state.pos());
        messages.push(Message::new("assistant", &g.text));
        self.messages = messages;
        Ok(Turn {
            text: g.text,
            finish_reason,
            interrupted,
            reused_tokens: keep,
            new_tokens: prompt.len(),
            generated_tokens,
            prefill_tokens_per_s: g.timings.prefill_tokens_per_s,
            decode_tokens_per_s: g.timings.decode_tokens_per_s,
            spec,
            early_exit: exit_stats,
        })
    }
}
