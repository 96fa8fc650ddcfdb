//! `distill`: trains a student from a teacher GGUF on text files, with hard labels, logit KD and
//! feature KD mixed by `alpha` ([`crate::loss`]), AdamW, and writes the student as GGUF.
//!
//! The run: read the teacher (bushu) → tokenize the data with the teacher's tokenizer → draw the
//! training windows from the seed → run the teacher once over them (or reuse the cache on disk) →
//! `steps` AdamW steps of `batch` windows each (every window seen once) → write the student.
//! Everything random (initialisation, windows) comes from `seed`, and candle's CPU ops are
//! deterministic, so a seed gives the same student bit for bit.

use crate::export::{write_student, ExportType};
use crate::loss::{feature_mse, hard_ce, kd_topk};
use crate::optim::{AdamW, ParamsAdamW};
use crate::selfgen::{self, read_lines};
use crate::student::{normal, Student, StudentConfig};
use crate::teacher::{cache_key, TeacherCache, Windows};
use anyhow::{bail, Context, Result};
use bushu::formats::gguf::Gguf;
use bushu::model::loader::load_gguf;
use bushu::model::{Model, ModelFile};
use bushu::tokenizer::VocabDifference;
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the student's weights start.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Random (N(0, 0.02²) matrices, unit norms).
    Scratch,
    /// The teacher's embeddings, LM head, final norm and evenly spaced layers (needs the teacher's width).
    Teacher,
    /// An existing Llama GGUF model, whose shape is the student's (continue training it).
    File(PathBuf),
}

/// Everything `bushu distill` is told.
#[derive(Clone, Debug)]
pub struct DistillOptions {
    pub teacher: PathBuf,
    pub data: Vec<PathBuf>,
    /// Training tokens (windows x ctx; rounded up to whole batches).
    pub tokens: usize,
    pub student_layers: usize,
    /// Student shape; `None`: the teacher's (heads: dim / 32 when the width differs from the teacher's).
    pub student_dim: Option<usize>,
    pub student_heads: Option<usize>,
    pub student_kv_heads: Option<usize>,
    pub student_ffn: Option<usize>,
    pub init: Init,
    pub ctx: usize,
    pub batch: usize,
    pub lr: f64,
    /// Weight of the distillation losses against the hard-label loss (0: hard labels only).
    pub alpha: f64,
    pub temperature: f64,
    /// Teacher logits kept per position.
    pub top_k: usize,
    /// (student layer, teacher layer) pairs of feature KD, 0-based.
    pub feature_layers: Vec<(usize, usize)>,
    pub feature_weight: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub export_type: ExportType,
    /// Teacher cache file; `None`: `<out>.teacher-cache`.
    pub cache: Option<PathBuf>,
    /// Write a checkpoint (`<out>.ckpt`) every this many steps (0: never).
    pub checkpoint_every: usize,
    /// Stop after this many steps of the whole run, as an interrupted run would (the checkpoint is
    /// written; the student is not): for tests of resuming.
    pub stop_after: Option<usize>,
    /// Self-distillation ([`crate::selfgen`]): plain text openings the teacher continues, and
    /// instructions it answers in its chat template; its outputs join the training data.
    pub generate_prompts: Vec<PathBuf>,
    pub generate_chat: Vec<PathBuf>,
    /// Tokens generated per prompt at most.
    pub generate_tokens: usize,
    /// Sequences generated at once.
    pub generate_batch: usize,
    /// Cache of the generated sequences; `None`: `<out>.generated`.
    pub generate_cache: Option<PathBuf>,
    /// Keep the teacher's token embeddings and LM head (not trained; `--init teacher` or a file).
    pub freeze_embeddings: bool,
}

