//! The `bushu` command line. Each subcommand is one module; they share model opening and thread setup.

mod adaptive;
mod bench;
mod cascade;
mod chat;
mod info;
mod list;
mod perplexity;
mod ps;
mod pull;
mod quantize;
mod roofline;
mod run;
pub mod sampling;
mod serve;
mod spec;
mod structured;
mod tokenize;
mod tradeoff;
mod train;

use crate::model::{load, KvType, Model, ModelFile, ModelOptions};
use anyhow::{bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use kernels::Precision;
use std::path::PathBuf;
use std::time::Instant;

/// `bushu --version`'s first line: the package version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("BUSHU_GIT_HASH"), ")");

#[derive(Parser)]
#[command(
    name = "bushu",
    version = VERSION,
    about = "bushu (部署): run and study large language models on your CPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt.
    Run(Box<run::RunArgs>),
    /// Print the token ids of a text.
    Tokenize(tokenize::TokenizeArgs),
    /// Print the text of token ids.
    Detokenize(tokenize::DetokenizeArgs),
    /// Describe a model file: architecture, shapes, tensor types, vocabulary, template.
    Info(info::InfoArgs),
    /// Prompt-processing and generation speed, llama-bench style.
    Bench(bench::BenchArgs),
    /// Perplexity of a text (llama-perplexity's method), optionally KL divergence from a base model.
    Perplexity(perplexity::PerplexityArgs),
    /// Quantize a model to GGUF (llama.cpp block types, bushu int types, GPTQ).
    Quantize(quantize::QuantizeArgs),
    /// Roofline analysis: hardware roofs, per-op intensity of prefill and decode, measured points.
    Roofline(Box<roofline::RooflineArgs>),
    /// OpenAI-compatible HTTP server: continuous batching, paged KV cache, prefix caching.
    Serve(Box<serve::ServeArgs>),
    /// Download a model into the cache (default: smollm2-135m; also hf:ORG/REPO[:FILE]).
    Pull(pull::PullArgs),
    /// Show the models in the cache and the known ones, with sizes and sources.
    List(list::ListArgs),
    /// Remove a model from the cache.
    Rm(pull::RmArgs),
    /// What a running `bushu serve` has loaded, and its KV cache use (ollama's ps).
    Ps(ps::PsArgs),
    /// Interactive chat with a model (multi-turn, streaming).
    Chat(Box<chat::ChatArgs>),
    /// Distill a teacher into a smaller student (runs `bushu-train distill`; `bushu distill --help`).
    #[command(disable_help_flag = true)]
    Distill(train::TrainArgs),
    /// Fit the reliability classifier of a cascade (`--cascade M1,M2`) on prompts: labels are agreement
    /// with the largest model's greedy answer.
    CascadeTrain(cascade::TrainArgs),
    /// Cascade decoding's threshold sweep on prompts: fraction answered per stage, speedup, agreement
    /// (the sweep `bushu tradeoff --method cascade` runs, which also writes the table and a chart).
    CascadeReport(cascade::ReportArgs),
    /// Quality vs compute of an adaptive-computation method: sweeps its knob, writes a table and an SVG chart.
    Tradeoff(Box<tradeoff::TradeoffArgs>),
    /// Train Medusa heads for a model (runs `bushu-train train-medusa`; `bushu train-medusa --help`).
    #[command(disable_help_flag = true)]
    TrainMedusa(train::TrainArgs),
    /// Train mixture-of-depths routers for a model (runs `bushu-train train-routers`; `bushu train-routers --help`).
    #[command(disable_help_flag = true)]
    TrainRouters(train::TrainArgs),
    /// Train early-exit adapters (tuned lens) for a model (runs `bushu-train train-exit-adapters`; `bushu train-exit-adapters --help`).
    #[command(disable_help_flag = true)]
    TrainExitAdapters(train::TrainArgs),
    /// Print a shell completion script (e.g. `bushu completions bash > ~/.local/share/bash-completion/completions/bushu`).
    Completions(CompletionsArgs),
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// How activations meet quantized weights (`--precision`); docs/PRECISION.md has the measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 activations against the dequantized weights, everywhere.
    Exact,
    /// Activations rounded to 16-bit blocks where a kernel exists (Q8_0, Q6_K, Q5_K, Q5_0, Q4_0, Q4_1, Q4_K, Q3_K and Q2_K weights), f32 elsewhere.
    Wide,
    /// Activations rounded to 8-bit blocks as llama.cpp does (16-bit for the classifier); BF16 weights meet bf16 activations on CPUs with AVX512_BF16, as llama.cpp's do.
    Fast,
    /// fast, and F16 weights rounded to bf16 too on CPUs with AVX512_BF16 (as ik_llama.cpp's -rtr does): about 2x fast's F16 prefill, less exact.
    Bf16,
}

