//! Choosing the next token from the model's logits.
//!
//! The logits pass through a chain of [`LogitProcessor`]s, each one named technique in its own module,
//! in Hugging Face `generate`'s order (see `docs/DECODING.md` for where llama.cpp differs):
//!
//! 0. [`grammar`] (structured output: the tokens a grammar does not allow are removed first)
//! 1. [`logit_bias`] (HF `sequence_bias` with one-token sequences)
//! 2. [`repetition_penalty`] (CTRL, multiplicative)
//! 3. [`presence_penalty`], [`frequency_penalty`] (OpenAI style; not in HF — placed beside repetition)
//! 4. [`no_repeat_ngram`]
//! 5. sampling only ("warpers"): [`temperature`] → [`top_k`] → [`top_p`] → [`min_p`]
//!
//! Then the token is drawn from what is left with the seeded [`rng`], or — temperature 0 — taken
//! greedily. The other decoding strategies live in [`beam`] (beam search) and [`contrastive`]
//! (contrastive decoding and contrastive search); `crate::generate` drives them with a model.

pub mod beam;
pub mod contrastive;
pub mod frequency_penalty;
pub mod grammar;
pub mod logit_bias;
pub mod min_p;
pub mod no_repeat_ngram;
pub mod presence_penalty;
pub mod repetition_penalty;
pub mod rng;
pub mod temperature;
pub mod top_k;
pub mod top_p;

mod params;

pub use params::{InvalidParam, PenaltyWindow, SamplingParams};

use rng::Rng;

/// The candidate tokens of one step: (token id, logit), in no particular order unless `sorted`.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    pub items: Vec<(u32, f32)>,
    /// Whether `items` is sorted by decreasing logit.
    pub sorted: bool,
}

impl Candidates {
    /// Refills from a full logit vector (reusing the allocation).
    pub fn fill(&mut self, logits: &[f32]) {
        self.items.clear();
        self.items
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.sorted = false;
    }

    pub fn sort(&mut self) {
        if !self.sorted {
            self.items
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            self.sorted = true;
        }
    }

    /// Probabilities of the candidates (softmax of their logits), in `items` order.
    pub fn probs(&self) -> Vec<f32> {
        softmax(&self.items.iter().map(|c| c.1).collect::<Vec<_>>())
    }

    /// Applies `f` to the logit of token `id`, wherever it is.
    pub fn update(&mut self, id: u32, f: impl FnOnce(f32) -> f32) {
        // Before any truncation the items are the whole vocabulary in id order: index directly.
        let i = id as usize;
        if i < self.items.len() && self.items[i].0 == id {
            self.items[i].1 = f(self.items[i].1);
        } else if let Some(c) = self.items.iter_mut().find(|c| c.0 == id) {
            c.1 = f(c.1);
        }
    }

    /// Drops the candidates whose logit became `-inf` (banned tokens).
    pub fn drop_banned(&mut self) {
        self.items.retain(|c| c.1 != f32::NEG_INFINITY);
    }

    /// Writes the candidates back into a dense vector of `n` scores, `-inf` for removed tokens.
    pub fn to_dense(&self, out: &mut [f32]) {
        out.fill(f32::NEG_INFINITY);
        for &(id, l) in &self.items {
            out[id as usize] = l;
        }
    }
}

/// What processors may look at besides the logits: the sequence so far.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Prompt then generated tokens.
    pub tokens: &'a [u32],
    /// How many of `tokens` are the prompt.
    pub prompt_len: usize,
}

/// One step of logit processing.
///
/// A processor depends on the candidates and the [`Context`] only, carrying nothing from one step to the
/// next: that is what lets [`Sampler::rewind`] undo tokens by shortening the history alone.
pub trait LogitProcessor: Send {
    fn process(&mut self, cands: &mut Candidates, ctx: &Context);
}

/// `softmax(x)`, computed in f64 and tolerant of `-inf` entries.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![1.0 / x.len().max(1) as f32; x.len()];
    }
    let e: Vec<f64> = x.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|p| (p / sum) as f32).collect()
}

/// `log_softmax(x)` in place (f64 accumulation).
pub fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + x.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
    x.iter_mut().for_each(|l| *l = (*l as f64 - lse) as f32);
}

/// The processor chain of a [`SamplingParams`]: the logits processors, then — when sampling — the
/// warpers, in Hugging Face order.
pub struct Processors {
    /// Structured output's mask, first (kept apart from the chain so that its state can be asked for
    /// the tokens the grammar forces).
    grammar: Option<grammar::GrammarMask>,
    chain: Vec<Box<dyn LogitProcessor>>,
    cands: Candidates,
}