impl DistillOptions {
    /// Defaults for everything but the teacher, data and output.
    pub fn new(teacher: PathBuf, data: Vec<PathBuf>, out: PathBuf) -> DistillOptions {
        DistillOptions {
            teacher,
            data,
            tokens: 100_000,
            student_layers: 2,
            student_dim: None,
            student_heads: None,
            student_kv_heads: None,
            student_ffn: None,
            init: Init::Scratch,
            ctx: 512,
            batch: 8,
            lr: 2e-3,
            alpha: 0.5,
            temperature: 2.0,
            top_k: 32,
            feature_layers: Vec::new(),
            feature_weight: 1.0,
            seed: 0,
            out,
            export_type: ExportType::F32,
            cache: None,
            checkpoint_every: 50,
            stop_after: None,
            generate_prompts: Vec::new(),
            generate_chat: Vec::new(),
            generate_tokens: 128,
            generate_batch: 16,
            generate_cache: None,
            freeze_embeddings: false,
        }
    }
}

/// One step's numbers.
#[derive(Clone, Debug, Default)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub ce: f32,
    pub kd: f32,
    pub feature: f32,
    pub lr: f64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct DistillReport {
    pub steps: usize,
    pub tokens: usize,
    pub parameters: usize,
    pub teacher_seconds: f64,
    pub teacher_cached: bool,
    pub train_seconds: f64,
    /// The steps this invocation ran (after `resumed_at`, if it resumed).
    pub log: Vec<StepLog>,
    /// The step a checkpoint let this run start at.
    pub resumed_at: Option<usize>,
    /// Whether the student was written (not stopped by `stop_after`).
    pub finished: bool,
    /// Tokens of the training stream: the data files' and the generated sequences'.
    pub data_tokens: usize,
    /// Self-distillation: sequences generated, tokens the teacher generated (prompts excluded), the
    /// time it took, and whether they came from the cache.
    pub generated_sequences: usize,
    pub generated_tokens: usize,
    pub generate_seconds: f64,
    pub generated_cached: bool,
}

/// Reports progress: the teacher pass, then each step.
pub trait Progress {
    fn teacher(&mut self, done: usize, total: usize);
    fn step(&mut self, log: &StepLog, steps: usize, tokens_per_s: f64);
}

/// No progress output (tests).
pub struct Quiet;
impl Progress for Quiet {
    fn teacher(&mut self, _: usize, _: usize) {}
    fn step(&mut self, _: &StepLog, _: usize, _: f64) {}
}

/// Opens `path`, `what` of the run, as a GGUF model; one clear error when it is not a GGUF file.
fn open_gguf(path: &Path, what: &str) -> Result<ModelFile> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if n < 4 || &magic != b"GGUF" {
        bail!(
            "{what} {} is not a GGUF file (distill reads weights and tokenizer from GGUF)",
            path.display()
        );
    }
    load_gguf(path).with_context(|| format!("{what} {}", path.display()))
}

/// Opens the teacher: the model, and its GGUF metadata (the tokenizer the student's file copies).
pub fn open_teacher(path: &Path) -> Result<(ModelFile, Gguf)> {
    let file = open_gguf(path, "the teacher")?;
    let gguf = Gguf::open(path)?;
    Ok((file, gguf))
}

/// The training text, tokenized with `teacher`'s tokenizer, files one after the other.
pub fn read_data(teacher: &ModelFile, files: &[PathBuf]) -> Result<Vec<u32>> {
    if files.is_empty() {
        bail!("no data files given (--data)");
    }
    let mut tokens = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read data file {}", f.display()))?;
        tokens.extend(teacher.tokenizer.encode(&text, false)?);
    }
    if tokens.is_empty() {
        bail!("the data files hold no text");
    }
    Ok(tokens)
}

/// The student's shape from the options and the teacher's.
pub fn student_config(o: &DistillOptions, teacher: &ModelFile) -> Result<StudentConfig> {
    let t = &teacher.config;
    let dim = o.student_dim.unwrap_or(t.dim);
    let same = dim == t.dim;
    let heads = o
        .student_heads
        .unwrap_or(if same { t.n_heads } else { (dim / 32).max(1) });
    let c = StudentConfig {
        vocab: t.vocab_size,
        dim,
        layers: o.student_layers,
        heads,
        kv_heads: o.student_kv_heads.unwrap_or(if same { t.n_kv_heads } else { heads }),
        ffn: o.student_ffn.unwrap_or(if same { t.ffn_dim } else { 3 * dim }),
        ctx: o.ctx,
        rope_theta: t.rope_theta,
        rms_eps: t.rms_eps,
    };
    c.validate()?;
    Ok(c)
}

