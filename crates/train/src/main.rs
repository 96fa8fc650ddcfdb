//! The `bushu-train` executable: `bushu-train distill ...`, `bushu-train train-medusa ...`,
//! `bushu-train train-routers ...` and `bushu-train train-exit-adapters ...` (also reached as `bushu
//! distill ...`, `bushu train-medusa ...`, `bushu train-routers ...` and `bushu train-exit-adapters ...`,
//! which run this program). Errors end in one line and a non-zero exit.

use anyhow::{bail, Result};
use bushu_train::distill::{distill, DistillOptions, Init};
use bushu_train::exit_adapters::{train_exit_adapters, AdapterOptions};
use bushu_train::export::ExportType;
use bushu_train::medusa::{train_medusa, MedusaOptions, StderrMedusa};
use bushu_train::medusa_eval::{eval_medusa, EvalOptions};
use bushu_train::progress::Console;
use bushu_train::routers::{train_routers, RouterOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bushu-train",
    about = "bushu's training path: knowledge distillation on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Distill a teacher GGUF into a smaller Llama student (hard labels, logit KD, feature KD), written as GGUF.
    Distill(DistillArgs),
    /// Train Medusa heads for a frozen model (head i predicts token t+i+1 from the last hidden state),
    /// written as a GGUF side file that `bushu run --medusa` loads.
    TrainMedusa(MedusaArgs),
    /// Measure Medusa heads: tree speculation, typical acceptance, semi- and non-autoregressive decoding.
    EvalMedusa(EvalMedusaArgs),
    /// Train mixture-of-depths routers for a frozen model (a linear scorer per layer decides which tokens
    /// run it), written as a GGUF side file that `bushu run --mod-routers` loads.
    TrainRouters(RoutersArgs),
    /// Train early-exit adapters (the tuned lens: an affine map of the residual stream per exit layer,
    /// read by the model's own final norm and classifier), written as a GGUF side file that
    /// `bushu run --early-exit-entropy H --exit-adapters` loads.
    TrainExitAdapters(ExitAdapterArgs),
}

#[derive(Args)]
struct ExitAdapterArgs {
    /// The model (GGUF) the adapters are for.
    #[arg(long)]
    model: PathBuf,
    /// Training text files (tokenized with the model's tokenizer).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// The exit points, as numbers of layers run (default: a quarter, half and three quarters).
    #[arg(long, value_name = "L1,L2,...")]
    exit_layers: Option<String>,
    /// Training tokens (the data's first ones, cut into windows of --ctx).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    ctx: usize,
    /// Positions per AdamW step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Passes over the positions.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output adapters file (GGUF).
    #[arg(long, default_value = "exit-adapters.gguf")]
    out: PathBuf,
}

#[derive(Args)]
struct RoutersArgs {
    /// The model (GGUF, Llama architecture) the routers are for.
    #[arg(long)]
    model: PathBuf,
    /// Training text files (tokenized with the model's tokenizer).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// The fraction of tokens that run each layer, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    capacity: f64,
    /// Training tokens (the data's first ones, cut into windows of --ctx).
    #[arg(long, default_value_t = 16_384)]
    tokens: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    ctx: usize,
    /// Windows per AdamW step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Passes over the windows.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine to a tenth).
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Seed of the initial weights and the window order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Windows of the training data whose router scores give the stored quantiles (the thresholds).
    #[arg(long, default_value_t = 16)]
    calib_windows: usize,
    /// Output routers file (GGUF).
    #[arg(long, default_value = "routers.gguf")]
    out: PathBuf,
}

#[derive(Args)]
struct EvalMedusaArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    heads: PathBuf,
    /// One prompt per line.
    #[arg(long)]
    prompts: PathBuf,
    /// Tokens generated per prompt.
    #[arg(short, long, default_value_t = 128)]
    n: usize,
    /// Tree node budgets to measure (comma-separated).
    #[arg(long, default_value = "4,8,16,32")]
    trees: String,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0.09)]
    epsilon: f32,
    #[arg(long, default_value_t = 0.3)]
    delta: f32,
    /// The heads' vocabularies to measure each tree with (comma-separated; 0: the heads file's own).
    #[arg(long, default_value = "0")]
    vocabs: String,
    /// Prompts are user messages, rendered with the model's chat template; generation stops at its
    /// end-of-turn tokens (else every run is N tokens long).
    #[arg(long)]
    chat: bool,
    /// Skip the sampling and semi-autoregressive measurements (greedy trees only).
    #[arg(long)]
    greedy_only: bool,
}

