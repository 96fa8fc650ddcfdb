//! Choosing the next token from the model's logits.
//!
//! The logits pass through a chain of [`LogitProcessor`]s, each one named technique in its own module
//! (temperature, top-k, top-p), in Hugging Face `generate`'s order: temperature → top-k → top-p. Then
//! the token is drawn from what is left with a seeded RNG, or — temperature 0 — taken greedily.

pub mod rng;
pub mod temperature;
pub mod top_k;
pub mod top_p;

use anyhow::{bail, Result};
use rng::Rng;

/// The candidate tokens of one step: (token id, logit), in no particular order unless `sorted`.
pub struct Candidates {
    pub items: Vec<(u32, f32)>,
    /// Whether `items` is sorted by decreasing logit.
    pub sorted: bool,
}

impl Candidates {
    /// Refills from a full logit vector (reusing the allocation).
    pub fn fill(&mut self, logits: &[f32]) {
        self.items.clear();
        self.items.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.sorted = false;
    }

    pub fn sort(&mut self) {
        if !self.sorted {
            self.items.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            self.sorted = true;
        }
    }

    /// Probabilities of the candidates (softmax of their logits), in `items` order.
    pub fn probs(&self) -> Vec<f32> {
        let max = self.items.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = self.items.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        e.into_iter().map(|p| p / sum).collect()
    }
}

/// One step of logit processing.
pub trait LogitProcessor: Send {
    fn process(&mut self, cands: &mut Candidates);
}

/// Sampling parameters, as the CLI and the server take them.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k.
    pub top_k: usize,
    /// 1 means no top-p.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be a finite number >= 0 (got {})", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top-p must be in (0, 1] (got {})", self.top_p);
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Picks tokens: the processor chain plus the RNG.
pub struct Sampler {
    greedy: bool,
    processors: Vec<Box<dyn LogitProcessor>>,
    rng: Rng,
    cands: Candidates,
}

impl Sampler {
    pub fn new(p: &SamplingParams) -> Result<Sampler> {
        p.validate()?;
        let mut processors: Vec<Box<dyn LogitProcessor>> = Vec::new();
        if !p.is_greedy() {
            processors.push(Box::new(temperature::Temperature(p.temperature)));
            if p.top_k > 0 {
                processors.push(Box::new(top_k::TopK(p.top_k)));
            }
            if p.top_p < 1.0 {
                processors.push(Box::new(top_p::TopP(p.top_p)));
            }
        }
        Ok(Sampler {
            greedy: p.is_greedy(),
            processors,
            rng: Rng::new(p.seed),
            cands: Candidates { items: Vec::new(), sorted: false },
        })
    }

    /// Adds a processor at the end of the chain.
    pub fn push(&mut self, p: Box<dyn LogitProcessor>) {
        self.processors.push(p);
    }

    /// Chooses the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.greedy && self.processors.is_empty() {
            return kernels::ops::argmax(logits) as u32;
        }
        self.cands.fill(logits);
        for p in &mut self.processors {
            p.process(&mut self.cands);
        }
        if self.greedy {
            self.cands.sort();
            return self.cands.items[0].0;
        }
        let probs = self.cands.probs();
        let u = self.rng.next_f32();
        let mut acc = 0.0f32;
        for (c, p) in self.cands.items.iter().zip(&probs) {
            acc += p;
            if u < acc {
                return c.0;
            }
        }
        self.cands.items.last().map(|c| c.0).unwrap_or(0)
    }
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