/// The student at its starting point.
pub fn init_student(o: &DistillOptions, teacher: &ModelFile) -> Result<Student> {
    match &o.init {
        Init::Scratch => Student::random(student_config(o, teacher)?, o.seed),
        Init::Teacher => {
            let c = student_config(o, teacher)?;
            let n = teacher.config.n_layers;
            if c.layers > n {
                bail!(
                    "a student of {} layers cannot take them from a teacher of {n}",
                    c.layers
                );
            }
            // Evenly spaced, first and last included.
            let layers: Vec<usize> = match c.layers {
                1 => vec![n - 1],
                k => (0..k).map(|i| i * (n - 1) / (k - 1)).collect(),
            };
            Student::from_teacher(c, teacher, &layers)
        }
        Init::File(p) => {
            let f = open_gguf(p, "the student to start from")?;
            match teacher.tokenizer.vocab_difference(&f.tokenizer) {
                None => {}
                Some(VocabDifference::Size { ours, theirs }) => bail!(
                    "the student {} has a vocabulary of {theirs} tokens, the teacher {ours}: distillation needs one shared vocabulary",
                    p.display()
                ),
                Some(VocabDifference::Token { id, ours, theirs }) => bail!(
                    "the student {}'s tokenizer differs from the teacher's (token {id}: {theirs:?} vs {ours:?}): distillation needs one shared vocabulary",
                    p.display()
                ),
            }
            let fc = &f.config;
            if fc.arch != "llama" {
                bail!("--init {}: a {} model; students are Llama models", p.display(), fc.arch);
            }
            let c = StudentConfig {
                vocab: fc.vocab_size,
                dim: fc.dim,
                layers: fc.n_layers,
                heads: fc.n_heads,
                kv_heads: fc.n_kv_heads,
                ffn: fc.ffn_dim,
                ctx: o.ctx,
                rope_theta: fc.rope_theta,
                rms_eps: fc.rms_eps,
            };
            let layers: Vec<usize> = (0..c.layers).collect();
            Student::from_teacher(c, &f, &layers)
        }
    }
}

/// Learning rate at `step` of `steps`: linear warm-up over the first 10 steps (at most a tenth of the
/// run), then cosine from `lr` down to `lr / 10` (the Shakespeare models' schedule, by step).
pub fn lr_at(lr: f64, step: usize, steps: usize) -> f64 {
    let warm = (steps / 10).clamp(1, 10);
    let frac = step as f64 / steps.max(1) as f64;
    lr * ((step + 1) as f64 / warm as f64).min(1.0) * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()))
}

/// Scales `grads` so that their global L2 norm is at most `max`; returns the norm before.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if norm > max {
        let s = max / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * s)?);
            }
        }
    }
    Ok(norm)
}

/// The trainable state: the student and the feature maps Φ (student width → teacher width, one per
/// feature pair).
pub struct Trainee {
    pub student: Student,
    pub phi: Vec<Var>,
}

/// The batch of windows `first..first + n` as candle tensors: inputs `[n, ctx]`, next-token targets
/// `[n * (ctx - 1)]`.
fn batch_tensors(windows: &Windows, first: usize, n: usize) -> Result<(Tensor, Tensor)> {
    let ctx = windows.ctx;
    let toks = windows.tokens[first * ctx..(first + n) * ctx].to_vec();
    let targets: Vec<u32> = toks.chunks_exact(ctx).flat_map(|w| w[1..].iter().copied()).collect();
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(toks, (n, ctx), &dev)?,
        Tensor::from_vec(targets, n * (ctx - 1), &dev)?,
    ))
}

