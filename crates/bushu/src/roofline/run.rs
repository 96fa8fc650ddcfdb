//! Measured points (`--run`): bushu's own engine timed on a prefill and on decode steps, placed on the
//! roofline with the analytic FLOPs and bytes of the same passes.
//!
//! The achieved rate is `analytic FLOPs / wall time`; it is compared with the roof at the pass's analytic
//! intensity, `min(peak, bandwidth x intensity)`. The engine runs one sequence (`B = 1`) with causal
//! attention, f32 activations and an f32 K/V cache, so the analysis behind a measured point uses those.

use super::analysis::{pass, Dtypes, Options, Shape, Totals};
use super::hardware::Hardware;
use crate::model::llama::Logits;
use crate::model::{ModelFile, ModelOptions};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// One measured pass (or set of decode steps).
#[derive(Clone, Debug, Serialize)]
pub struct RunPoint {
    /// `prefill` or `decode`.
    pub phase: String,
    /// Tokens processed (prompt length, or decode steps).
    pub tokens: usize,
    pub seconds: f64,
    /// Analytic FLOPs and bytes of what ran.
    pub flops: f64,
    pub bytes: f64,
    pub intensity: f64,
    /// Achieved FLOP/s and byte/s.
    pub flops_per_s: f64,
    pub bytes_per_s: f64,
    /// The roof at this intensity, FLOP/s.
    pub roof: f64,
    /// `flops_per_s / roof`.
    pub fraction_of_roof: f64,
    /// `bytes_per_s / bandwidth`.
    pub fraction_of_bandwidth: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

impl RunPoint {
    fn new(phase: &str, tokens: usize, seconds: f64, t: Totals, hw: &Hardware) -> RunPoint {
        let flops_per_s = t.flops / seconds;
        let roof = hw.attainable(t.intensity());
        RunPoint {
            phase: phase.to_owned(),
            tokens,
            seconds,
            flops: t.flops,
            bytes: t.bytes,
            intensity: t.intensity(),
            flops_per_s,
            bytes_per_s: t.bytes / seconds,
            roof,
            fraction_of_roof: flops_per_s / roof,
            fraction_of_bandwidth: t.bytes / seconds / hw.bandwidth,
            tokens_per_s: tokens as f64 / seconds,
        }
    }
}

/// Deterministic prompt tokens inside the vocabulary.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| (3 + (i * 7919) % (vocab.max(4) - 3)) as u32).collect()
}

/// Runs a prefill of `prompt` tokens and `steps` decode steps with bushu's engine and returns the two
/// measured points. A first untimed prefill pages the weights in.
pub fn run_engine(
    file: &ModelFile,
    prompt: usize,
    steps: usize,
    dtypes: &Dtypes,
    opts: Options,
    hw: &Hardware,
) -> Result<Vec<RunPoint>> {
    if prompt == 0 {
        return Err(crate::sampling::InvalidParam::error(
            "prompt",
            "must be at least 1 token for a measured run",
        ));
    }
    // Packed on first use, in this thread: no packer sharing the cores with the measurement.
    let model = ModelOptions {
        background_packing: false,
        ..ModelOptions::default()
    }
    .build(file)?;
    let c = &model.config;
    let ctx = prompt + steps;
    if ctx > c.max_ctx && c.max_ctx > 0 {
        bail!(
            "a prompt of {prompt} tokens + {steps} steps = {ctx} exceeds the model's context of {}",
            c.max_ctx
        );
    }
    let shape = Shape::from_config(c, 1, prompt);
    let opts = Options { causal: true, ..opts };
    let toks = tokens(prompt, c.vocab_size);

    // Warm-up: touch every weight page once.
    let mut st = model.new_state(ctx);
    model.forward(&mut st, &toks, Logits::Last)?;

    let mut st = model.new_state(ctx);
    let t0 = Instant::now();
    let logits = model.forward(&mut st, &toks, Logits::Last)?;
    std::hint::black_box(logits);
    let prefill_s = t0.elapsed().as_secs_f64();
    let prefill = pass("prefill", &shape, dtypes, opts, prompt, prompt).total();
    let mut points = vec![RunPoint::new("prefill", prompt, prefill_s, prefill, hw)];

    if steps > 0 {
        let mut total = Totals::default();
        let mut next = toks[prompt - 1];
        let t0 = Instant::now();
        for i in 0..steps {
            let logits = model.forward(&mut st, &[next], Logits::Last)?;
            // Greedy choice keeps the run realistic without a sampler.
            next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(0);
            let t = pass("decode", &shape, dtypes, opts, 1, prompt + i + 1).total();
            total.add(t.flops, t.bytes);
        }
        let decode_s = t0.elapsed().as_secs_f64();
        points.push(RunPoint::new("decode", steps, decode_s, total, hw));
    }
    Ok(points)
}
