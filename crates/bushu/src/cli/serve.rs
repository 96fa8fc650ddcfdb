//! `bushu serve`: the OpenAI-compatible HTTP server (continuous batching, paged KV cache, prefix caching).

use super::ModelArgs;
use crate::server::{ServeOptions, Server};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 endpoints (default: $BUSHU_API_KEY if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Sequences allowed to wait before requests are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// KV cache size, e.g. 512M or 2G (default: --max-batch sequences of --ctx positions).
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Longest sequence, prompt + completion (default: the model's context length).
    #[arg(short, long, visible_alias = "ctx-size")]
    pub ctx: Option<usize>,
    /// Tokens per engine step: decodes plus chunks of prompts.
    #[arg(long, default_value_t = 256)]
    pub max_batched_tokens: usize,
    /// Turn the prefix cache off.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Model name reported by the API (default: the file name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    a.model.gpu_note();
    super::init_threads(a.model.threads)?;
    let path = crate::pull::resolve(a.model.model.as_deref())?;
    if a.max_batch == 0 || a.max_batched_tokens == 0 {
        bail!("--max-batch and --max-batched-tokens must be at least 1");
    }
    let kv_memory = a.kv_memory.as_deref().map(parse_size).transpose()?;
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        api_key: a
            .api_key
            .or_else(|| std::env::var("BUSHU_API_KEY").ok().filter(|k| !k.is_empty())),
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        kv_memory,
        ctx: a.ctx,
        max_batched_tokens: a.max_batched_tokens,
        prefix_caching: !a.no_prefix_caching,
        model_name: a.model_name,
        grace: Duration::from_secs(a.shutdown_grace),
        handle_signals: true,
        precision: a.model.precision(),
        int8_outlier_threshold: a.model.int8_outlier_threshold,
        kv_type: a.model.kv_type,
        ..ServeOptions::new(path)
    };
    let server = Server::start(opts)?;
    let e = &server.engine;
    eprintln!(
        "bushu serve: listening on http://{} — max batch {}, {} KV blocks of {} ({} positions, {} {:.1} MiB), context {}, {} tokens/step, prefix cache {}",
        server.addr,
        e.max_batch,
        e.num_blocks,
        e.block_size,
        e.num_blocks * e.block_size,
        a.model.kv_type.name(),
        e.kv_bytes() as f64 / (1 << 20) as f64,
        e.max_model_len,
        e.max_batched_tokens,
        if e.prefix_caching { "on" } else { "off" },
    );
    server.join()
}

/// `123`, `64K`, `512M`, `2G` (powers of 1024; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1usize << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("cannot read the size '{s}' (e.g. 512M, 2G)"))?;
    if v.is_nan() || v <= 0.0 {
        bail!("size '{s}' must be positive");
    }
    Ok((v * mul as f64) as usize)
}
