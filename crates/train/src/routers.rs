//! `train-routers`: mixture-of-depths routers (Raposo et al. 2024) for a frozen Llama model, one linear
//! scorer per layer on the RMS-normalized residual stream entering it
//! ([`bushu::model::mixture_of_depths`]), written as a GGUF side file that names the model.
//!
//! **Objective.** Keep the full model's next-token distribution while each layer runs for only a fraction
//! `C` (the capacity) of the tokens: the loss is `KL(p_full ‖ p_routed)` per position, averaged, where
//! `p_full` comes from bushu's own forward pass (f32 activations) and `p_routed` from the routed model in
//! candle.
//!
//! **Routing in training: top-k with a straight-through gate.** At each layer the `k = ⌈C·n⌉` positions
//! of the batch with the highest scores run the layer, the others keep their residual stream (Raposo et
//! al.'s expert-choice top-k, which fixes the capacity exactly without a penalty term to tune). The
//! forward pass is then exactly what inference computes — hard decisions, a skipped token's K and V taken
//! from its unchanged residual stream (the frozen layer computes them from its input either way) — and
//! the gradient reaches the router through a straight-through sigmoid:
//! `x' = x + g · (layer(x) − x)` with `g = hard + σ(r − τ) − stopgrad(σ(r − τ))`, `τ` the batch's k-th
//! score. So `∂L/∂r = σ'(r − τ) · ⟨layer(x) − x, ∂L/∂x'⟩`, the first-order change of the loss when the
//! token's decision flips, weighted towards tokens near the threshold (whose decisions can flip). A soft
//! gate `x + σ(r)·f(x)` with a capacity penalty would train a model that never runs at inference (a
//! frozen layer's output half-applied), and its penalty weight sets the capacity only indirectly.
//!
//! **Calibration.** Decoding cannot take the top-k of a sequence whose future it has not seen; it
//! compares each score with a threshold. After training, the routed model runs once more over
//! calibration windows of the training text at the trained capacity, and the file stores each layer's
//! score quantiles (0, 1, ..., 100 %): capacity `C'` at inference uses the `1 − C'` quantile.
//!
//! The frozen classifier's gradient is never formed: [`lm_head_kl`] computes the loss and its gradient
//! with respect to the final-norm hidden states by hand, as `train-medusa` does for cross-entropy. The
//! frozen layers' weights are candle constants ([`Student::freeze`]); their gradients are computed by
//! candle's matmul backward anyway and thrown away, so a step costs about three forward passes.

use crate::distill::{lr_at, read_data};
use crate::medusa::{classifier, open_model};
use crate::optim::{AdamW, ParamsAdamW};
use crate::student::{normal, rms_norm, Student, StudentConfig};
use anyhow::{bail, Result};
use bushu::model::mixture_of_depths::{Routers, RoutersBase, QUANTILES};
use bushu::model::{Logits, Model, ModelFile};
use candle_core::{Device, Tensor, Var, D};
use std::path::PathBuf;
use std::time::Instant;

/// Everything `bushu train-routers` is told.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    /// The fraction of tokens that run each layer, in (0, 1].
    pub capacity: f64,
    /// Tokens of the data used for training (their first ones).
    pub tokens: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Windows per step.
    pub batch: usize,
    pub epochs: usize,
    pub lr: f64,
    pub seed: u64,
    /// Windows of the training data whose scores give the quantiles.
    pub calib_windows: usize,
    pub out: PathBuf,
}

