//! Beam search with a model: the search itself is `sampling::beam`; this module gives it per-beam
//! model states without copying the prompt.
//!
//! The prompt's keys and values are computed once and stay in the one [`State`]'s cache (positions
//! `0..base`). Each beam owns only the KV rows of its own generated tokens ([`SuffixKv`]). To extend a
//! beam, its rows are written back after the prompt (`truncate(base)` + `store`), its new token runs
//! through the model at the right position, and the new row is appended to a copy of the beam's rows.
//! Memory: one context-sized cache plus `~2N × generated × kv_dim × layers` floats — N beams on a 1k
//! prompt hold the prompt's KV once, not N times. The cost is copying the beams' rows before each step,
//! small beside a forward pass while the generated part is short.

use super::stop::truncate_at_stop;
use super::{FinishReason, GenerateOptions, Generation, Sequence};
use crate::model::llama::{Logits, State};
use crate::model::Model;
use crate::sampling::beam::{beam_search, BeamParams};
use crate::sampling::contrastive::contrastive_decoding_scores;
use crate::sampling::{log_softmax, Context, Processors};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// Contrastive decoding's second model and its settings (see `sampling::contrastive`).
pub struct Amateur<'a> {
    pub model: &'a Model,
    pub state: &'a mut State,
    /// Plausibility threshold α.
    pub alpha: f32,
    pub temperature: f32,
}

/// Bytes of beam KV rows alive now and at most, shared by all [`SuffixKv`]s of one search.
#[derive(Clone, Default)]
pub struct KvMeter(Rc<Cell<(usize, usize)>>);

impl KvMeter {
    fn add(&self, bytes: usize) {
        let (cur, peak) = self.0.get();
        self.0.set((cur + bytes, peak.max(cur + bytes)));
    }
    fn sub(&self, bytes: usize) {
        let (cur, peak) = self.0.get();
        self.0.set((cur - bytes, peak));
    }
    /// The most bytes of per-beam KV rows held at once.
    pub fn peak(&self) -> usize {
        self.0.get().1
    }
}

/// The KV rows of one beam's generated tokens, per layer.
pub struct SuffixKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    meter: KvMeter,
}

impl SuffixKv {
    fn empty(layers: usize, meter: &KvMeter) -> SuffixKv {
        SuffixKv {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
            meter: meter.clone(),
        }
    }
    fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|r| r.len() * 4).sum()
    }
}

impl Drop for SuffixKv {
    fn drop(&mut self) {
        self.meter.sub(self.bytes());
    }
}

/// One model's shared prompt state plus the machinery to run a beam's next token.
pub struct Prefix<'a> {
    pub model: &'a Model,
    pub state: &'a mut State,
    /// Positions of the prompt (and of whatever the state held before).
    pub base: usize,
    pub meter: KvMeter,
}

impl Prefix<'_> {
    /// The logits after `token` following the beam `parent`, and the child's KV rows.
    pub fn step(&mut self, parent: &SuffixKv, token: u32) -> Result<(SuffixKv, Vec<f32>)> {
        let kv = self.model.config.kv_dim();
        let cache = &mut self.state.cache;
        cache.truncate(self.base);
        for l in 0..parent.k.len() {
            cache.store(l, self.base, &parent.k[l], &parent.v[l]);
        }
        cache.advance(parent.len);
        let logits = self.model.forward(self.state, &[token], Logits::Last)?.to_vec();
        let pos = self.base + parent.len;
        let mut child = SuffixKv::empty(parent.k.len(), &self.meter);
        let (mut kr, mut vr) = (vec![0.0; kv], vec![0.0; kv]);
        for l in 0..parent.k.len() {
            self.state.cache.read(l, pos, &mut kr, &mut vr);
            for (dst, src, row) in [
                (&mut child.k[l], &parent.k[l], &kr),
                (&mut child.v[l], &parent.v[l], &vr),
            ] {
                dst.reserve_exact(src.len() + kv);
                dst.extend_from_slice(src);
                dst.extend_from_slice(row);
            }
        }
        child.len = parent.len + 1;
        self.meter.add(child.bytes());
        Ok((child, logits))
    }
}

/// Beam search from `prompt`: plain (scores are processed log-probabilities, as HF) or — with an
/// amateur — over the contrastive-decoding objective. Stop strings cut the returned texts.
pub fn generate_beam(
    model: &Model,
    amateur: Option<Amateur>,
    tokenizer: &Tokenizer,
    state: &mut State,
    prompt: &[u32],
    opts: &GenerateOptions,
    beam: &BeamParams,
) -> Result<Generation> {
    let (g, _) = generate_beam_measured(model, amateur, tokenizer, state, prompt, opts, beam)?;
    Ok(g)
}

