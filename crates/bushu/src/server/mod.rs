//! The OpenAI-compatible HTTP server over the engine (`bushu serve`), kept apart from it: axum on a
//! small tokio runtime does the HTTP, JSON and SSE; the engine runs its step loop on its own thread
//! ([`worker`]) and the two talk through channels.
//!
//! - [`api`]: request bodies, validation, translation to engine requests.
//! - [`respond`]: detokenization, stop strings, logprobs, response bodies and stream chunks.
//! - [`routes`]: the endpoints, authentication, streaming, cancellation on disconnect.
//! - [`error`]: OpenAI-style error bodies.
//!
//! Shutdown (SIGTERM, Ctrl-C or [`Server::shutdown`]) stops accepting connections, lets in-flight
//! requests finish for up to the grace period, then cancels what is left.

pub mod api;
pub mod error;
pub mod request_log;
pub mod respond;
pub mod routes;
pub mod worker;

use crate::chat::session::template_for;
use crate::engine::metrics::Metrics;
use crate::engine::{Engine, EngineConfig};
use crate::model::{load, ModelOptions};
use anyhow::{Context, Result};
use routes::AppState;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use worker::{Command, Worker};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub api_key: Option<String>,
    pub max_batch: usize,
    /// Sequences allowed to wait for admission before requests get 429.
    pub max_queue: usize,
    /// KV cache bytes (default: `max_batch` sequences of `ctx`).
    pub kv_memory: Option<usize>,
    /// Longest sequence (default: the model's context).
    pub ctx: Option<usize>,
    /// Tokens per engine step (prefill chunks + decodes).
    pub max_batched_tokens: usize,
    pub prefix_caching: bool,
    /// Name in `/v1/models` and responses (default: the file's name).
    pub model_name: Option<String>,
    /// How long shutdown waits for in-flight requests.
    pub grace: Duration,
    /// Shut down on SIGTERM / Ctrl-C.
    pub handle_signals: bool,
    /// How activations meet quantized weights (`--exact-activations` gives `Exact`).
    pub precision: kernels::Precision,
    /// LLM.int8() outlier threshold (`--int8-outlier-threshold`); `None`: the `precision` path.
    pub int8_outlier_threshold: Option<f32>,
    /// How the paged KV cache stores keys and values (`--kv-type`).
    pub kv_type: crate::model::KvType,
}

impl ServeOptions {
    /// How the model is built.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions {
            precision: self.precision,
            int8_outlier_threshold: self.int8_outlier_threshold,
            kv_type: self.kv_type,
            background_packing: true,
        }
    }

    pub fn new(model: PathBuf) -> ServeOptions {
        ServeOptions {
            model,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_batch: 16,
            max_queue: 256,
            kv_memory: None,
            ctx: None,
            max_batched_tokens: 256,
            prefix_caching: true,
            model_name: None,
            grace: Duration::from_secs(30),
            handle_signals: false,
            precision: kernels::Precision::default(),
            int8_outlier_threshold: None,
            kv_type: crate::model::KvType::default(),
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub engine: EngineConfig,
    stop: Option<oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Loads the model, binds the address and starts the engine and HTTP threads.
    pub fn start(opts: ServeOptions) -> Result<Server> {
        let file = load(&opts.model)?;
        let model = opts.model_options().build(&file)?;
        let mut cfg = EngineConfig::for_model(&model, opts.max_batch, opts.ctx, opts.kv_memory);
        cfg.max_batched_tokens = opts.max_batched_tokens;
        cfg.prefix_caching = opts.prefix_caching;
        // The model's own template and end-of-turn tokens, as `bushu chat` uses them (ChatML when the
        // file has no template, as llama-server falls back to).
        let (template, chat_stop_ids, _) = template_for(&file).context("the model's chat template")?;
        let model_id = opts.model_name.clone().unwrap_or_else(|| {
            opts.model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let max_model_len = cfg.max_model_len;
        let engine = Engine::new(model, file.eos_ids.clone(), cfg.clone());
        let (worker, engine_thread) = Worker::spawn(engine, opts.max_queue, metrics.clone());
        let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let state = Arc::new(AppState {
            worker: worker.clone(),
            tokenizer: file.tokenizer.clone(),
            template,
            chat_stop_ids,
            model_id,
            api_key: opts.api_key.clone(),
            metrics,
            max_model_len,
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            created,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (grace, signals) = (opts.grace, opts.handle_signals);
        let http = std::thread::Builder::new()
            .name("bushu-http".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let app = routes::router(state.clone());
                    let st = state.clone();
                    let w = worker.clone();
                    let shutdown = async move {
                        wait_for_stop(stopped, signals).await;
                        st.shutting_down.store(true, Ordering::Relaxed);
                        // In-flight requests get the grace period, then whatever is left is cancelled.
                        tokio::spawn(async move {
                            tokio::time::sleep(grace).await;
                            w.send(Command::CancelAll);
                        });
                    };
                    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
                    worker.send(Command::Stop);
                    Ok::<(), anyhow::Error>(())
                })?;
                let _ = engine_thread.join();
                Ok(())
            })?;
        Ok(Server {
            addr,
            engine: cfg,
            stop: Some(stop),
            http: Some(http),
        })
    }

    /// Starts a graceful shutdown and waits for it.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join()
    }

    /// Waits until the server has stopped (by a signal, with `handle_signals`).
    pub fn join(mut self) -> Result<()> {
        match self.http.take() {
            Some(h) => h.join().map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn wait_for_stop(stopped: oneshot::Receiver<()>, signals: bool) {
    if !signals {
        let _ = stopped.await;
        return;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
        tokio::select! {
            _ = stopped => {}
            _ = term.recv() => eprintln!("bushu serve: SIGTERM, finishing in-flight requests"),
            _ = tokio::signal::ctrl_c() => eprintln!("bushu serve: interrupted, finishing in-flight requests"),
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = stopped => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
