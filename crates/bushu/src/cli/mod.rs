//! The `bushu` command line. Each subcommand is one module; they share model opening and thread setup.

mod bench;
mod info;
mod perplexity;
mod quantize;
mod roofline;
mod run;
mod serve;
mod tokenize;

use crate::model::{load, Model, ModelFile};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "bushu", version, about = "bushu (部署): run and study large language models on your CPU")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt.
    Run(run::RunArgs),
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
}

/// Options every model-using command has.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face directory, or a llama2.c checkpoint.
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Threads for the matrix products (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Sets up the thread pool and opens the model file.
    pub fn open(&self) -> Result<(ModelFile, f64)> {
        init_threads(self.threads)?;
        let Some(path) = &self.model else {
            bail!("no model given: pass --model PATH (a .gguf file, a Hugging Face directory or a llama2.c .bin)");
        };
        let t = Instant::now();
        let file = load(path)?;
        Ok((file, t.elapsed().as_secs_f64() * 1e3))
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

/// Builds the runnable model from a file.
pub fn build_model(file: &ModelFile) -> Result<Model> {
    Model::new(file).context("cannot build the model")
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Roofline(a) => roofline::roofline(*a),
        Command::Serve(a) => serve::serve(*a),
    }
}