/// [`generate_beam`], also returning the peak bytes of per-beam KV rows.
pub fn generate_beam_measured(
    model: &Model,
    amateur: Option<Amateur>,
    tokenizer: &Tokenizer,
    state: &mut State,
    prompt: &[u32],
    opts: &GenerateOptions,
    beam: &BeamParams,
) -> Result<(Generation, usize)> {
    opts.validate()?;
    beam.validate()?;
    super::check_prompt(state, prompt)?;
    let layers = model.config.n_layers;
    let meter = KvMeter::default();
    let mut procs = Processors::new(&opts.sampling, false);
    let t0 = Instant::now();
    let first_e = model.forward(state, prompt, Logits::Last)?.to_vec();
    let mut main = Prefix {
        model,
        base: state.pos(),
        state,
        meter: meter.clone(),
    };
    let (mut second, cd) = match amateur {
        Some(a) => {
            super::check_prompt(a.state, prompt)?;
            let first_a = a.model.forward(a.state, prompt, Logits::Last)?.to_vec();
            let base = a.state.pos();
            let alayers = a.model.config.n_layers;
            (
                Some((
                    Prefix {
                        model: a.model,
                        base,
                        state: a.state,
                        meter: meter.clone(),
                    },
                    first_a,
                    alayers,
                )),
                Some((a.alpha, a.temperature)),
            )
        }
        None => (None, None),
    };
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();

    // Room: a sequence of `len` tokens has fed `len - 1` of them.
    let mut room = main.state.cache.capacity() - main.base + 1;
    if let Some((p, _, _)) = &second {
        room = room.min(p.state.cache.capacity() - p.base + 1);
    }
    let max_new = opts.max_tokens.min(room);
    let mut history = prompt.to_vec();
    let mut scores = |e: Vec<f32>, a: Option<Vec<f32>>, tokens: &[u32]| -> Vec<f32> {
        let mut s = match (a, cd) {
            (Some(a), Some((alpha, t))) => contrastive_decoding_scores(&e, &a, alpha, t),
            _ => {
                let mut e = e;
                log_softmax(&mut e);
                e
            }
        };
        history.truncate(prompt.len());
        history.extend_from_slice(tokens);
        procs.apply_dense(
            &mut s,
            &Context {
                tokens: &history,
                prompt_len: prompt.len(),
            },
        );
        s
    };
    let first_state = (
        SuffixKv::empty(layers, &meter),
        second.as_ref().map(|s| SuffixKv::empty(s.2, &meter)),
    );
    let first_scores = scores(first_e, second.as_ref().map(|s| s.1.clone()), &[]);
    let hyps = beam_search(
        beam,
        &opts.eos_ids,
        max_new,
        (first_state, first_scores),
        |parent, tokens| {
            let t = *tokens.last().unwrap();
            let (ce, le) = main.step(&parent.0, t)?;
            let (ca, la) = match (&mut second, &parent.1) {
                (Some((p, _, _)), Some(pa)) => {
                    let (c, l) = p.step(pa, t)?;
                    (Some(c), Some(l))
                }
                _ => (None, None),
            };
            Ok(((ce, ca), scores(le, la, tokens)))
        },
    )?;
    let decode = t1.elapsed().as_secs_f64();
    // Leave the states holding the prompt only.
    main.state.cache.truncate(main.base);
    if let Some((p, _, _)) = &mut second {
        p.state.cache.truncate(p.base);
    }

    let sequences: Vec<Sequence> = hyps
        .into_iter()
        .take(beam.num_return)
        .map(|h| {
            let body: Vec<u32> = h.tokens.iter().copied().filter(|t| !opts.eos_ids.contains(t)).collect();
            let (text, hit) = truncate_at_stop(&tokenizer.decode(&body), &opts.stop);
            let finish_reason = if hit {
                FinishReason::StopString
            } else if h.eos {
                FinishReason::Stop
            } else if h.tokens.len() < opts.max_tokens {
                FinishReason::ContextFull
            } else {
                FinishReason::Length
            };
            Sequence {
                tokens: h.tokens,
                text,
                score: h.score,
                finish_reason,
            }
        })
        .collect();
    let mut g = super::Generation::empty();
    if let Some(best) = sequences.first() {
        g.tokens = best.tokens.clone();
        g.text = best.text.clone();
        g.finish_reason = best.finish_reason;
    }
    let steps = g.tokens.len().saturating_sub(1);
    g.timings = super::timings(prompt.len(), steps, prefill, decode);
    g.sequences = sequences;
    Ok((g, meter.peak()))
}
