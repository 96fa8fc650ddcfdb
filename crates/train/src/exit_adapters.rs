//! `train-exit-adapters`: the tuned lens (Belrose et al. 2023) for early exit — per exit point an affine
//! translator `h' = h + W h + b` of the residual stream after that many layers, read by the model's own
//! final norm and classifier ([`bushu::model::exit_adapters`]), trained with the model frozen so that the
//! exit's distribution matches the model's final one.
//!
//! **Objective.** `KL(p_last ‖ softmax(E · norm(h + W h + b)))` per position, averaged, one term per exit
//! point (the translators are independent; one AdamW step moves them all). `p_last` comes from bushu's
//! forward pass over each training window, which keeps the residual stream after each exit layer in the
//! same pass (`Pass::keep_hidden`): the states the exits will see at inference, at the model's precision.
//! `W = 0, b = 0` at the start is the shared head exactly, so training can only start where the untrained
//! exit is. As in `train-medusa` and `train-routers`, the frozen classifier's gradient is never formed:
//! [`lm_head_kl`] gives the loss and its gradient with respect to the normalized state by hand, and
//! candle's autograd takes it through the norm and the translator.
//!
//! **Memory.** The positions' final distributions are kept for the epochs: `positions × vocabulary × 4`
//! bytes (8,192 positions of SmolLM2's 49,152-token vocabulary: 1.6 GB), beside `positions × dim × 4` per
//! exit point.
//!
//! Everything random (the batch order) comes from `seed`, and candle's CPU ops are deterministic: a seed
//! gives the same adapters bit for bit.

use crate::distill::lr_at;
use crate::medusa::{classifier, open_model, HeadVars};
use crate::optim::{AdamW, ParamsAdamW};
use crate::routers::{data_windows, lm_head_kl, shuffle};
use crate::student::rms_norm;
use anyhow::{bail, Context, Result};
use bushu::model::early_exit::default_exit_layers;
use bushu::model::exit_adapters::ExitAdapters;
use bushu::model::mixture_of_depths::RoutersBase;
use bushu::model::{Logits, Model, Pass};
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use std::time::Instant;

/// Everything `bushu train-exit-adapters` is told.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    /// The exit points (layers run before the exit); `None`: early exit's default ones.
    pub layers: Option<Vec<usize>>,
    /// Tokens of the data used (their first ones, cut into windows of `ctx`).
    pub tokens: usize,
    pub ctx: usize,
    /// Positions per AdamW step.
    pub batch: usize,
    pub epochs: usize,
    pub lr: f64,
    pub seed: u64,
    pub out: PathBuf,
}

