//! `train-medusa`: Medusa-1 heads (Cai et al. 2024) for a frozen model. Head `i` (1-based) predicts
//! token `t + i + 1` from the model's final-norm hidden state `h_t` as `LM_head(h + SiLU(W_i h + b_i))`,
//! the model's own classifier frozen, `W_i` and `b_i` zero at the start (so every head starts as the
//! LM head itself). The loss is `Σ_i λ^i · CE_i` (λ = `decay`, 0.8 in the paper).
//!
//! The run: open the model (bushu) → tokenize the data; with self-distillation (Medusa-2's recipe) also
//! let the model continue each prompt greedily and train on that text, whose next tokens are the
//! model's own → run bushu's forward pass once over every window and keep the final-norm hidden state
//! of each position (the only thing the heads see) → AdamW over shuffled batches of positions (epochs
//! over the cached states) → write the heads as a GGUF side file that names the model
//! ([`bushu::spec_decode::medusa::BaseIdentity`]) → measure each head's top-1 accuracy on held-out text
//! with bushu's inference path (the written file, the model's own classifier kernels).
//!
//! With `head_vocab` (`--head-vocab N`, FR-Spec) the heads learn to score the first `N` token ids only:
//! the classifier is its first `N` rows (`N / vocab` of the cost), a position whose label is past them
//! does not train that head, and the file records `N` so that inference restricts the heads alike.
//!
//! The costly part is the classifier over the whole vocabulary (49,152 × 576 for SmolLM2) — forward
//! and backward for every head and position. candle's matmul backward would also compute the frozen
//! classifier's gradient (a third product as large); [`lm_head_ce`] computes the cross-entropy and its
//! gradient with respect to the head's output by hand instead (two products), checked against finite
//! differences, and candle's autograd takes it from there through the residual block (a surrogate loss
//! `Σ u · ∂L/∂u`). Everything random (self-distillation is greedy; the batch order) comes from `seed`,
//! and candle's CPU ops are deterministic: a seed gives the same heads bit for bit.

use crate::distill::{lr_at, read_data};
use crate::optim::{AdamW, ParamsAdamW};
use anyhow::{bail, Context, Result};
use bushu::chat::session::template_for;
use bushu::chat::template::{ChatTemplate, Message};
use bushu::generate::{generate, GenerateOptions};
use bushu::model::loader::load_gguf;
use bushu::model::{Logits, Model, ModelFile, Pass, Probe};
use bushu::sampling::SamplingParams;
use bushu::spec_decode::medusa::{BaseIdentity, MedusaHeads, MAX_HEADS};
use candle_core::{DType, Device, Tensor, Var};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `bushu train-medusa` is told.
#[derive(Clone, Debug)]
pub struct MedusaOptions {
    pub model: PathBuf,
    pub heads: usize,
    pub data: Vec<PathBuf>,
    /// Tokens of the data files used (their first ones).
    pub tokens: usize,
    /// One prompt per line: the model continues each greedily (self-distillation).
    pub self_distill_prompts: Option<PathBuf>,
    /// Tokens the model generates per prompt.
    pub self_distill_tokens: usize,
    /// Tokens per forward-pass window of the data.
    pub ctx: usize,
    /// Positions per AdamW step.
    pub batch: usize,
    /// Passes over the cached positions.
    pub epochs: usize,
    pub lr: f64,
    /// Loss weight of head `i` (1-based): `decay^i`.
    pub decay: f64,
    pub seed: u64,
    pub out: PathBuf,
    /// Held-out text for the per-head accuracy, and how many of its tokens.
    pub val: Option<PathBuf>,
    pub val_tokens: usize,
    /// `Some(n)`: the heads learn to score the first `n` token ids only (FR-Spec; positions whose label
    /// is past them do not train that head), and the file says so ([`MedusaHeads::vocab`]).
    pub head_vocab: Option<usize>,
    /// Self-distillation prompts are user messages rendered with the model's chat template (the
    /// generation stops at its end-of-turn tokens) rather than raw text.
    pub chat: bool,
}