/// The loss of one batch and its parts.
pub fn batch_loss(
    t: &Trainee,
    o: &DistillOptions,
    windows: &Windows,
    cache: Option<&TeacherCache>,
    first: usize,
    n: usize,
) -> Result<(Tensor, StepLog)> {
    let (inputs, targets) = batch_tensors(windows, first, n)?;
    let out = t.student.forward(&inputs)?;
    let (ctx, vocab) = (windows.ctx, t.student.config.vocab);
    let logits = out.logits.narrow(1, 0, ctx - 1)?.reshape((n * (ctx - 1), vocab))?;
    let (head, feature, mut log) = losses(t, o, cache, first, n, ctx, &logits, &targets, &out.hidden)?;
    let loss = match feature {
        Some(f) => (head + f)?,
        None => head,
    };
    log.loss = loss.to_scalar::<f32>()?;
    Ok((loss, log))
}

/// The gradients of one batch's loss ([`batch_loss`]) and its parts. With `--freeze-embeddings` the
/// LM head gets no gradient, but candle's matmul backward would compute it anyway (a product as large
/// as the classifier's forward pass): the loss's gradient with respect to the logits `z = h Wᵀ` is
/// taken by autograd on a detached copy, carried back to the final-norm hidden states by hand
/// (`∂L/∂h = ∂L/∂z · W`), and from there by autograd through the surrogate `Σ h · ∂L/∂h` (plus the
/// feature loss, which does not go through the classifier). A test holds these gradients equal to
/// plain autograd's.
pub fn batch_grads(
    t: &Trainee,
    o: &DistillOptions,
    windows: &Windows,
    cache: Option<&TeacherCache>,
    first: usize,
    n: usize,
) -> Result<(GradStore, StepLog)> {
    if !t.student.frozen_embeddings {
        let (loss, log) = batch_loss(t, o, windows, cache, first, n)?;
        return Ok((loss.backward()?, log));
    }
    let (inputs, targets) = batch_tensors(windows, first, n)?;
    let (h, hidden) = t.student.forward_normed(&inputs)?;
    let (ctx, dim) = (windows.ctx, t.student.config.dim);
    let h = h
        .reshape((n, ctx, dim))?
        .narrow(1, 0, ctx - 1)?
        .reshape((n * (ctx - 1), dim))?;
    let w = t.student.param("output.weight")?.detach();
    let z = Var::from_tensor(&h.detach().matmul(&w.t()?)?)?;
    let (head, feature, mut log) = losses(t, o, cache, first, n, ctx, z.as_tensor(), &targets, &hidden)?;
    let dz = head
        .backward()?
        .remove(z.as_tensor())
        .context("no gradient for the logits")?;
    let dh = dz.matmul(&w)?.detach();
    let mut surrogate = (&h * &dh)?.sum_all()?;
    let mut loss = head.to_scalar::<f32>()?;
    if let Some(f) = feature {
        loss += f.to_scalar::<f32>()?;
        surrogate = (surrogate + f)?;
    }
    log.loss = loss;
    Ok((surrogate.backward()?, log))
}