impl Processors {
    /// `warpers`: include temperature, top-k, top-p and min-p (random sampling only, as in HF).
    pub fn new(p: &SamplingParams, warpers: bool) -> Processors {
        let mut chain: Vec<Box<dyn LogitProcessor>> = Vec::new();
        let grammar = p.grammar.as_ref().map(grammar::GrammarMask::new);
        if !p.logit_bias.is_empty() {
            chain.push(Box::new(logit_bias::LogitBias::new(&p.logit_bias)));
        }
        if p.repetition_penalty != 1.0 {
            chain.push(Box::new(repetition_penalty::RepetitionPenalty::new(
                p.repetition_penalty,
                p.penalty_window,
            )));
        }
        if p.presence_penalty != 0.0 {
            chain.push(Box::new(presence_penalty::PresencePenalty::new(
                p.presence_penalty,
                p.penalty_window,
            )));
        }
        if p.frequency_penalty != 0.0 {
            chain.push(Box::new(frequency_penalty::FrequencyPenalty::new(
                p.frequency_penalty,
                p.penalty_window,
            )));
        }
        if p.no_repeat_ngram > 0 {
            chain.push(Box::new(no_repeat_ngram::NoRepeatNgram(p.no_repeat_ngram)));
        }
        if warpers {
            chain.push(Box::new(temperature::Temperature(p.temperature)));
            if p.top_k > 0 {
                chain.push(Box::new(top_k::TopK(p.top_k)));
            }
            if p.top_p < 1.0 {
                chain.push(Box::new(top_p::TopP(p.top_p)));
            }
            if p.min_p > 0.0 {
                chain.push(Box::new(min_p::MinP(p.min_p)));
            }
        }
        Processors {
            grammar,
            chain,
            cands: Candidates::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.grammar.is_none() && self.chain.is_empty()
    }

    /// Adds a processor at the end of the chain.
    pub fn push(&mut self, p: Box<dyn LogitProcessor>) {
        self.chain.push(p);
    }

    /// Runs the chain over `logits`; the surviving candidates.
    pub fn apply(&mut self, logits: &[f32], ctx: &Context) -> &mut Candidates {
        match &mut self.grammar {
            Some(g) => g.fill(&mut self.cands, logits, ctx),
            None => self.cands.fill(logits),
        }
        for p in &mut self.chain {
            p.process(&mut self.cands, ctx);
        }
        self.cands.drop_banned();
        &mut self.cands
    }

    /// Runs the chain over a dense score vector in place (removed tokens become `-inf`): how beam
    /// search and contrastive search apply processors to whole distributions.
    pub fn apply_dense(&mut self, scores: &mut [f32], ctx: &Context) {
        if self.is_empty() {
            return;
        }
        self.apply(scores, ctx);
        self.cands.to_dense(scores);
    }
}

/// Picks tokens: the processor chain plus the RNG, remembering the sequence for the penalties.
///
/// Everything the chain depends on besides the logits is the history (processors see the sequence only
/// through [`Context`]), so [`Sampler::rewind`] puts the sampler back exactly where it was at an
/// earlier length — what speculative decoding needs after rejecting drafted tokens.
pub struct Sampler {
    greedy: bool,
    procs: Processors,
    rng: Rng,
    history: Vec<u32>,
    prompt_len: usize,
    /// The probabilities of the surviving candidates of the last [`Sampler::process`], in the
    /// candidates' order (kept to reuse the allocation).
    probs: Vec<f32>,
}

/// What processing one row left to choose from.
enum Processed {
    /// A single possible token: greedy decoding, or everything banned (then the raw argmax).
    Token(u32),
    /// The candidates in `procs` with their probabilities in `probs`.
    Candidates,
}

impl Sampler {
    pub fn new(p: &SamplingParams) -> anyhow::Result<Sampler> {
        p.validate()?;
        Ok(Sampler {
            greedy: p.is_greedy(),
            procs: Processors::new(p, !p.is_greedy()),
            rng: Rng::new(p.seed),
            history: Vec::new(),
            prompt_len: 0,
            probs: Vec::new(),
        })
    }

    /// Sets the prompt the penalties and n-gram blocking see (forgetting earlier tokens).
    pub fn set_prompt(&mut self, prompt: &[u32]) {
        self.history.clear();
        self.history.extend_from_slice(prompt);
        self.prompt_len = prompt.len();
    }

    /// Records a token as part of the sequence (done by [`Sampler::sample`] for the tokens it picks).
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
    }

    /// The sequence so far: prompt, then accepted tokens.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forgets the tokens after the first `len` of the history (prompt included), as if they had never
    /// been accepted: the next distributions are those of the shorter sequence. Rewinding into the prompt
    /// shortens the prompt too. A `len` beyond the history changes nothing.
    ///
    /// The random generator is not rewound: the draws made for the forgotten tokens (and any uniform a
    /// speculative step used to reject them) are spent, and reusing them would make the next draw depend
    /// on the rejection it follows, which breaks the exactness of rejection sampling.
    pub fn rewind(&mut self, len: usize) {
        self.history.truncate(len);
        self.prompt_len = self.prompt_len.min(self.history.len());
    }