impl RouterOptions {
    pub fn new(model: PathBuf, data: Vec<PathBuf>, capacity: f64, out: PathBuf) -> RouterOptions {
        RouterOptions {
            model,
            data,
            capacity,
            tokens: 16_384,
            ctx: 128,
            batch: 4,
            epochs: 1,
            lr: 1e-2,
            seed: 0,
            calib_windows: 16,
            out,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RouterReport {
    pub windows: usize,
    pub positions: usize,
    pub steps: usize,
    /// KL of the all-layers candle model to bushu's on the first batch (a check that the two agree).
    pub full_kl: f64,
    /// Mean KL over the first and the last tenth of the steps.
    pub first_kl: f64,
    pub final_kl: f64,
    /// KL of the routed model on one fixed batch (the first windows) before and after training.
    pub batch_kl_before: f64,
    pub batch_kl_after: f64,
    pub teacher_seconds: f64,
    pub train_seconds: f64,
    pub calib_positions: usize,
    pub calib_seconds: f64,
}

/// Checks the options that need no file.
pub fn check(o: &RouterOptions) -> Result<()> {
    if !(o.capacity > 0.0 && o.capacity <= 1.0) {
        bail!(
            "--capacity must be in (0, 1] (the fraction of tokens that run each layer), got {}",
            o.capacity
        );
    }
    if o.data.is_empty() {
        bail!("no data files given (--data)");
    }
    if o.batch == 0 || o.epochs == 0 || o.calib_windows == 0 {
        bail!("--batch, --epochs and --calib-windows must be at least 1");
    }
    if o.ctx < 2 {
        bail!("--ctx must be at least 2 tokens");
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        bail!("--lr must be a positive number (got {})", o.lr);
    }
    Ok(())
}

/// The mean `KL(p ‖ softmax(u E^T))` over the rows of `u` (`[n, dim]`; `e`: the classifier `[vocab,
/// dim]`; `p`: `n x vocab` probabilities) and its gradient with respect to `u`: `(q − p) E / n`, by hand
/// so that the frozen classifier gets no gradient.
pub fn lm_head_kl(u: &Tensor, e: &Tensor, p: &[f32]) -> Result<(f64, Tensor)> {
    let (n, _) = u.dims2()?;
    let logits = u.matmul(&e.t()?)?;
    let vocab = logits.dim(1)?;
    if p.len() != n * vocab {
        bail!("{} target probabilities for {n} rows of {vocab}", p.len());
    }
    let mut g: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut loss = 0.0f64;
    for (row, pr) in g.chunks_exact_mut(vocab).zip(p.chunks_exact(vocab)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let lz = z.ln();
        for (x, &pv) in row.iter_mut().zip(pr) {
            let lq = (*x - max) as f64 - lz;
            if pv > 0.0 {
                loss += pv as f64 * ((pv as f64).ln() - lq);
            }
            *x = ((lq.exp() - pv as f64) / n as f64) as f32;
        }
    }
    let g = Tensor::from_vec(g, (n, vocab), u.device())?;
    Ok((loss / n as f64, g.matmul(e)?))
}

/// The routers being trained: `w` `[layers, dim]`, `b` `[layers]`.
pub struct RouterVars {
    pub w: Var,
    pub b: Var,
}

impl RouterVars {
    /// Layer `l`'s scores of the rows of `x` (`[n, dim]`): `w_l · x / sqrt(mean(x²) + eps) + b_l`, `[n]`.
    pub fn scores(&self, l: usize, x: &Tensor, eps: f32) -> Result<Tensor> {
        let xn = x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?.sqrt()?)?;
        let w = self.w.as_tensor().narrow(0, l, 1)?; // [1, dim]
        let b = self.b.as_tensor().narrow(0, l, 1)?; // [1]
        Ok(xn.matmul(&w.t()?)?.squeeze(1)?.broadcast_add(&b)?)
    }
}

/// The `k`-th largest of `v` (`k ≥ 1`).
fn kth_largest(v: &[f32], k: usize) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[k.clamp(1, s.len()) - 1]
}

/// The routed layer step: of the rows of `x`, the `⌈C·n⌉` with the highest scores take the layer's output
/// `y`, the others keep `x`; the straight-through gate carries the gradient to the scores. Pushes each
/// row's score to `scores` when given.
fn routed(
    vars: &RouterVars,
    l: usize,
    x: &Tensor,
    y: Tensor,
    capacity: f64,
    eps: f32,
    scores: Option<&mut Vec<Vec<f32>>>,
) -> Result<Tensor> {
    let r = vars.scores(l, x, eps)?;
    let rv: Vec<f32> = r.to_vec1()?;
    let k = ((capacity * rv.len() as f64).ceil() as usize).max(1);
    let tau = kth_largest(&rv, k);
    if let Some(s) = scores {
        s[l].extend_from_slice(&rv);
    }
    let hard: Vec<f32> = rv.iter().map(|&v| f32::from(u8::from(v >= tau))).collect();
    let hard = Tensor::from_vec(hard, rv.len(), x.device())?;
    let s = candle_nn::ops::sigmoid(&(r - tau as f64)?)?;
    let g = (hard + (&s - s.detach())?)?.unsqueeze(1)?;
    Ok((x + g.broadcast_mul(&(y - x)?)?)?)
}

/// The first `tokens` tokens of the data `files` (the model `file`'s tokenizer) in windows of `ctx`, each
/// starting with BOS when the model adds one; an error when not even one window fills.
pub(crate) fn data_windows(file: &ModelFile, files: &[PathBuf], tokens: usize, ctx: usize) -> Result<Vec<Vec<u32>>> {
    let mut data = read_data(file, files)?;
    data.truncate(tokens);
    let bos = if file.tokenizer.add_bos() {
        file.tokenizer.bos_id()
    } else {
        None
    };
    let all = windows(&data, ctx, bos);
    if all.is_empty() {
        bail!(
            "the data holds {} tokens: fewer than one window of --ctx {ctx}",
            data.len()
        );
    }
    Ok(all)
}

/// Windows of `ctx` tokens (the last partial one dropped), each starting with `bos` when given.
pub(crate) fn windows(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    let body = ctx - usize::from(bos.is_some());
    tokens
        .chunks_exact(body)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect()
}

/// Next-token probabilities of `model` at every position of each window (`windows x ctx x vocab`).
fn teacher_probs(model: &Model, windows: &[&Vec<u32>]) -> Result<Vec<f32>> {
    let vocab = model.config.vocab_size;
    let mut out = Vec::with_capacity(windows.len() * windows[0].len() * vocab);
    for w in windows {
        let mut st = model.new_state(w.len());
        let logits = model.forward(&mut st, w.as_slice(), Logits::All)?;
        for row in logits.chunks_exact(vocab) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            out.extend(row.iter().map(|&x| (((x - max) as f64).exp() / z) as f32));
        }
    }
    Ok(out)
}