/// The loss's parts from the logits of the predicting rows (`[rows, vocab]`) and the student's
/// residual streams: the classifier's part `(1 − α)·CE + α·KD` (CE alone when α = 0) and the feature
/// part `α·β·Σ F` (when there are feature pairs), and the step's log (`loss` not set).
#[allow(clippy::too_many_arguments)]
fn losses(
    t: &Trainee,
    o: &DistillOptions,
    cache: Option<&TeacherCache>,
    first: usize,
    n: usize,
    ctx: usize,
    logits: &Tensor,
    targets: &Tensor,
    hidden: &[Tensor],
) -> Result<(Tensor, Option<Tensor>, StepLog)> {
    let rows = n * (ctx - 1);
    let ce = hard_ce(logits, targets)?;
    let mut log = StepLog {
        ce: ce.to_scalar::<f32>()?,
        ..StepLog::default()
    };
    if o.alpha == 0.0 {
        return Ok((ce, None, log));
    }
    let c = cache.context("logit KD without the teacher's cache")?;
    let (k, r0) = (c.k, first * (ctx - 1));
    let dev = Device::Cpu;
    let idx = Tensor::from_slice(&c.top_idx[r0 * k..(r0 + rows) * k], (rows, k), &dev)?;
    let val = Tensor::from_slice(&c.top_val[r0 * k..(r0 + rows) * k], (rows, k), &dev)?;
    let lse = Tensor::from_slice(&c.lse[r0..r0 + rows], (rows, 1), &dev)?;
    let kd = kd_topk(logits, &idx, &val, &lse, o.temperature)?;
    log.kd = kd.to_scalar::<f32>()?;
    let head = ((ce * (1.0 - o.alpha))? + (kd * o.alpha)?)?;
    let mut feature: Option<Tensor> = None;
    for (i, &(sl, _)) in o.feature_layers.iter().enumerate() {
        let dt = c.feature_dim;
        let hs = hidden[sl]
            .narrow(1, 0, ctx - 1)?
            .reshape((rows, t.student.config.dim))?;
        let proj = hs.matmul(&t.phi[i].as_tensor().t()?)?;
        let f: Vec<f32> = c.features[i][r0 * dt..(r0 + rows) * dt]
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let ht = Tensor::from_vec(f, (rows, dt), &dev)?;
        let fl = feature_mse(&proj, &ht)?;
        log.feature += fl.to_scalar::<f32>()?;
        let term = (fl * (o.alpha * o.feature_weight))?;
        feature = Some(match feature {
            Some(f) => (f + term)?,
            None => term,
        });
    }
    Ok((head, feature, log))
}

/// Checks the options that do not need the files.
pub fn check_options(o: &DistillOptions) -> Result<()> {
    if !(0.0..=1.0).contains(&o.alpha) {
        bail!("--alpha must be in [0, 1], got {}", o.alpha);
    }
    if o.temperature <= 0.0 || !o.temperature.is_finite() {
        bail!("--kd-temperature must be positive, got {}", o.temperature);
    }
    if o.batch == 0 || o.top_k == 0 {
        bail!("--batch and --top-k must be at least 1");
    }
    if o.tokens == 0 && !(o.generate_prompts.is_empty() && o.generate_chat.is_empty()) {
        bail!("--tokens 0 writes the student as initialised, without training: --generate-prompts/--generate-chat would not be used");
    }
    if o.generate_tokens == 0 || o.generate_batch == 0 {
        bail!("--generate-tokens and --generate-batch must be at least 1");
    }
    if o.freeze_embeddings && o.init == Init::Scratch {
        bail!("--freeze-embeddings keeps the embeddings and LM head the student starts with: it needs --init teacher or a GGUF file");
    }
    if o.ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    if !o.feature_layers.is_empty() && o.alpha == 0.0 {
        bail!("--feature-layers needs --alpha above 0 (the distillation losses' weight)");
    }
    Ok(())
}