    /// Adds a processor at the end of the chain.
    pub fn push(&mut self, p: Box<dyn LogitProcessor>) {
        self.procs.push(p);
    }

    /// Whether the parameters carry a structured-output grammar.
    pub fn has_grammar(&self) -> bool {
        self.procs.grammar.is_some()
    }

    /// At most `max` tokens the grammar forces after the history (empty without a grammar, or where the
    /// grammar leaves a choice): drafts for fast-forward ([`crate::structured::GrammarState::forced`]).
    pub fn forced_tokens(&mut self, max: usize) -> Vec<u32> {
        let generated = &self.history[self.prompt_len.min(self.history.len())..];
        match &mut self.procs.grammar {
            Some(g) => g.forced(generated, max),
            None => Vec::new(),
        }
    }

    /// Structured output: computes ahead the grammar masks the next samples will need — after the
    /// history and after each of `drafts` in turn (the rows of a pass verifying them) — so that
    /// they can be computed while the forward pass runs, on another thread
    /// ([`crate::structured::GrammarState::prepare`]). Nothing without a grammar; the samples are the
    /// same with or without it.
    pub fn prepare_grammar(&mut self, drafts: &[u32]) {
        let generated = &self.history[self.prompt_len.min(self.history.len())..];
        if let Some(g) = &mut self.procs.grammar {
            g.prepare(generated, drafts);
        }
    }

    /// Whether tokens are taken greedily (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.greedy
    }

    /// The seeded generator the draws come from (speculative decoding's acceptance tests and residual
    /// draws use it too, so that one seed fixes the whole run).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A token drawn from `probs` (one weight per token of the vocabulary, e.g. a
    /// [`Sampler::distribution`] or a residual of one) with the sampler's generator; not recorded in
    /// the history.
    pub fn sample_from(&mut self, probs: &[f32]) -> u32 {
        self.rng.categorical(probs) as u32
    }

    /// The distribution [`Sampler::sample`] draws the next token from, given `logits` and the history:
    /// the whole processor chain applied, then normalized; one probability per token of the vocabulary,
    /// 0 for the tokens the chain removed. Greedy decoding (temperature 0) is the one-hot of the token it
    /// picks. Does not draw and does not record anything.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; logits.len()];
        match self.process(logits) {
            Processed::Token(t) => out[t as usize] = 1.0,
            Processed::Candidates => {
                for (c, &p) in self.procs.cands.items.iter().zip(&self.probs) {
                    out[c.0 as usize] = p;
                }
            }
        }
        out
    }

    /// Chooses the next token from `logits` and records it in the history: a draw from
    /// [`Sampler::distribution`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = match self.process(logits) {
            Processed::Token(t) => t,
            Processed::Candidates => self.draw(),
        };
        self.history.push(t);
        t
    }

    /// Runs the chain over one row; the one token left, or the candidates and their probabilities.
    fn process(&mut self, logits: &[f32]) -> Processed {
        if self.greedy && self.procs.is_empty() {
            return Processed::Token(kernels::ops::argmax(logits) as u32);
        }
        let ctx = Context {
            tokens: &self.history,
            prompt_len: self.prompt_len,
        };
        if let (true, true, Some(g)) = (self.greedy, self.procs.chain.is_empty(), &mut self.procs.grammar) {
            // Greedy under a grammar alone: the best allowed token straight from the mask's bits.
            return Processed::Token(
                g.argmax(logits, &ctx)
                    .unwrap_or_else(|| kernels::ops::argmax(logits) as u32),
            );
        }
        let cands = self.procs.apply(logits, &ctx);
        if cands.items.is_empty() {
            // Everything was banned: fall back to the raw argmax rather than invent a token.
            return Processed::Token(kernels::ops::argmax(logits) as u32);
        }
        if self.greedy {
            // The first of a sort by decreasing logit then increasing id, without sorting.
            let best = cands
                .items
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .expect("candidates are not empty");
            return Processed::Token(best.0);
        }
        self.probs = cands.probs();
        Processed::Candidates
    }

    /// Inverse-CDF draw over the candidates of the last [`Sampler::process`].
    fn draw(&mut self) -> u32 {
        let items = &self.procs.cands.items;
        let u = self.rng.next_f32();
        let mut acc = 0.0f32;
        for (c, p) in items.iter().zip(&self.probs) {
            acc += p;
            if u < acc {
                return c.0;
            }
        }
        // Rounding left the sum a hair under u: the last candidate takes that sliver.
        items.last().map(|c| c.0).unwrap_or(0)
    }
}

/// `log_softmax(logits)[t]`, computed as [`top_logprobs`] and the serving engine compute it.
pub fn logprob_of(logits: &[f32], t: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    logits[t as usize] - lse
}

/// The `k` most likely tokens under `log_softmax(logits)`, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect()
}