impl AdapterOptions {
    pub fn new(model: PathBuf, data: Vec<PathBuf>, out: PathBuf) -> AdapterOptions {
        AdapterOptions {
            model,
            data,
            layers: None,
            tokens: 8192,
            ctx: 128,
            batch: 64,
            epochs: 2,
            lr: 1e-3,
            seed: 0,
            out,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct AdapterReport {
    pub layers: Vec<usize>,
    pub positions: usize,
    pub steps: usize,
    /// Per exit point, the mean KL over the first and the last tenth of the steps.
    pub first_kl: Vec<f64>,
    pub final_kl: Vec<f64>,
    pub teacher_seconds: f64,
    pub train_seconds: f64,
}

/// Checks the options that need no file.
pub fn check(o: &AdapterOptions) -> Result<()> {
    if o.data.is_empty() {
        bail!("no data files given (--data)");
    }
    if o.batch == 0 || o.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    if o.ctx < 2 {
        bail!("--ctx must be at least 2 tokens");
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        bail!("--lr must be a positive number (got {})", o.lr);
    }
    if o.layers.as_ref().is_some_and(|l| l.is_empty()) {
        bail!("--exit-layers is empty: give at least one layer");
    }
    Ok(())
}

/// Trains the adapters and writes them to `o.out`; `progress` gets a line now and then.
pub fn train_exit_adapters(o: &AdapterOptions, progress: &mut dyn FnMut(&str)) -> Result<AdapterReport> {
    check(o)?;
    let file = open_model(&o.model)?;
    let c = &file.config;
    if o.ctx > c.max_ctx {
        bail!("--ctx {} is beyond the model's context of {}", o.ctx, c.max_ctx);
    }
    let model = Model::new(&file)?;
    let (n_layers, dim, vocab, eps) = (c.n_layers, c.dim, c.vocab_size, c.rms_eps);
    let layers = match &o.layers {
        Some(l) => {
            let mut l = l.clone();
            l.sort_unstable();
            l.dedup();
            l
        }
        None => default_exit_layers(n_layers),
    };
    // The file's own checks (each exit point in 1..n_layers), before any work.
    ExitAdapters::zeros(dim, n_layers, layers.clone()).context("--exit-layers")?;
    let all = data_windows(&file, &o.data, o.tokens, o.ctx)?;

    // One pass per window: the final distributions and the residual stream after each exit layer.
    let t0 = Instant::now();
    let kept: Vec<usize> = layers.iter().map(|&l| l - 1).collect();
    let mut p: Vec<f32> = Vec::new();
    let mut h: Vec<Vec<f32>> = vec![Vec::new(); layers.len()];
    for w in &all {
        let mut st = model.new_state(w.len());
        let logits = model.forward_pass(&mut st, Pass::causal(w.as_slice(), Logits::All).keep_hidden(&kept))?;
        for row in logits.chunks_exact(vocab) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            p.extend(row.iter().map(|&x| (((x - max) as f64).exp() / z) as f32));
        }
        for (hi, &l) in h.iter_mut().zip(&kept) {
            hi.extend_from_slice(st.hidden_at(l).expect("kept"));
        }
    }
    let n = p.len() / vocab;
    let mut report = AdapterReport {
        layers: layers.clone(),
        positions: n,
        teacher_seconds: t0.elapsed().as_secs_f64(),
        ..AdapterReport::default()
    };
    progress(&format!(
        "{} windows, {n} positions, exits after layers {layers:?} of {n_layers}: model pass {:.1} s",
        all.len(),
        report.teacher_seconds
    ));

    let dev = Device::Cpu;
    let e = classifier(&model, None)?;
    let norm = Tensor::from_vec(model.weights.output_norm.clone(), dim, &dev)?;
    let h: Vec<Tensor> = h
        .into_iter()
        .map(|v| Tensor::from_vec(v, (n, dim), &dev))
        .collect::<candle_core::Result<_>>()?;
    let k = layers.len();
    // One translator per exit point, in the Medusa heads' variables (zero `W` and `b`).
    let vars = HeadVars::zeros(dim, k)?;
    let mut opt = AdamW::new(
        vars.w.iter().chain(&vars.b).cloned().collect(),
        ParamsAdamW {
            lr: o.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let steps = n.div_ceil(o.batch) * o.epochs;
    let mut kls: Vec<Vec<f64>> = Vec::with_capacity(steps);
    let t1 = Instant::now();
    for epoch in 0..o.epochs {
        let order = shuffle(n, o.seed.wrapping_add(epoch as u64));
        for idx in order.chunks(o.batch) {
            opt.set_learning_rate(lr_at(o.lr, kls.len(), steps));
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &dev)?;
            let pb: Vec<f32> = idx
                .iter()
                .flat_map(|&r| p[r * vocab..(r + 1) * vocab].iter().copied())
                .collect();
            let mut surrogate: Option<Tensor> = None;
            let mut step_kl = Vec::with_capacity(k);
            for (i, hi) in h.iter().enumerate() {
                let y = rms_norm(&vars.affine(i, &hi.index_select(&ids, 0)?)?, &norm, eps)?;
                let (kl, dy) = lm_head_kl(&y.detach(), &e, &pb)?;
                step_kl.push(kl);
                let s = (&y * dy)?.sum_all()?;
                surrogate = Some(match surrogate {
                    None => s,
                    Some(t) => (t + s)?,
                });
            }
            let grads = surrogate.expect("at least one exit").backward()?;
            opt.step(&grads)?;
            kls.push(step_kl);
            let step = kls.len();
            if step == steps || step.is_multiple_of((steps / 10).max(1)) {
                let last: Vec<String> = kls[step - 1].iter().map(|v| format!("{v:.3}")).collect();
                progress(&format!(
                    "step {step}/{steps}: KL per exit [{}] nats, {:.0} positions/s",
                    last.join(", "),
                    (step * o.batch) as f64 / t1.elapsed().as_secs_f64().max(1e-9)
                ));
            }
        }
    }
    report.steps = kls.len();
    report.train_seconds = t1.elapsed().as_secs_f64();
    let tenth = (kls.len() / 10).max(1);
    let mean = |rows: &[Vec<f64>], i: usize| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64;
    report.first_kl = (0..k).map(|i| mean(&kls[..tenth], i)).collect();
    report.final_kl = (0..k).map(|i| mean(&kls[kls.len() - tenth..], i)).collect();

    let (w, b) = vars.weights()?;
    ExitAdapters::new(dim, n_layers, layers, w, b)?
        .to_gguf(&RoutersBase::of(&file, &model))
        .write(&o.out)
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    Ok(report)
}