impl MedusaOptions {
    pub fn new(model: PathBuf, heads: usize, data: Vec<PathBuf>, out: PathBuf) -> MedusaOptions {
        MedusaOptions {
            model,
            heads,
            data,
            tokens: 100_000,
            self_distill_prompts: None,
            self_distill_tokens: 128,
            ctx: 256,
            batch: 64,
            epochs: 1,
            lr: 1e-3,
            decay: 0.8,
            seed: 0,
            out,
            val: None,
            val_tokens: 4096,
            head_vocab: None,
            chat: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct MedusaReport {
    /// Training positions (each gives one example per head), of which self-distilled.
    pub positions: usize,
    pub self_distilled_positions: usize,
    pub steps: usize,
    pub hidden_seconds: f64,
    pub generate_seconds: f64,
    pub train_seconds: f64,
    /// Per head, the mean cross-entropy over the last tenth of the steps.
    pub final_ce: Vec<f32>,
    /// On the held-out text (when given): the base model's top-1 accuracy for `t + 1`, each trained
    /// head's for `t + i + 1`, and what each head predicted before training (the LM head, `W = 0`).
    pub val_positions: usize,
    pub val_base: f64,
    pub val_heads: Vec<f64>,
    pub val_untrained: Vec<f64>,
    /// Per head, the fraction of held-out labels inside the heads' vocabulary (1 without a restriction).
    pub val_in_vocab: Vec<f64>,
}

/// Opens `path` as a GGUF model; one clear error when it is not a GGUF file.
pub fn open_model(path: &Path) -> Result<ModelFile> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read the model {}", path.display()))?;
    if n < 4 || &magic != b"GGUF" {
        bail!(
            "the model {} is not a GGUF file (train-medusa reads weights and tokenizer from GGUF)",
            path.display()
        );
    }
    load_gguf(path).with_context(|| format!("the model {}", path.display()))
}

/// Sequences of tokens whose positions from `from` on train the heads.
pub struct Sequences {
    pub seqs: Vec<(Vec<u32>, usize)>,
}

/// The final-norm hidden states of every position of `seq` (`len x dim`), from one causal pass.
pub fn hidden_states(model: &Model, seq: &[u32]) -> Result<Vec<f32>> {
    let mut state = model.new_state(seq.len());
    let last = model.config.n_layers - 1;
    let mut resid = Vec::new();
    model.forward_pass_observed(&mut state, Pass::causal(seq, Logits::None), &mut |p, x| {
        if p == Probe::Residual(last) {
            resid = x.to_vec();
        }
    })?;
    let mut h = vec![0.0; resid.len()];
    model.final_norm(&resid, &mut h);
    Ok(h)
}

/// Training examples: hidden states (`n x dim`) and, per head, the label of each.
pub struct Examples {
    pub dim: usize,
    pub h: Vec<f32>,
    /// `labels[i][r]`: the token head `i` (0-based) must predict for row `r` (`t + i + 2`).
    pub labels: Vec<Vec<u32>>,
    /// The next token (`t + 1`), for the base model's accuracy.
    pub next: Vec<u32>,
}

impl Examples {
    fn new(dim: usize, heads: usize) -> Examples {
        Examples {
            dim,
            h: Vec::new(),
            labels: vec![Vec::new(); heads],
            next: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.next.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Adds the positions `from..` of `seq` that have a label for every head.
    fn add(&mut self, model: &Model, seq: &[u32], from: usize) -> Result<()> {
        let k = self.labels.len();
        if seq.len() < k + 2 {
            return Ok(());
        }
        let h = hidden_states(model, seq)?;
        let d = self.dim;
        for t in from..seq.len() - k - 1 {
            self.h.extend_from_slice(&h[t * d..(t + 1) * d]);
            self.next.push(seq[t + 1]);
            for (i, l) in self.labels.iter_mut().enumerate() {
                l.push(seq[t + i + 2]);
            }
        }
        Ok(())
    }
}

/// `tokens` cut into windows of `ctx` (the last one shorter), each starting with `bos` when the model has one.
fn windows(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    let body = ctx - usize::from(bos.is_some());
    tokens
        .chunks(body)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect()
}

/// The model's own continuations of each line of `prompts` (greedy, `n` tokens): `(sequence, first
/// generated position - 1)`, so that every trained position's labels are generated tokens.
/// With `chat`, each line is a user message rendered with the model's chat template (its generation
/// prompt appended) and the continuation stops at the template's end-of-turn tokens.
pub fn self_distill(
    model: &Model,
    file: &ModelFile,
    prompts: &Path,
    n: usize,
    chat: bool,
) -> Result<Vec<(Vec<u32>, usize)>> {
    let text = std::fs::read_to_string(prompts)
        .with_context(|| format!("cannot read the self-distillation prompts {}", prompts.display()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        bail!(
            "the self-distillation prompts file {} has no prompt (one per line)",
            prompts.display()
        );
    }
    let mut out = Vec::new();
    let (template, stops) = match chat {
        true => {
            let (t, stops, _) = template_for(file)?;
            (Some(t), stops)
        }
        false => (None, file.eos_ids.clone()),
    };
    for l in lines {
        let prompt = encode_prompt(file, template.as_ref(), l)?;
        let mut state = model.new_state(prompt.len() + n + 1);
        let opts = GenerateOptions::new(n, SamplingParams::greedy(), stops.clone());
        let g = generate(model, &file.tokenizer, &mut state, &prompt, &opts, &mut |_| {})?;
        let mut seq = prompt.clone();
        seq.extend_from_slice(&g.tokens);
        out.push((seq, prompt.len() - 1));
    }
    Ok(out)
}

/// The tokens of prompt `line`: raw text (BOS as the file says), or with `template` a user message
/// rendered with the model's chat template, ending where the assistant's answer starts, tokenized as
/// `bushu chat` does (the template writes whatever special tokens it wants; no BOS added).
pub fn encode_prompt(file: &ModelFile, template: Option<&ChatTemplate>, line: &str) -> Result<Vec<u32>> {
    match template {
        None => file.tokenizer.encode(line, true),
        Some(t) => {
            let text = t.render(&[Message::new("user", line)], true)?;
            file.tokenizer.encode_with(&text, false, true)
        }
    }
}

/// The mean cross-entropy of `softmax(u E^T)` against `labels` and its gradient with respect to `u`
/// (`u`: `[n, dim]`, `e`: the classifier `[vocab, dim]`): `(p − onehot) E / n`, written by hand so that
/// the frozen classifier gets no gradient (see the module documentation). `e` may be the classifier's
/// first rows only (`--head-vocab`): rows whose label is past them are left out (no loss, zero
/// gradient) and `n` counts the others; none left gives a loss and a gradient of 0.
pub fn lm_head_ce(u: &Tensor, e: &Tensor, labels: &[u32]) -> Result<(f32, Tensor)> {
    let (_, dim) = u.dims2()?;
    let logits = u.matmul(&e.t()?)?;
    let vocab = logits.dim(1)?;
    let n = labels.iter().filter(|&&y| (y as usize) < vocab).count().max(1);
    let mut g: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let mut loss = 0.0f64;
    for (row, &y) in g.chunks_exact_mut(vocab).zip(labels) {
        if y as usize >= vocab {
            row.fill(0.0);
            continue;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0.0f64;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            z += *x as f64;
        }
        loss += z.ln() - (row[y as usize] as f64).ln();
        let s = (1.0 / (z * n as f64)) as f32;
        for x in row.iter_mut() {
            *x *= s;
        }
        row[y as usize] -= 1.0 / n as f32;
    }
    let rows = labels.len();
    let g = Tensor::from_vec(g, (rows, vocab), u.device())?;
    let du = g.matmul(e)?;
    debug_assert_eq!(du.dims2()?, (rows, dim));
    Ok(((loss / n as f64) as f32, du))
}

/// One vector per head (its `W` flattened, or its `b`).
pub type HeadWeights = Vec<Vec<f32>>;

/// The heads being trained: per head `W` `[dim, dim]` (output by input) and `b` `[dim]`.
pub struct HeadVars {
    pub w: Vec<Var>,
    pub b: Vec<Var>,
}

impl HeadVars {
    pub fn zeros(dim: usize, k: usize) -> Result<HeadVars> {
        let dev = Device::Cpu;
        Ok(HeadVars {
            w: (0..k)
                .map(|_| Var::zeros((dim, dim), DType::F32, &dev))
                .collect::<candle_core::Result<_>>()?,
            b: (0..k)
                .map(|_| Var::zeros(dim, DType::F32, &dev))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// Head `i`'s residual block on `h` `[n, dim]`: `h + SiLU(h W^T + b)`.
    pub fn residual(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        let z = h
            .matmul(&self.w[i].as_tensor().t()?)?
            .broadcast_add(self.b[i].as_tensor())?;
        Ok((h + candle_nn::ops::silu(&z)?)?)
    }

    /// Head `i`'s affine map on `h` `[n, dim]`: `h + h W^T + b` (the exit adapters' translator).
    pub fn affine(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        let z = h
            .matmul(&self.w[i].as_tensor().t()?)?
            .broadcast_add(self.b[i].as_tensor())?;
        Ok((h + z)?)
    }

    /// Every head's `W` (row-major, output by input) and `b`, as plain vectors.
    pub fn weights(&self) -> Result<(HeadWeights, HeadWeights)> {
        let w = self
            .w
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let b = self
            .b
            .iter()
            .map(|v| v.as_tensor().to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        Ok((w, b))
    }

    pub fn to_heads(&self) -> Result<MedusaHeads> {
        let (w, b) = self.weights()?;
        MedusaHeads::new(self.b[0].dim(0)?, w, b)
    }
}

/// The model's classifier as a candle tensor `[vocab, dim]` (dequantized to f32); with `rows`, its
/// first `rows` rows only (at most the vocabulary).
pub fn classifier(model: &Model, rows: Option<usize>) -> Result<Tensor> {
    let dim = model.config.dim;
    let vocab = rows.map_or(model.config.vocab_size, |n| n.min(model.config.vocab_size));
    let m = model.weights.output.matrix();
    let mut e = vec![0.0f32; vocab * dim];
    for (r, row) in e.chunks_exact_mut(dim).enumerate() {
        m.dequantize_row(r, row);
    }
    Ok(Tensor::from_vec(e, (vocab, dim), &Device::Cpu)?)
}

/// A permutation of `0..n` from `seed` (Fisher-Yates with bushu's generator).
fn shuffle(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = bushu::sampling::rng::Rng::new(seed ^ 0x6d65_6475_7361);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.next_u32() as u64 * (i as u64 + 1)) >> 32) as usize;
        v.swap(i, j);
    }
    v
}

/// Reports progress.
pub trait MedusaProgress {
    fn note(&mut self, line: &str);
    fn step(&mut self, step: usize, steps: usize, ce: &[f32], rows_per_s: f64);
}

/// No output (tests).
pub struct QuietMedusa;
impl MedusaProgress for QuietMedusa {
    fn note(&mut self, _: &str) {}
    fn step(&mut self, _: usize, _: usize, _: &[f32], _: f64) {}
}

/// Progress lines on stderr (every tenth of the run).
pub struct StderrMedusa;
impl MedusaProgress for StderrMedusa {
    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn step(&mut self, step: usize, steps: usize, ce: &[f32], rows_per_s: f64) {
        if step == steps || step.is_multiple_of((steps / 10).max(1)) {
            let ce: Vec<String> = ce.iter().map(|c| format!("{c:.3}")).collect();
            eprintln!(
                "step {step}/{steps}: head CE [{}] {rows_per_s:.0} positions/s",
                ce.join(", ")
            );
        }
    }
}

/// Checks the options that need no file.
pub fn check(o: &MedusaOptions) -> Result<()> {
    if o.heads == 0 || o.heads > MAX_HEADS {
        bail!(
            "--heads must be between 1 and {MAX_HEADS} (got {}; Medusa uses 3 to 5)",
            o.heads
        );
    }
    if o.data.is_empty() {
        bail!("no data files given (--data)");
    }
    if o.batch == 0 || o.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    if o.ctx < o.heads + 3 {
        bail!("--ctx {} is too short for {} heads", o.ctx, o.heads);
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        bail!("--lr must be a positive number (got {})", o.lr);
    }
    if !(o.decay > 0.0 && o.decay <= 1.0) {
        bail!("--decay must be in (0, 1] (got {})", o.decay);
    }
    if o.head_vocab == Some(0) {
        bail!("--head-vocab must be at least 1 (omit it for the whole vocabulary)");
    }
    Ok(())
}

/// Trains the heads, writes them to `o.out`, and measures them on `o.val`.
pub fn train_medusa(o: &MedusaOptions, progress: &mut dyn MedusaProgress) -> Result<MedusaReport> {
    check(o)?;
    let file = open_model(&o.model)?;
    let model = Model::new(&file)?;
    let (dim, k) = (model.config.dim, o.heads);
    let mut report = MedusaReport::default();
    let mut data = read_data(&file, &o.data)?;
    data.truncate(o.tokens);
    let bos = file.tokenizer.bos_id();
    let mut ex = Examples::new(dim, k);

    let t0 = Instant::now();
    let mut distilled = Vec::new();
    if let Some(p) = &o.self_distill_prompts {
        distilled = self_distill(&model, &file, p, o.self_distill_tokens, o.chat)?;
        progress.note(&format!(
            "self-distillation: {} prompts, {} tokens generated in {:.1} s",
            distilled.len(),
            distilled.iter().map(|(s, f)| s.len() - f - 1).sum::<usize>(),
            t0.elapsed().as_secs_f64()
        ));
    }
    report.generate_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for (seq, from) in &distilled {
        ex.add(&model, seq, *from)?;
    }
    report.self_distilled_positions = ex.len();
    for w in windows(&data, o.ctx, bos) {
        ex.add(&model, &w, 0)?;
    }
    if ex.is_empty() {
        bail!("no training positions: the data holds fewer than {} tokens", k + 2);
    }
    report.hidden_seconds = t1.elapsed().as_secs_f64();
    report.positions = ex.len();
    progress.note(&format!(
        "hidden states: {} positions ({} self-distilled) in {:.1} s",
        ex.len(),
        report.self_distilled_positions,
        report.hidden_seconds
    ));

    // Training.
    let dev = Device::Cpu;
    let e = classifier(&model, o.head_vocab)?;
    let h_all = Tensor::from_vec(ex.h.clone(), (ex.len(), dim), &dev)?;
    let vars = HeadVars::zeros(dim, k)?;
    let all: Vec<Var> = vars.w.iter().chain(&vars.b).cloned().collect();
    let mut opt = AdamW::new(
        all,
        ParamsAdamW {
            lr: o.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let per_epoch = ex.len().div_ceil(o.batch);
    let steps = per_epoch * o.epochs;
    let mut recent: Vec<Vec<f32>> = Vec::new();
    let t2 = Instant::now();
    let mut step = 0;
    for epoch in 0..o.epochs {
        let order = shuffle(ex.len(), o.seed.wrapping_add(epoch as u64));
        for idx in order.chunks(o.batch) {
            opt.set_learning_rate(lr_at(o.lr, step, steps));
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &dev)?;
            let h = h_all.index_select(&ids, 0)?;
            let mut surrogate: Option<Tensor> = None;
            let mut ces = Vec::with_capacity(k);
            for i in 0..k {
                let u = vars.residual(i, &h)?;
                let labels: Vec<u32> = idx.iter().map(|&r| ex.labels[i][r]).collect();
                let (ce, du) = lm_head_ce(&u.detach(), &e, &labels)?;
                ces.push(ce);
                let wgt = o.decay.powi(i as i32 + 1);
                let s = ((&u * (du * wgt)?)?).sum_all()?;
                surrogate = Some(match surrogate {
                    None => s,
                    Some(t) => (t + s)?,
                });
            }
            let grads = surrogate.expect("at least one head").backward()?;
            opt.step(&grads)?;
            step += 1;
            recent.push(ces.clone());
            let rate = (step * o.batch) as f64 / t2.elapsed().as_secs_f64().max(1e-9);
            progress.step(step, steps, &ces, rate);
        }
    }
    report.steps = step;
    report.train_seconds = t2.elapsed().as_secs_f64();
    let tail = &recent[recent.len() - (recent.len() / 10).max(1)..];
    report.final_ce = (0..k)
        .map(|i| tail.iter().map(|c| c[i]).sum::<f32>() / tail.len() as f32)
        .collect();

    let heads = vars.to_heads()?.with_vocab(o.head_vocab)?;
    heads
        .to_gguf(&BaseIdentity::of(&file))
        .write(&o.out)
        .with_context(|| format!("cannot write {}", o.out.display()))?;

    if let Some(v) = &o.val {
        let written = MedusaHeads::load(&o.out, &file)?;
        evaluate(&model, &file, &written, v, o.val_tokens, o.ctx, &mut report)?;
    }
    Ok(report)
}

/// Per-head top-1 accuracy on the first `tokens` tokens of `val` (with bushu's inference path).
pub fn evaluate(
    model: &Model,
    file: &ModelFile,
    heads: &MedusaHeads,
    val: &Path,
    tokens: usize,
    ctx: usize,
    report: &mut MedusaReport,
) -> Result<()> {
    let mut data = read_data(file, &[val.to_path_buf()])?;
    data.truncate(tokens);
    let k = heads.len();
    let untrained = MedusaHeads::zeros(heads.dim, k)?;
    let mut ex = Examples::new(heads.dim, k);
    for w in windows(&data, ctx, file.tokenizer.bos_id()) {
        ex.add(model, &w, 0)?;
    }
    let vocab = model.config.vocab_size;
    let rows = heads.rows_on(model);
    let mut inside = vec![0usize; k];
    let (mut base, mut hits, mut hits0) = (0usize, vec![0usize; k], vec![0usize; k]);
    let (mut out, mut out0) = (Vec::new(), Vec::new());
    for r in 0..ex.len() {
        let h = &ex.h[r * heads.dim..(r + 1) * heads.dim];
        heads.logits(model, h, k, &mut out);
        untrained.logits(model, h, k, &mut out0);
        // With W = 0 every head's row is the LM head's: its first row is the base prediction.
        base += usize::from(argmax(&out0[..vocab]) == ex.next[r]);
        for i in 0..k {
            hits[i] += usize::from(argmax(&out[i * vocab..(i + 1) * vocab]) == ex.labels[i][r]);
            hits0[i] += usize::from(argmax(&out0[i * vocab..(i + 1) * vocab]) == ex.labels[i][r]);
            inside[i] += usize::from((ex.labels[i][r] as usize) < rows);
        }
    }
    let n = ex.len().max(1) as f64;
    report.val_positions = ex.len();
    report.val_base = base as f64 / n;
    report.val_heads = hits.iter().map(|&x| x as f64 / n).collect();
    report.val_untrained = hits0.iter().map(|&x| x as f64 / n).collect();
    report.val_in_vocab = inside.iter().map(|&x| x as f64 / n).collect();
    Ok(())
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite differences of [`lm_head_ce`]'s loss against its hand-written gradient.
    #[test]
    fn lm_head_ce_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (n, dim, vocab) = (3, 4, 7);
        let mut rng = bushu::sampling::rng::Rng::new(7);
        let mut r = |m: usize| -> Vec<f32> { (0..m).map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5).collect() };
        let u: Vec<f32> = r(n * dim).into_iter().map(|x| x * 2.0).collect();
        let e = Tensor::from_vec(
            r(vocab * dim).into_iter().map(|x| x * 3.0).collect::<Vec<_>>(),
            (vocab, dim),
            &dev,
        )
        .unwrap();
        let labels = [1u32, 6, 0];
        let ut = Tensor::from_vec(u.clone(), (n, dim), &dev).unwrap();
        let (loss, du) = lm_head_ce(&ut, &e, &labels).unwrap();
        let du: Vec<f32> = du.flatten_all().unwrap().to_vec1().unwrap();
        // The loss by hand in f64.
        let ev: Vec<f32> = e.flatten_all().unwrap().to_vec1().unwrap();
        let f = |u: &[f32]| -> f64 {
            let mut l = 0.0;
            for (row, &y) in u.chunks_exact(dim).zip(&labels) {
                let z: Vec<f64> = (0..vocab)
                    .map(|v| (0..dim).map(|d| row[d] as f64 * ev[v * dim + d] as f64).sum())
                    .collect();
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                l += lse - z[y as usize];
            }
            l / n as f64
        };
        assert!((loss as f64 - f(&u)).abs() < 1e-5, "{loss} vs {}", f(&u));
        let eps = 1e-3f32;
        for i in 0..n * dim {
            let (mut a, mut b) = (u.clone(), u.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (f(&a) - f(&b)) / (2.0 * eps as f64);
            assert!((fd - du[i] as f64).abs() < 1e-3, "d/du[{i}]: {fd} vs {}", du[i]);
        }
    }

    /// The residual block's gradient through candle's autograd with the surrogate loss equals finite
    /// differences of the whole head loss with respect to W and b.
    #[test]
    fn surrogate_gives_the_heads_gradient() {
        let dev = Device::Cpu;
        let (n, dim, vocab) = (2, 3, 5);
        let mut rng = bushu::sampling::rng::Rng::new(3);
        let mut r = |m: usize| -> Vec<f32> { (0..m).map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5).collect() };
        let h = Tensor::from_vec(r(n * dim), (n, dim), &dev).unwrap();
        let e = Tensor::from_vec(
            r(vocab * dim).into_iter().map(|x| x * 4.0).collect::<Vec<_>>(),
            (vocab, dim),
            &dev,
        )
        .unwrap();
        let w0 = r(dim * dim);
        let b0 = r(dim);
        let labels = [4u32, 2];
        let vars = HeadVars {
            w: vec![Var::from_tensor(&Tensor::from_vec(w0.clone(), (dim, dim), &dev).unwrap()).unwrap()],
            b: vec![Var::from_tensor(&Tensor::from_vec(b0.clone(), dim, &dev).unwrap()).unwrap()],
        };
        let u = vars.residual(0, &h).unwrap();
        let (_, du) = lm_head_ce(&u.detach(), &e, &labels).unwrap();
        let grads = (&u * du).unwrap().sum_all().unwrap().backward().unwrap();
        let gw: Vec<f32> = grads
            .get(vars.w[0].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gb: Vec<f32> = grads.get(vars.b[0].as_tensor()).unwrap().to_vec1().unwrap();
        let loss = |w: &[f32], b: &[f32]| -> f64 {
            let v = HeadVars {
                w: vec![Var::from_tensor(&Tensor::from_vec(w.to_vec(), (dim, dim), &dev).unwrap()).unwrap()],
                b: vec![Var::from_tensor(&Tensor::from_vec(b.to_vec(), dim, &dev).unwrap()).unwrap()],
            };
            lm_head_ce(&v.residual(0, &h).unwrap(), &e, &labels).unwrap().0 as f64
        };
        let eps = 1e-2f32;
        for i in 0..dim * dim {
            let (mut a, mut b) = (w0.clone(), w0.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (loss(&a, &b0) - loss(&b, &b0)) / (2.0 * eps as f64);
            assert!((fd - gw[i] as f64).abs() < 2e-3, "dW[{i}]: {fd} vs {}", gw[i]);
        }
        for i in 0..dim {
            let (mut a, mut b) = (b0.clone(), b0.clone());
            a[i] += eps;
            b[i] -= eps;
            let fd = (loss(&w0, &a) - loss(&w0, &b)) / (2.0 * eps as f64);
            assert!((fd - gb[i] as f64).abs() < 2e-3, "db[{i}]: {fd} vs {}", gb[i]);
        }
    }

    /// With the classifier's first rows only (`--head-vocab`), a row whose label is past them is left
    /// out: loss and gradient are those of the other rows alone, and its own gradient is zero.
    #[test]
    fn lm_head_ce_leaves_out_labels_past_the_rows() {
        let dev = Device::Cpu;
        let (dim, rows) = (3, 4);
        let mut rng = bushu::sampling::rng::Rng::new(11);
        let mut r = |m: usize| -> Vec<f32> { (0..m).map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5).collect() };
        let u = r(3 * dim);
        let e = Tensor::from_vec(r(rows * dim), (rows, dim), &dev).unwrap();
        let ut = Tensor::from_vec(u.clone(), (3, dim), &dev).unwrap();
        // Row 1's label (7) is past the 4 rows.
        let (loss, du) = lm_head_ce(&ut, &e, &[2, 7, 0]).unwrap();
        let kept = Tensor::from_vec([&u[..dim], &u[2 * dim..]].concat(), (2, dim), &dev).unwrap();
        let (want_loss, want_du) = lm_head_ce(&kept, &e, &[2, 0]).unwrap();
        assert!((loss - want_loss).abs() < 1e-6, "{loss} vs {want_loss}");
        let du: Vec<f32> = du.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want_du.flatten_all().unwrap().to_vec1().unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&du[..dim], &want[..dim]), "{du:?} vs {want:?}");
        assert!(du[dim..2 * dim].iter().all(|&g| g == 0.0), "{du:?}");
        assert!(close(&du[2 * dim..], &want[dim..]), "{du:?} vs {want:?}");
        // Nothing inside: zero loss, zero gradient.
        let (l, g) = lm_head_ce(&ut, &e, &[9, 9, 9]).unwrap();
        assert_eq!(l, 0.0);
        assert!(g
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&x| x == 0.0));
    }

    #[test]
    fn windows_start_with_bos() {
        let w = windows(&[5, 6, 7, 8, 9], 3, Some(1));
        assert_eq!(w, vec![vec![1, 5, 6], vec![1, 7, 8], vec![1, 9]]);
        assert_eq!(windows(&[5, 6, 7], 2, None), vec![vec![5, 6], vec![7]]);
        let s = shuffle(10, 1);
        let mut t = s.clone();
        t.sort();
        assert_eq!(t, (0..10).collect::<Vec<_>>());
        assert_eq!(s, shuffle(10, 1));
    }
}