#[derive(Args)]
struct MedusaArgs {
    /// The model (GGUF) the heads are for.
    #[arg(long)]
    model: PathBuf,
    /// Number of heads (Medusa uses 3 to 5; at most 8).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Training text files (tokenized with the model's tokenizer; their next tokens are the labels).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Tokens of the data used (the first ones).
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Self-distillation (Medusa-2): one prompt per line; the model continues each greedily and the
    /// heads also learn its own text.
    #[arg(long)]
    self_distill_prompts: Option<PathBuf>,
    /// Tokens generated per self-distillation prompt.
    #[arg(long, default_value_t = 128)]
    self_distill_tokens: usize,
    /// Tokens per forward-pass window of the data.
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    /// Positions per AdamW step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Passes over the training positions.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine to a tenth).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Loss weight of head i (1-based): DECAY^i.
    #[arg(long, default_value_t = 0.8)]
    decay: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out text: report each head's top-1 accuracy on it.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Tokens of the held-out text used.
    #[arg(long, default_value_t = 4096)]
    val_tokens: usize,
    /// Output heads file (GGUF).
    #[arg(long, default_value = "heads.gguf")]
    out: PathBuf,
    /// The heads score only the first N token ids (FR-Spec: N / vocab of the classifier's cost, in
    /// training and at inference; stored in the file). Without it: the whole vocabulary.
    #[arg(long)]
    head_vocab: Option<usize>,
    /// Self-distillation prompts are user messages, rendered with the model's chat template.
    #[arg(long)]
    chat: bool,
}

#[derive(Args)]
struct DistillArgs {
    /// The teacher model (GGUF).
    #[arg(long)]
    teacher: PathBuf,
    /// Student layers.
    #[arg(long)]
    student_layers: usize,
    /// Student width (default: the teacher's).
    #[arg(long)]
    student_dim: Option<usize>,
    /// Student attention heads (default: the teacher's at its width, else dim / 32).
    #[arg(long)]
    student_heads: Option<usize>,
    /// Student key/value heads (default: the teacher's at its width, else as many as heads).
    #[arg(long)]
    student_kv_heads: Option<usize>,
    /// Student feed-forward width (default: the teacher's at its width, else 3 x dim).
    #[arg(long)]
    student_ffn: Option<usize>,
    /// Where the student starts: `scratch` (random), `teacher` (the teacher's embeddings, head and evenly
    /// spaced layers; needs its width) or a Llama GGUF file to continue from (its shape is the student's).
    #[arg(long, default_value = "scratch")]
    init: String,
    /// Training text files (tokenized with the teacher's tokenizer).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Training tokens (windows of --ctx; rounded up to whole batches). 0: write the student as
    /// initialised, untrained (with --init teacher: the layer-truncated teacher).
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine to a tenth).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Weight of the distillation losses against the hard-label loss (0: hard labels only, 1: KD only).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Temperature of logit KD (the loss is scaled by its square).
    #[arg(long, default_value_t = 2.0)]
    kd_temperature: f64,
    /// Teacher logits kept per position (the cache on disk).
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Feature KD pairs `STUDENT:TEACHER` (0-based layers, comma-separated), e.g. `0:2,1:5`.
    #[arg(long)]
    feature_layers: Option<String>,
    /// Weight of feature KD within the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    feature_weight: f64,
    /// Seed of initialisation and window sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output GGUF.
    #[arg(long, default_value = "student.gguf")]
    out: PathBuf,
    /// Tensor type of the output's matrices.
    #[arg(long, value_enum, default_value = "f32")]
    out_type: ExportType,
    /// Teacher cache file (default: OUT.teacher-cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Write a checkpoint (OUT.ckpt) every N steps (0: never); a rerun of the same command resumes from it.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Self-distillation: plain text openings (one per line) the teacher continues greedily; its text
    /// joins the training data.
    #[arg(long, num_args = 1..)]
    generate_prompts: Vec<PathBuf>,
    /// Self-distillation: instructions (one per line) rendered with the teacher's chat template, which
    /// the teacher answers greedily; its answers join the training data.
    #[arg(long, num_args = 1..)]
    generate_chat: Vec<PathBuf>,
    /// Tokens generated per prompt at most (generation also stops at an end-of-sequence or end-of-turn token).
    #[arg(long, default_value_t = 128)]
    generate_tokens: usize,
    /// Prompts generated at once (bushu's batching engine).
    #[arg(long, default_value_t = 16)]
    generate_batch: usize,
    /// Cache of the generated sequences (default: OUT.generated), reused by any run with the same
    /// teacher, prompts and --generate-tokens.
    #[arg(long)]
    generate_cache: Option<PathBuf>,
    /// Keep the student's token embeddings and LM head as initialised (--init teacher: the teacher's);
    /// only the layers and norms train.
    #[arg(long)]
    freeze_embeddings: bool,
}