impl PrecisionArg {
    pub fn precision(self) -> Precision {
        match self {
            PrecisionArg::Exact => Precision::Exact,
            PrecisionArg::Wide => Precision::Wide,
            PrecisionArg::Fast => Precision::Fast,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// Options every model-using command has.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face directory, a llama2.c checkpoint, a cache name (`bushu list`),
    /// or a pulled hf:ORG/REPO[:FILE] (default: smollm2-135m, fetched by `bushu pull`).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Threads for the matrix products (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// How activations meet quantized weights: `wide` keeps greedy answers equal to the exact model's
    /// (f32, or 16-bit blocks where a kernel exists); `fast` rounds them to 8-bit blocks as llama.cpp
    /// does (faster, but SmolLM2's greedy chat answer then differs from the exact model's on about half
    /// of the prompts, docs/PRECISION.md); `bf16`: `fast`, and F16 weights in bf16 on CPUs with
    /// AVX512_BF16 (about twice the F16 prefill, less exact); `exact`: f32 everywhere.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Wide)]
    pub precision: PrecisionArg,
    /// The same as `--precision exact`.
    #[arg(long, conflicts_with = "precision")]
    pub exact_activations: bool,
    /// llama.cpp's GPU offload (`-ngl N`): accepted, with a note; this build runs on the CPU only.
    #[arg(long = "n-gpu-layers", alias = "gpu-layers", value_name = "N")]
    pub n_gpu_layers: Option<String>,
    /// LLM.int8(): int8 weights and per-token int8 activations, with the feature dimensions where some
    /// |x| exceeds this threshold kept in f32 (6.0 in the paper; `inf`: no outliers).
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub int8_outlier_threshold: Option<f32>,
    /// How the KV cache stores keys and values: f32, or int8 with an f32 scale per position and KV head
    /// (about 3.7x less memory at head size 48, 3.8x at 64).
    #[arg(long, value_enum, default_value_t = KvType::F32)]
    pub kv_type: KvType,
    /// Check every weight for NaN and infinity when loading (default: for files under 1 GiB).
    #[arg(long, conflicts_with = "no_check_tensors")]
    pub check_tensors: bool,
    /// Skip the weight check.
    #[arg(long)]
    pub no_check_tensors: bool,
}

impl ModelArgs {
    /// Sets up the thread pool and opens the model file.
    pub fn open(&self) -> Result<(ModelFile, f64)> {
        self.gpu_note();
        init_threads(self.threads)?;
        let path = crate::pull::resolve(self.model.as_deref())?;
        let t = Instant::now();
        let file = load(&path)?;
        if crate::model::check::wanted(self.check_tensors_asked(), &file) {
            crate::model::check::check_tensors(&file)?;
        }
        Ok((file, t.elapsed().as_secs_f64() * 1e3))
    }

    /// `--check-tensors` (`Some(true)`), `--no-check-tensors` (`Some(false)`), or neither.
    pub fn check_tensors_asked(&self) -> Option<bool> {
        match (self.check_tensors, self.no_check_tensors) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// The note `-ngl` gets: nothing is offloaded.
    pub fn gpu_note(&self) {
        if let Some(n) = &self.n_gpu_layers {
            eprintln!("note: -ngl/--n-gpu-layers {n} ignored: this build of bushu runs on the CPU only");
        }
    }

    /// The activation precision these options ask for (`--precision`, `--exact-activations`).
    pub fn precision(&self) -> Precision {
        match self.exact_activations {
            true => Precision::Exact,
            false => self.precision.precision(),
        }
    }

    /// The model options these flags ask for.
    pub fn options(&self) -> ModelOptions {
        ModelOptions {
            precision: self.precision(),
            int8_outlier_threshold: self.int8_outlier_threshold,
            kv_type: self.kv_type,
            background_packing: true,
        }
    }

    /// Builds the runnable model from a file opened with these options.
    pub fn build(&self, file: &ModelFile) -> Result<Model> {
        self.options().build(file).map_err(|e| sampling::flag_error(e, &[]))
    }
}

fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    // A second call (tests running several commands in one process) keeps the first pool.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    Ok(())
}

/// Arguments as clap should see them: llama.cpp's multi-letter short option `-ngl N` (clap's short
/// options are single letters) becomes `--n-gpu-layers N`.
pub fn llama_cpp_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|a| match a.to_str() {
            Some("-ngl") => "--n-gpu-layers".into(),
            Some(s) if s.starts_with("-ngl=") => format!("--n-gpu-layers={}", &s[5..]).into(),
            _ => a,
        })
        .collect()
}

/// `bushu --version`: the version, the commit, and the kernels' instruction set on this CPU.
pub fn long_version() -> String {
    let level = kernels::Simd::active();
    let what = match level {
        kernels::Simd::Scalar => "portable Rust, no SIMD kernels",
        kernels::Simd::Avx2 => "AVX2, FMA, F16C",
        kernels::Simd::Avx512 => "AVX-512 F/BW/VL, AVX512-VNNI, AVX2, FMA, F16C",
        kernels::Simd::Neon => "Advanced SIMD",
    };
    let others: Vec<&str> = kernels::Simd::available_levels()
        .into_iter()
        .filter(|&l| l != level)
        .map(|l| l.name())
        .collect();
    format!(
        "{VERSION}\nkernels: {} ({what}); also available: {} (BUSHU_SIMD selects one)\nbuild: {} {}, CPU only",
        level.name(),
        others.join(", "),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

/// Parses the process's command line ([`llama_cpp_args`], [`long_version`]); exits on a usage error.
pub fn parse() -> Cli {
    let long: &'static str = Box::leak(long_version().into_boxed_str());
    let matches = Cli::command()
        .long_version(long)
        .get_matches_from(llama_cpp_args(std::env::args_os()));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(*a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Roofline(a) => roofline::roofline(*a),
        Command::Serve(a) => serve::serve(*a),
        Command::Pull(a) => pull::pull(a),
        Command::List(a) => list::list(a),
        Command::Rm(a) => pull::rm(a),
        Command::Ps(a) => ps::ps(a),
        Command::Chat(a) => chat::chat(*a),
        Command::CascadeTrain(a) => cascade::train(a),
        Command::CascadeReport(a) => cascade::report(a),
        Command::Tradeoff(a) => tradeoff::tradeoff(*a),
        Command::Distill(a) => train::forward("distill", a),
        Command::TrainMedusa(a) => train::forward("train-medusa", a),
        Command::TrainRouters(a) => train::forward("train-routers", a),
        Command::TrainExitAdapters(a) => train::forward("train-exit-adapters", a),
        Command::Completions(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "bushu", &mut std::io::stdout());
            Ok(())
        }
    }
}
