//! `bushu serve`: the OpenAI-compatible HTTP server (continuous batching, paged KV cache, prefix caching).

use super::spec::SpecArgs;
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
    /// KV cache size, e.g. 512M or 2G (default: --max-batch sequences of --ctx positions or of 4096 if
    /// less, at least one whole --ctx, at most half of the memory available beside the model).
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Longest sequence, prompt + completion (default: the model's trained context length).
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
    #[command(flatten)]
    pub spec: SpecArgs,
    /// With --lookup, --draft-model or --self-speculate: no drafts in a step where more than N
    /// sequences decode (vLLM's speculative_disable_by_batch_size) — many sequences already fill the
    /// cores and drafted rows compete with theirs (default: twice the threads; 0: draft at any batch).
    #[arg(long, value_name = "N")]
    pub spec_max_batch: Option<usize>,
    #[command(flatten)]
    pub cascade: super::cascade::CascadeArgs,
    /// Serve /metrics without the API key (by default it asks for the key when there is one).
    #[arg(long)]
    pub metrics_public: bool,
    /// Connections open at once; the next ones get 503.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    a.model.gpu_note();
    super::init_threads(a.model.threads)?;
    let threshold = a.cascade.threshold()?;
    let cascade = if a.cascade.on() {
        crate::cascade::check_models(&a.cascade.cascade)?;
        Some(crate::server::CascadeOptions {
            models: a.cascade.cascade.clone(),
            threshold,
            classifier: a.cascade.cascade_classifier.clone(),
        })
    } else {
        None
    };
    let path = match &cascade {
        Some(c) => crate::pull::resolve(c.models.last().map(|p| p.as_path()))?,
        None => crate::pull::resolve(a.model.model.as_deref())?,
    };
    if a.max_batch == 0 || a.max_batched_tokens == 0 {
        bail!("--max-batch and --max-batched-tokens must be at least 1");
    }
    let spec = a.spec.options()?;
    if a.spec.medusa.is_some() {
        bail!("--medusa is for bushu run and chat: the serving engine drafts with --draft-model, --lookup or --self-speculate");
    }
    if spec.tree.is_some() {
        bail!("--draft-tree is for bushu run and chat: the serving engine verifies chains of drafts");
    }
    if a.spec_max_batch.is_some() && spec.method == crate::spec_decode::Speculation::Off {
        bail!("--spec-max-batch limits speculative decoding: it needs --lookup, --draft-model or --self-speculate");
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if a.ctx == Some(0) {
        bail!("--ctx must be at least 1");
    }
    let kv_memory = a
        .kv_memory
        .as_deref()
        .map(|s| crate::model::memory::parse_size(s).context("--kv-memory"))
        .transpose()?;
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
        spec,
        // Measured on 2 cores (docs/SPECULATIVE.md): 4 streams gain from drafts, 16 lose; the batch
        // where a pass's rows fill the cores grows with them.
        spec_max_batch: a.spec_max_batch.unwrap_or(2 * kernels::pool::threads()),
        metrics_public: a.metrics_public,
        check_tensors: a.model.check_tensors_asked(),
        max_connections: a.max_connections,
        cascade,
        ..ServeOptions::new(path)
    };
    let server = Server::start(opts)?;
    let e = &server.engine;
    for note in &server.kv_plan.notes {
        eprintln!("bushu serve: warning: {note}");
    }
    eprintln!(
        "bushu serve: listening on http://{} — max batch {}, KV cache {} {} reserved for {} positions ({} blocks of {}; sized from {}), context {}, {} tokens/step, prefix cache {}",
        server.addr,
        e.max_batch,
        a.model.kv_type.name(),
        crate::model::memory::fmt_bytes(e.kv_bytes() as u128),
        e.num_blocks * e.block_size,
        e.num_blocks,
        e.block_size,
        server.kv_plan.basis,
        e.max_model_len,
        e.max_batched_tokens,
        if e.prefix_caching { "on" } else { "off" },
    );
    if let Some(c) = &server.cascade {
        eprintln!("bushu serve: cascade decoding: {c}");
    }
    if let Some(s) = &server.speculation {
        eprintln!("bushu serve: speculative decoding by {s}");
    }
    server.join()
}