/// `0:2,1:5` → [(0, 2), (1, 5)].
fn parse_pairs(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|p| {
            let (a, b) = p
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--feature-layers: {p:?} is not STUDENT:TEACHER"))?;
            match (a.trim().parse(), b.trim().parse()) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                _ => bail!("--feature-layers: {p:?} is not two layer numbers STUDENT:TEACHER"),
            }
        })
        .collect()
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::TrainExitAdapters(a) => {
            let mut o = AdapterOptions::new(a.model, a.data, a.out);
            o.layers = a
                .exit_layers
                .as_deref()
                .map(bushu::model::early_exit::parse_layers)
                .transpose()?;
            o.tokens = a.tokens;
            o.ctx = a.ctx;
            o.batch = a.batch;
            o.epochs = a.epochs;
            o.lr = a.lr;
            o.seed = a.seed;
            let r = train_exit_adapters(&o, &mut |line| eprintln!("{line}"))?;
            let kl: Vec<String> = r
                .layers
                .iter()
                .zip(r.first_kl.iter().zip(&r.final_kl))
                .map(|(l, (a, b))| format!("after {l} layers {a:.3} -> {b:.3}"))
                .collect();
            eprintln!(
                "{} positions, {} steps in {:.1} s (model pass {:.1} s): KL per exit (first and last tenth of the steps): {}; wrote {}",
                r.positions,
                r.steps,
                r.train_seconds,
                r.teacher_seconds,
                kl.join(", "),
                o.out.display()
            );
            Ok(())
        }
        Command::TrainRouters(a) => {
            let mut o = RouterOptions::new(a.model, a.data, a.capacity, a.out);
            o.tokens = a.tokens;
            o.ctx = a.ctx;
            o.batch = a.batch;
            o.epochs = a.epochs;
            o.lr = a.lr;
            o.seed = a.seed;
            o.calib_windows = a.calib_windows;
            let r = train_routers(&o, &mut |line| eprintln!("{line}"))?;
            eprintln!(
                "{} windows ({} tokens), {} steps in {:.1} s (teacher {:.1} s): KL {:.4} -> {:.4} nats (first and last tenth of the steps), {:.4} -> {:.4} on the first batch; quantiles from {} positions in {:.1} s",
                r.windows,
                r.positions,
                r.steps,
                r.train_seconds,
                r.teacher_seconds,
                r.first_kl,
                r.final_kl,
                r.batch_kl_before,
                r.batch_kl_after,
                r.calib_positions,
                r.calib_seconds
            );
            println!("{}", o.out.display());
            Ok(())
        }
        Command::EvalMedusa(a) => {
            let trees = a
                .trees
                .split(',')
                .map(|t| t.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| anyhow::anyhow!("--trees: {:?} is not a list of node counts", a.trees))?;
            let typical = bushu::spec_decode::Typical {
                epsilon: a.epsilon,
                delta: a.delta,
            };
            typical.validate()?;
            let vocabs = a
                .vocabs
                .split(',')
                .map(|t| t.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| anyhow::anyhow!("--vocabs: {:?} is not a list of token counts", a.vocabs))?;
            eval_medusa(&EvalOptions {
                model: a.model,
                heads: a.heads,
                prompts: a.prompts,
                n: a.n,
                trees,
                vocabs,
                temperature: a.temperature,
                seed: a.seed,
                typical,
                chat: a.chat,
                greedy_only: a.greedy_only,
            })
        }
        Command::TrainMedusa(a) => {
            let mut o = MedusaOptions::new(a.model, a.heads, a.data, a.out);
            o.tokens = a.tokens;
            o.self_distill_prompts = a.self_distill_prompts;
            o.self_distill_tokens = a.self_distill_tokens;
            o.ctx = a.ctx;
            o.batch = a.batch;
            o.epochs = a.epochs;
            o.lr = a.lr;
            o.decay = a.decay;
            o.seed = a.seed;
            o.val = a.val;
            o.val_tokens = a.val_tokens;
            o.head_vocab = a.head_vocab;
            o.chat = a.chat;
            let r = train_medusa(&o, &mut StderrMedusa)?;
            let ce: Vec<String> = r.final_ce.iter().map(|c| format!("{c:.3}")).collect();
            eprintln!(
                "{} positions ({} self-distilled; generation {:.1} s, hidden states {:.1} s), {} steps in {:.1} s, final head CE [{}]",
                r.positions,
                r.self_distilled_positions,
                r.generate_seconds,
                r.hidden_seconds,
                r.steps,
                r.train_seconds,
                ce.join(", ")
            );
            if r.val_positions > 0 {
                let pct = |v: &[f64]| {
                    v.iter()
                        .map(|x| format!("{:.1}", 100.0 * x))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                eprintln!(
                    "held-out top-1 accuracy over {} positions: model (t+1) {:.1} %, heads (t+2..) [{}] %, untrained heads (the LM head) [{}] %, labels inside the heads' vocabulary [{}] %",
                    r.val_positions,
                    100.0 * r.val_base,
                    pct(&r.val_heads),
                    pct(&r.val_untrained),
                    pct(&r.val_in_vocab)
                );
            }
            println!("{}", o.out.display());
            Ok(())
        }
        Command::Distill(a) => {
            let mut o = DistillOptions::new(a.teacher, a.data, a.out);
            o.student_layers = a.student_layers;
            o.student_dim = a.student_dim;
            o.student_heads = a.student_heads;
            o.student_kv_heads = a.student_kv_heads;
            o.student_ffn = a.student_ffn;
            o.init = match a.init.as_str() {
                "scratch" => Init::Scratch,
                "teacher" => Init::Teacher,
                p => Init::File(PathBuf::from(p)),
            };
            o.tokens = a.tokens;
            o.ctx = a.ctx;
            o.batch = a.batch;
            o.lr = a.lr;
            o.alpha = a.alpha;
            o.temperature = a.kd_temperature;
            o.top_k = a.top_k;
            o.feature_layers = match &a.feature_layers {
                Some(s) => parse_pairs(s)?,
                None => Vec::new(),
            };
            o.feature_weight = a.feature_weight;
            o.seed = a.seed;
            o.export_type = a.out_type;
            o.cache = a.cache;
            o.checkpoint_every = a.checkpoint_every;
            o.generate_prompts = a.generate_prompts;
            o.generate_chat = a.generate_chat;
            o.generate_tokens = a.generate_tokens;
            o.generate_batch = a.generate_batch;
            o.generate_cache = a.generate_cache;
            o.freeze_embeddings = a.freeze_embeddings;
            let r = distill(&o, &mut Console::new())?;
            if r.generated_sequences > 0 {
                eprintln!(
                    "self-distillation: {} sequences, {} generated tokens ({}{:.1} s); training stream {} tokens",
                    r.generated_sequences,
                    r.generated_tokens,
                    if r.generated_cached { "cached, " } else { "" },
                    r.generate_seconds,
                    r.data_tokens
                );
            }
            if let Some(s) = r.resumed_at {
                eprintln!("resumed from the checkpoint at step {s}");
            }
            let tps = r.tokens as f64 / r.train_seconds.max(1e-9);
            let last = r.log.last().cloned().unwrap_or_default();
            eprintln!(
                "teacher: {:.1} s{}; student: {} parameters, {} steps, {} tokens in {:.1} s ({tps:.0} tok/s), final loss {:.4} (ce {:.4} kd {:.4} feat {:.4})",
                r.teacher_seconds,
                if r.teacher_cached { " (cached)" } else { "" },
                r.parameters,
                r.steps,
                r.tokens,
                r.train_seconds,
                last.loss,
                last.ce,
                last.kd,
                last.feature
            );
            println!("{}", o.out.display());
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let msg = bushu::display::escape_controls(&format!("{e:#}"));
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