fn batch_tensor(windows: &[&Vec<u32>]) -> Result<Tensor> {
    let (b, t) = (windows.len(), windows[0].len());
    let flat: Vec<u32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (b, t), &Device::Cpu)?)
}

/// Trains the routers and writes them to `o.out`; `progress` gets a line per step.
pub fn train_routers(o: &RouterOptions, progress: &mut dyn FnMut(&str)) -> Result<RouterReport> {
    check(o)?;
    let file = open_model(&o.model)?;
    let c = &file.config;
    if c.arch != "llama" {
        bail!(
            "train-routers trains on Llama models (the training crate's forward pass); {} is a {} model",
            o.model.display(),
            c.arch
        );
    }
    if o.ctx > c.max_ctx {
        bail!("--ctx {} is beyond the model's context of {}", o.ctx, c.max_ctx);
    }
    let mut model = Model::new(&file)?;
    // The reference distribution with f32 activations: the candle model computes the same function.
    model.precision = kernels::Precision::Exact;
    let all = data_windows(&file, &o.data, o.tokens, o.ctx)?;
    let config = StudentConfig {
        vocab: c.vocab_size,
        dim: c.dim,
        layers: c.n_layers,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        ffn: c.ffn_dim,
        ctx: o.ctx,
        rope_theta: c.rope_theta,
        rms_eps: c.rms_eps,
    };
    let (layers, dim, eps) = (c.n_layers, c.dim, c.rms_eps);
    let mut student = Student::from_teacher(config, &file, &(0..layers).collect::<Vec<_>>())?;
    student.freeze();
    let e = classifier(&model, None)?;
    let out_norm = student.param("output_norm.weight")?.clone();
    let dev = Device::Cpu;
    let mut rng = bushu::sampling::rng::Rng::new(o.seed);
    // Small random weights break the ties of the first step's top-k.
    let vars = RouterVars {
        w: Var::from_tensor(&Tensor::from_vec(
            normal(&mut rng, layers * dim, 1e-3),
            (layers, dim),
            &dev,
        )?)?,
        b: Var::zeros(layers, candle_core::DType::F32, &dev)?,
    };
    let mut opt = AdamW::new(
        vec![vars.w.clone(), vars.b.clone()],
        ParamsAdamW {
            lr: o.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut report = RouterReport {
        windows: all.len(),
        positions: all.len() * o.ctx,
        ..RouterReport::default()
    };
    let per_epoch = all.len().div_ceil(o.batch);
    let steps = per_epoch * o.epochs;
    let mut kls = Vec::with_capacity(steps);
    // One fixed batch, its KL measured before and after training (the same windows both times).
    let fixed: Vec<&Vec<u32>> = all.iter().take(o.batch).collect();
    let fixed_p = teacher_probs(&model, &fixed)?;
    let fixed_tokens = batch_tensor(&fixed)?;
    let fixed_kl = |vars: &RouterVars| -> Result<f64> {
        let (x, _) = student.run_layers(&fixed_tokens, &mut |l, x, y| {
            routed(vars, l, &x.detach(), y.detach(), o.capacity, eps, None)
        })?;
        Ok(lm_head_kl(&rms_norm(&x, &out_norm, eps)?.detach(), &e, &fixed_p)?.0)
    };
    report.batch_kl_before = fixed_kl(&vars)?;
    let t0 = Instant::now();
    let mut step = 0;
    for epoch in 0..o.epochs {
        let order = shuffle(all.len(), o.seed.wrapping_add(epoch as u64));
        for idx in order.chunks(o.batch) {
            let ws: Vec<&Vec<u32>> = idx.iter().map(|&i| &all[i]).collect();
            let tt = Instant::now();
            let p = teacher_probs(&model, &ws)?;
            report.teacher_seconds += tt.elapsed().as_secs_f64();
            let tokens = batch_tensor(&ws)?;
            if step == 0 {
                // The candle model with every layer against bushu's: the two must compute one function.
                let (x, _) = student.run_layers(&tokens, &mut |_, _, y| Ok(y))?;
                let u = rms_norm(&x, &out_norm, eps)?;
                report.full_kl = lm_head_kl(&u, &e, &p)?.0;
                progress(&format!(
                    "KL(bushu ‖ candle), every layer run: {:.2e} nats (the two forward passes agree when ~0)",
                    report.full_kl
                ));
            }
            opt.set_learning_rate(lr_at(o.lr, step, steps));
            let (x, _) = student.run_layers(&tokens, &mut |l, x, y| routed(&vars, l, x, y, o.capacity, eps, None))?;
            let u = rms_norm(&x, &out_norm, eps)?;
            let (kl, du) = lm_head_kl(&u.detach(), &e, &p)?;
            let grads = (&u * du)?.sum_all()?.backward()?;
            opt.step(&grads)?;
            step += 1;
            kls.push(kl);
            progress(&format!(
                "step {step}/{steps}: KL {kl:.4} nats, {:.0} tokens/s",
                (step * o.batch * o.ctx) as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            ));
        }
    }
    report.steps = step;
    report.train_seconds = t0.elapsed().as_secs_f64();
    let tenth = (kls.len() / 10).max(1);
    report.first_kl = kls[..tenth].iter().sum::<f64>() / tenth as f64;
    report.final_kl = kls[kls.len() - tenth..].iter().sum::<f64>() / tenth as f64;
    report.batch_kl_after = fixed_kl(&vars)?;

    // Calibration: the scores each layer sees in the routed model, over windows of the training text.
    let t1 = Instant::now();
    let mut scores = vec![Vec::new(); layers];
    let calib: Vec<&Vec<u32>> = all.iter().take(o.calib_windows).collect();
    for ws in calib.chunks(o.batch) {
        let tokens = batch_tensor(ws)?;
        student.run_layers(&tokens, &mut |l, x, y| {
            routed(&vars, l, &x.detach(), y.detach(), o.capacity, eps, Some(&mut scores))
        })?;
    }
    report.calib_positions = calib.len() * o.ctx;
    report.calib_seconds = t1.elapsed().as_secs_f64();
    let mut quantiles = Vec::with_capacity(layers * QUANTILES);
    for s in &mut scores {
        s.sort_by(|a, b| a.total_cmp(b));
        quantiles.extend((0..QUANTILES).map(|i| quantile(s, i as f64 / (QUANTILES - 1) as f64)));
    }
    let routers = Routers::new(
        dim,
        vars.w.as_tensor().flatten_all()?.to_vec1()?,
        vars.b.as_tensor().to_vec1()?,
        quantiles,
        o.capacity as f32,
    )?;
    routers
        .to_gguf(&RoutersBase::of(&file, &model))
        .write(&o.out)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e:#}", o.out.display()))?;
    Ok(report)
}

/// The quantile `q` of ascending `s` (linear interpolation between order statistics).
pub fn quantile(s: &[f32], q: f64) -> f32 {
    let at = q * (s.len() - 1) as f64;
    let i = (at.floor() as usize).min(s.len() - 1);
    let j = (i + 1).min(s.len() - 1);
    let f = (at - i as f64) as f32;
    s[i] + f * (s[j] - s[i])
}

/// A permutation of `0..n` from `seed`.
pub(crate) fn shuffle(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = bushu::sampling::rng::Rng::new(seed ^ 0x726f_7574_6572);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.next_u32() as u64 * (i as u64 + 1)) >> 32) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`lm_head_kl`]'s loss against a hand computation and its gradient against finite differences.
    #[test]
    fn lm_head_kl_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (n, dim, vocab) = (3, 4, 6);
        let mut rng = bushu::sampling::rng::Rng::new(11);
        let mut r = |m: usize| -> Vec<f32> { (0..m).map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5).collect() };
        let u: Vec<f32> = r(n * dim).into_iter().map(|x| x * 2.0).collect();
        let ev: Vec<f32> = r(vocab * dim).into_iter().map(|x| x * 3.0).collect();
        let e = Tensor::from_vec(ev.clone(), (vocab, dim), &dev).unwrap();
        // Targets: softmax of random logits, one row with a zero probability.
        let mut p: Vec<f32> = Vec::new();
        for row in r(n * vocab).chunks(vocab) {
            let z: f32 = row.iter().map(|x| (3.0 * x).exp()).sum();
            p.extend(row.iter().map(|x| (3.0 * x).exp() / z));
        }
        p[vocab] += p[vocab + 1];
        p[vocab + 1] = 0.0;
        let f = |u: &[f32]| -> f64 {
            let mut l = 0.0;
            for (row, pr) in u.chunks_exact(dim).zip(p.chunks_exact(vocab)) {
                let z: Vec<f64> = (0..vocab)
                    .map(|v| (0..dim).map(|d| row[d] as f64 * ev[v * dim + d] as f64).sum())
                    .collect();
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                for (v, &pv) in pr.iter().enumerate() {
                    if pv > 0.0 {
                        l += pv as f64 * ((pv as f64).ln() - (z[v] - lse));
                    }
                }
            }
            l / n as f64
        };
        let ut = Tensor::from_vec(u.clone(), (n, dim), &dev).unwrap();
        let (loss, du) = lm_head_kl(&ut, &e, &p).unwrap();
        assert!((loss - f(&u)).abs() < 1e-5, "{loss} vs {}", f(&u));
        let du: Vec<f32> = du.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-3f32;
        for i in 0..n * dim {
            let (mut a, mut b) = (u.clone(), u.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (f(&a) - f(&b)) / (2.0 * eps as f64);
            assert!((fd - du[i] as f64).abs() < 1e-3, "d/du[{i}]: {fd} vs {}", du[i]);
        }
        // KL of a distribution to itself is 0: targets equal to the model's own softmax.
        let logits: Vec<f32> = ut
            .matmul(&e.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut own = Vec::new();
        for row in logits.chunks(vocab) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
            own.extend(row.iter().map(|&x| (((x - m) as f64).exp() / z) as f32));
        }
        assert!(lm_head_kl(&ut, &e, &own).unwrap().0.abs() < 1e-6);
    }

    /// The routed step: the top ⌈C·n⌉ rows by score take the layer's output, the others keep their input;
    /// the gradient of the scores is σ'(r − τ) · ⟨y − x, ∂L/∂x'⟩ per row.
    #[test]
    fn routed_step_by_hand() {
        let dev = Device::Cpu;
        let (n, dim) = (4, 2);
        // Router of layer 0: w = (1, 0), b = 0.5; rows chosen so the normalized first coordinate ranks them.
        let vars = RouterVars {
            w: Var::from_tensor(&Tensor::from_vec(vec![1.0f32, 0.0], (1, dim), &dev).unwrap()).unwrap(),
            b: Var::from_tensor(&Tensor::from_vec(vec![0.5f32], 1, &dev).unwrap()).unwrap(),
        };
        let xv = vec![1.0f32, 1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let x = Tensor::from_vec(xv.clone(), (n, dim), &dev).unwrap();
        let y = Tensor::from_vec(vec![10.0f32; n * dim], (n, dim), &dev).unwrap();
        // Scores: x0 / rms(x) + 0.5 = 1 + 0.5, -1 + 0.5, sqrt(2) + 0.5, 0.5 (eps 0).
        let want = [1.5f32, -0.5, 2f32.sqrt() + 0.5, 0.5];
        let r: Vec<f32> = vars.scores(0, &x, 0.0).unwrap().to_vec1().unwrap();
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
        // Capacity 0.5: rows 2 and 0 run (τ = 1.5), rows 1 and 3 keep x.
        let mut sc = vec![Vec::new()];
        let out: Vec<f32> = routed(&vars, 0, &x, y.clone(), 0.5, 0.0, Some(&mut sc))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expect = [10.0, 10.0, -1.0, 1.0, 10.0, 10.0, 0.0, 1.0];
        assert_eq!(out, expect);
        assert_eq!(sc[0].len(), n);
        // Gradient of sum(x') with respect to b: Σ σ'(r − τ) · Σ_d (y − x).
        let o = routed(&vars, 0, &x, y, 0.5, 0.0, None).unwrap();
        let grads = o.sum_all().unwrap().backward().unwrap();
        let gb: Vec<f32> = grads.get(vars.b.as_tensor()).unwrap().to_vec1().unwrap();
        let tau = 1.5f32;
        let mut want_b = 0.0f32;
        for i in 0..n {
            let s = 1.0 / (1.0 + (-(want[i] - tau)).exp());
            want_b += s * (1.0 - s) * ((10.0 - xv[2 * i]) + (10.0 - xv[2 * i + 1]));
        }
        assert!((gb[0] - want_b).abs() < 1e-4, "{} vs {want_b}", gb[0]);
        // Capacity 1: every row runs.
        let all: Vec<f32> = routed(
            &vars,
            0,
            &x,
            Tensor::ones((n, dim), candle_core::DType::F32, &dev).unwrap(),
            1.0,
            0.0,
            None,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
        assert_eq!(all, vec![1.0; n * dim]);
        assert_eq!(quantile(&[0.0, 1.0, 2.0, 4.0], 0.5), 1.5);
        assert_eq!(quantile(&[3.0], 0.3), 3.0);
    }
}
