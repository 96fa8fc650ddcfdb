//! The `bushu` command line. Each subcommand is one module; they share model opening and thread setup.

mod bench;
mod chat;
mod info;
mod list;
mod perplexity;
mod pull;
mod quantize;
mod roofline;
mod run;
mod sampling;
mod serve;
mod spec;
mod structured;
mod tokenize;

use crate::model::{load, KvType, Model, ModelFile, ModelOptions};
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "bushu",
    version,
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
    /// Interactive chat with a model (multi-turn, streaming).
    Chat(Box<chat::ChatArgs>),
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
    /// Keep activations in f32 against the dequantized weights (default: rounded to 8-bit blocks, as llama.cpp).
    #[arg(long)]
    pub exact_activations: bool,
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

    /// The activation precision these options ask for (`--exact-activations`).
    pub fn precision(&self) -> kernels::Precision {
        match self.exact_activations {
            true => kernels::Precision::Exact,
            false => kernels::Precision::default(),
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
        Command::Chat(a) => chat::chat(*a),
    }
}
