//! The `bushu-train` executable: `bushu-train distill ...` (also reached as `bushu distill ...`, which
//! runs this program). Errors end in one line and a non-zero exit.

use anyhow::{bail, Result};
use bushu_train::distill::{distill, DistillOptions, Init};
use bushu_train::export::ExportType;
use bushu_train::progress::Console;
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
    /// Training tokens (windows of --ctx; rounded up to whole batches).
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
            let r = distill(&o, &mut Console::new())?;
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