/// Runs a distillation and writes the student to `o.out`.
pub fn distill(o: &DistillOptions, progress: &mut dyn Progress) -> Result<DistillReport> {
    check_options(o)?;
    let (tfile, tgguf) = open_teacher(&o.teacher)?;
    let tcfg = tfile.config.clone();
    let mut data = read_data(&tfile, &o.data)?;
    let mut gen = GenStats::default();
    if o.tokens > 0 && !(o.generate_prompts.is_empty() && o.generate_chat.is_empty()) {
        let t = Instant::now();
        let plain = read_lines(&o.generate_prompts, "--generate-prompts")?;
        let chat = read_lines(&o.generate_chat, "--generate-chat")?;
        let p = selfgen::prompts(&tfile, &plain, &chat)?;
        let key = selfgen::gen_key(&o.teacher, &p, o.generate_tokens)?;
        let path = o
            .generate_cache
            .clone()
            .unwrap_or_else(|| suffixed(&o.out, ".generated"));
        let seqs = match selfgen::load(&path, key)? {
            Some(s) => {
                gen.cached = true;
                s
            }
            None => {
                let s = selfgen::generate_all(
                    Model::new(&tfile)?,
                    &tfile.eos_ids,
                    &p,
                    o.generate_tokens,
                    o.generate_batch,
                )?;
                selfgen::save(&path, key, &s)?;
                s
            }
        };
        gen.sequences = seqs.len();
        gen.tokens = seqs.iter().zip(&p.prompts).map(|(s, q)| s.len() - q.len()).sum();
        gen.seconds = t.elapsed().as_secs_f64();
        for s in seqs {
            data.extend(s);
        }
    }
    let data_tokens = data.len();
    if data.len() < o.ctx {
        bail!(
            "the data has {} tokens, fewer than one window of --ctx {}",
            data.len(),
            o.ctx
        );
    }
    let mut trainee = Trainee {
        student: {
            let mut s = init_student(o, &tfile)?;
            s.frozen_embeddings = o.freeze_embeddings;
            s
        },
        phi: Vec::new(),
    };
    let sc = trainee.student.config.clone();
    if sc.vocab != tcfg.vocab_size {
        bail!(
            "the student's vocabulary ({}) differs from the teacher's ({}): distillation needs one shared vocabulary",
            sc.vocab,
            tcfg.vocab_size
        );
    }
    let mut rng = bushu::sampling::rng::Rng::new(o.seed.wrapping_add(1));
    for &(s, t) in &o.feature_layers {
        if s >= sc.layers || t >= tcfg.n_layers {
            bail!(
                "--feature-layers {s}:{t}: the student has layers 0..{} and the teacher 0..{}",
                sc.layers - 1,
                tcfg.n_layers - 1
            );
        }
        let w = normal(&mut rng, tcfg.dim * sc.dim, 0.02);
        trainee.phi.push(Var::from_tensor(&Tensor::from_vec(
            w,
            (tcfg.dim, sc.dim),
            &Device::Cpu,
        )?)?);
    }
    // The file declares the teacher's context length when it is longer than the training windows:
    // RoPE extends to any position, and a draft must follow its target that far.
    let export_ctx = o.ctx.max(tcfg.max_ctx);
    if o.tokens == 0 {
        // The student as initialised (e.g. the teacher's layers, untrained): the undistilled baseline.
        trainee.student.config.ctx = export_ctx;
        write_student(&trainee.student, &tgguf, &out_name(o), o.export_type, &o.out)?;
        return Ok(DistillReport {
            steps: 0,
            tokens: 0,
            parameters: sc.parameter_count(),
            teacher_seconds: 0.0,
            teacher_cached: false,
            train_seconds: 0.0,
            log: Vec::new(),
            resumed_at: None,
            finished: true,
            data_tokens,
            generated_sequences: 0,
            generated_tokens: 0,
            generate_seconds: 0.0,
            generated_cached: false,
        });
    }
    let steps = o.tokens.div_ceil(o.batch * o.ctx);
    let windows = Windows::sample(&data, o.ctx, steps * o.batch, tfile.tokenizer.bos_id(), o.seed)?;

    // The teacher, once per token (or not at all when the cache has it).
    let t0 = Instant::now();
    let mut cached = false;
    let cache = if o.alpha > 0.0 {
        let tlayers: Vec<usize> = o.feature_layers.iter().map(|&(_, t)| t).collect();
        let path = o.cache.clone().unwrap_or_else(|| suffixed(&o.out, ".teacher-cache"));
        let key = cache_key(&o.teacher, &windows, o.top_k, o.temperature)?;
        match TeacherCache::load(&path, key, &tlayers)? {
            Some(c) => {
                cached = true;
                Some(c)
            }
            None => {
                let model = Model::new(&tfile)?;
                let c = TeacherCache::build(&model, &windows, o.top_k, o.temperature, &tlayers, |d, n| {
                    progress.teacher(d, n)
                })?;
                c.save(&path, key)?;
                Some(c)
            }
        }
    } else {
        None
    };
    let teacher_seconds = t0.elapsed().as_secs_f64();

    let mut vars = trainee.student.vars();
    vars.extend(trainee.phi.iter().cloned());
    let params = ParamsAdamW {
        lr: o.lr,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vars.clone(), params)?;
    let ckpt = suffixed(&o.out, ".ckpt");
    let fingerprint = run_fingerprint(o, &sc, &windows)?;
    let resumed_at = match crate::checkpoint::restore(&ckpt, fingerprint, &mut opt)? {
        true => Some(opt.step),
        false => None,
    };
    let t1 = Instant::now();
    let mut log = Vec::with_capacity(steps);
    let first = opt.step;
    for step in first..steps {
        let lr = lr_at(o.lr, step, steps);
        opt.set_learning_rate(lr);
        let (mut grads, mut l) = batch_grads(&trainee, o, &windows, cache.as_ref(), step * o.batch, o.batch)?;
        if !l.loss.is_finite() {
            bail!("the loss is {} at step {step}: lower --lr", l.loss);
        }
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step(&grads)?;
        l.step = step + 1;
        l.lr = lr;
        let tps = ((step + 1 - first) * o.batch * o.ctx) as f64 / t1.elapsed().as_secs_f64().max(1e-9);
        progress.step(&l, steps, tps);
        log.push(l);
        let done = step + 1;
        let stop = o.stop_after == Some(done) && done < steps;
        if stop || (o.checkpoint_every > 0 && done.is_multiple_of(o.checkpoint_every) && done < steps) {
            crate::checkpoint::save(&ckpt, fingerprint, &opt)?;
        }
        if stop {
            return Ok(DistillReport {
                steps,
                tokens: steps * o.batch * o.ctx,
                parameters: sc.parameter_count(),
                teacher_seconds,
                teacher_cached: cached,
                train_seconds: t1.elapsed().as_secs_f64(),
                log,
                resumed_at,
                finished: false,
                data_tokens,
                generated_sequences: gen.sequences,
                generated_tokens: gen.tokens,
                generate_seconds: gen.seconds,
                generated_cached: gen.cached,
            });
        }
    }
    let train_seconds = t1.elapsed().as_secs_f64();
    trainee.student.config.ctx = export_ctx;
    write_student(&trainee.student, &tgguf, &out_name(o), o.export_type, &o.out)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(DistillReport {
        steps,
        tokens: steps * o.batch * o.ctx,
        parameters: sc.parameter_count(),
        teacher_seconds,
        teacher_cached: cached,
        train_seconds,
        log,
        resumed_at,
        finished: true,
        data_tokens,
        generated_sequences: gen.sequences,
        generated_tokens: gen.tokens,
        generate_seconds: gen.seconds,
        generated_cached: gen.cached,
    })
}

/// The student's name in its file's metadata: the output's file stem.
fn out_name(o: &DistillOptions) -> String {
    o.out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("student")
        .to_string()
}

/// What self-distillation added to the data.
#[derive(Default)]
struct GenStats {
    sequences: usize,
    tokens: usize,
    seconds: f64,
    cached: bool,
}

/// `path` with `suffix` appended to its file name.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

/// What decides a run's trajectory: the teacher file and windows (the cache key), the student's shape
/// and start, and the training options.
fn run_fingerprint(o: &DistillOptions, sc: &StudentConfig, windows: &Windows) -> Result<u64> {
    let key = cache_key(&o.teacher, windows, o.top_k, o.temperature)?;
    let what = format!(
        "{key} {sc:?} {:?} {} {} {} {} {:?} {} {} {} {} {}",
        o.init,
        o.lr,
        o.alpha,
        o.temperature,
        o.top_k,
        o.feature_layers,
        o.feature_weight,
        o.batch,
        o.ctx,
        o.seed,
        o.freeze_embeddings
    );
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in what.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    Ok(h)
}
