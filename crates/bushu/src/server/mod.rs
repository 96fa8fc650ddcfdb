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
pub mod cascade;
pub mod error;
pub mod request_log;
pub mod respond;
pub mod routes;
pub mod structured;
pub mod tools;
pub mod worker;

use crate::chat::session::template_for;
use crate::engine::metrics::Metrics;
use crate::engine::model_runner::PagedCache;
use crate::engine::{Engine, EngineConfig, KvPlan, KvSizing};
use crate::model::{load, ModelOptions};
use crate::spec_decode::serving::{draft_runner, Method, Speculator};
use crate::spec_decode::{load_draft, PromptLookup, SpecOptions, Speculation};
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
    /// KV cache bytes (default: `max_batch` sequences of `ctx`, at most half of the memory available
    /// beside the model: [`EngineConfig::sized`]).
    pub kv_memory: Option<usize>,
    /// Longest sequence (default: the model's trained context).
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
    /// Speculative decoding in the engine (`--lookup`, `--draft-model`, `--self-speculate`).
    pub spec: SpecOptions,
    /// Speculation makes no drafts in a step where more than this many sequences decode (0: any
    /// number): [`crate::spec_decode::serving::Speculator::max_batch`].
    pub spec_max_batch: usize,
    /// `/metrics` open to anyone even with an API key (`--metrics-public`).
    pub metrics_public: bool,
    /// Connections open at once; more are answered 503 and closed (`--max-connections`).
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and stay idle between requests.
    pub header_timeout: Duration,
    /// Check the weights for NaN/infinity at load (`None`: for files under 1 GiB).
    pub check_tensors: Option<bool>,
    /// Cascade decoding (`--cascade`); `model` is then the cascade's largest model.
    pub cascade: Option<CascadeOptions>,
}

/// `--cascade M1,M2[,M3] [--cascade-threshold P] [--cascade-classifier FILE]`.
#[derive(Clone, Debug)]
pub struct CascadeOptions {
    /// The models, smallest first (the last one is also [`ServeOptions::model`]).
    pub models: Vec<PathBuf>,
    pub threshold: f64,
    pub classifier: Option<PathBuf>,
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
            spec: SpecOptions::off(),
            spec_max_batch: 0,
            metrics_public: false,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            check_tensors: None,
            cascade: None,
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub engine: EngineConfig,
    /// The proposer speculating in the engine and its draft length (for the start-up line).
    pub speculation: Option<String>,
    /// How the KV cache was sized, and the warnings that go with it.
    pub kv_plan: KvPlan,
    /// The cascade (for the start-up line): its models and threshold.
    pub cascade: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Loads the model, binds the address and starts the engine and HTTP threads.
    pub fn start(opts: ServeOptions) -> Result<Server> {
        // A cascade: every model opened (one vocabulary, a classifier for exactly these models); the
        // largest is the main engine's model, the others get engines of their own below.
        let (file, smaller) = match &opts.cascade {
            None => {
                let file = load(&opts.model)?;
                if crate::model::check::wanted(opts.check_tensors, &file) {
                    crate::model::check::check_tensors(&file)?;
                }
                (file, None)
            }
            Some(c) => {
                if opts.spec.method != Speculation::Off {
                    anyhow::bail!("--cascade and speculative decoding (--draft-model, --lookup, --self-speculate) cannot be combined");
                }
                crate::cascade::check_threshold(c.threshold)?;
                let mut stages = crate::cascade::Stages::open(&c.models, |f| {
                    if crate::model::check::wanted(opts.check_tensors, f) {
                        crate::model::check::check_tensors(f)?;
                    }
                    Ok(())
                })?;
                let judge = crate::cascade::Judge::load(c.classifier.as_deref(), &stages.ids)?;
                let file = stages.files.pop().expect("two models or more");
                let last = stages.ids.pop().expect("two models or more");
                let models = stages
                    .files
                    .iter()
                    .map(|f| opts.model_options().build(f))
                    .collect::<Result<Vec<_>>>()?;
                (file, Some((stages, models, judge, last.name)))
            }
        };
        let model = opts.model_options().build(&file)?;
        // A draft model is loaded first: its paged cache has the target's blocks, so the KV budget is
        // shared between the two caches in proportion to their bytes per position.
        let draft = match opts.spec.method.draft_path() {
            Some(path) => Some(load_draft(path, &file, &opts.model_options(), &opts.spec)?),
            None => None,
        };
        let per_pos = PagedCache::bytes_per_position(&model) as u128;
        let draft_per_pos = draft.as_ref().map_or(0, |d| PagedCache::bytes_per_position(d) as u128);
        // The cascade's smaller models share the budget the same way.
        let smaller_per_pos: u128 = smaller.as_ref().map_or(0, |(_, ms, _, _)| {
            ms.iter().map(|m| PagedCache::bytes_per_position(m) as u128).sum()
        });
        let all_per_pos = per_pos + draft_per_pos + smaller_per_pos;
        let share_of = |b: u128, mine: u128| b * mine / all_per_pos;
        let share = |b: u128| share_of(b, per_pos);
        // Sized before anything is allocated: a cache that cannot fit is refused with the numbers.
        let plan = EngineConfig::sized(
            &model,
            &KvSizing {
                max_batch: opts.max_batch,
                ctx: opts.ctx,
                kv_memory: opts.kv_memory.map(|b| share(b as u128) as usize),
                available: crate::model::memory::available_bytes().map(|a| share(a as u128) as u64),
                model_bytes: share(file.file_bytes as u128) as u64,
            },
        )?;
        let mut cfg = plan.cfg.clone();
        cfg.max_batched_tokens = opts.max_batched_tokens;
        cfg.prefix_caching = opts.prefix_caching;
        // The cascade's smaller models: an engine each, on its own thread.
        let mut stage_threads = Vec::new();
        let mut max_model_len = cfg.max_model_len;
        let (cascade, cascade_line) = match smaller {
            None => (None, None),
            Some((stages, models, judge, last)) => {
                let mut workers = Vec::new();
                for ((m, f), id) in models.into_iter().zip(&stages.files).zip(&stages.ids) {
                    let mine = PagedCache::bytes_per_position(&m) as u128;
                    let p = EngineConfig::sized(
                        &m,
                        &KvSizing {
                            max_batch: opts.max_batch,
                            ctx: opts.ctx,
                            kv_memory: opts.kv_memory.map(|b| share_of(b as u128, mine) as usize),
                            available: crate::model::memory::available_bytes()
                                .map(|a| share_of(a as u128, mine) as u64),
                            model_bytes: share_of(f.file_bytes as u128, mine) as u64,
                        },
                    )?;
                    let mut c = p.cfg.clone();
                    c.max_batched_tokens = opts.max_batched_tokens;
                    c.prefix_caching = opts.prefix_caching;
                    max_model_len = max_model_len.min(c.max_model_len);
                    let engine = Engine::new(m, f.eos_ids.clone(), c);
                    // Each stage's engine keeps its own gauges; /metrics shows the largest model's.
                    let (w, h) = Worker::spawn(engine, opts.max_queue, Arc::new(Mutex::new(Metrics::default())));
                    workers.push((w, id.name.clone()));
                    stage_threads.push(h);
                }
                let threshold = opts.cascade.as_ref().map_or(0.5, |c| c.threshold);
                let names: Vec<String> = workers.iter().map(|w| w.1.clone()).chain([last.clone()]).collect();
                let line = format!("{} (threshold {threshold}, judge: {})", names.join(" → "), judge.name());
                (
                    Some(cascade::Cascade {
                        stages: workers,
                        last,
                        judge,
                        threshold,
                    }),
                    Some(line),
                )
            }
        };
        // The model's own template and end-of-turn tokens, as `bushu chat` uses them (ChatML when the
        // file has no template, as llama-server falls back to).
        let (template, chat_stop_ids, _) = template_for(&file).context("the model's chat template")?;
        let model_id = opts.model_name.clone().unwrap_or_else(|| {
            opts.model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        let model_alias = opts
            .model
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|a| *a != model_id);
        let vocab = model.config.vocab_size;
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        if let Some(c) = &cascade {
            let names = c.stages.iter().map(|s| s.1.clone()).chain([c.last.clone()]);
            metrics.lock().unwrap().cascade = names.map(|n| (n, 0)).collect();
        }
        let mut grammar_eos = file.eos_ids.clone();
        grammar_eos.extend(chat_stop_ids.iter().filter(|t| !file.eos_ids.contains(t)));
        let structured = Arc::new(structured::Structured::new(
            file.tokenizer.clone(),
            model.config.vocab_size,
            grammar_eos,
            file.chat_template
                .as_deref()
                .or(file.tokenizer.chat_template())
                .is_some_and(|t| t.contains("tools")),
        ));
        let mut engine = Engine::new(model, file.eos_ids.clone(), cfg.clone());
        let method = match &opts.spec.method {
            Speculation::Off => None,
            Speculation::Lookup { ngram } => Some(Method::Lookup(PromptLookup::new(*ngram)?)),
            Speculation::SelfSpeculate { layers } => Some(Method::SelfSpeculate { layers: *layers }),
            Speculation::Medusa { .. } => {
                anyhow::bail!("--medusa is for bushu run and chat: the serving engine does not draft with heads")
            }
            Speculation::DraftModel(_) => {
                let draft = draft.expect("the draft model was loaded");
                Some(Method::DraftModel(draft_runner(draft, &engine.runner)?))
            }
            Speculation::LookupThenDraft { ngram, .. } => {
                let draft = draft.expect("the draft model was loaded");
                Some(Method::LookupThenDraft(
                    PromptLookup::new(*ngram)?,
                    draft_runner(draft, &engine.runner)?,
                ))
            }
        };
        if let Some(method) = method {
            let spec = &opts.spec;
            let mut s = Speculator::new(method, spec.length, spec.p_min, &engine.runner)?;
            s.max_batch = opts.spec_max_batch;
            engine.spec = Some(s);
        }
        let speculation = engine.spec.as_ref().map(|s| {
            let l = &opts.spec.length;
            let cache = match s.draft_cache_bytes() {
                Some(b) => format!(", its KV cache {:.1} MiB", b as f64 / (1 << 20) as f64),
                None => String::new(),
            };
            let batch = match s.max_batch {
                n if n > 0 && n < opts.max_batch => format!(", in steps of at most {n} decoding sequences"),
                _ => String::new(),
            };
            format!(
                "{} (up to {} drafts per step, at least {}{batch}{cache})",
                s.name(),
                l.max,
                l.min
            )
        });
        // The cache's gauges from the start (a step publishes them after), for /metrics and /api/ps.
        metrics.lock().unwrap().gauges = engine.gauges();
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
            model_alias,
            vocab,
            generation: file.generation.clone(),
            loaded: routes::Loaded {
                path: opts.model.display().to_string(),
                file_bytes: file.file_bytes,
                kv_type: opts.kv_type.name(),
                block_size: cfg.block_size,
                kv_bytes_per_position: cfg.kv_bytes_per_position,
            },
            api_key: opts.api_key.clone(),
            metrics_public: opts.metrics_public,
            metrics,
            max_model_len,
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            created,
            structured,
            cascade,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (grace, signals) = (opts.grace, opts.handle_signals);
        let limits = ConnLimits {
            max_connections: opts.max_connections.max(1),
            header_timeout: opts.header_timeout,
        };
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
                    serve_http(listener, app, limits, shutdown).await;
                    worker.send(Command::Stop);
                    if let Some(c) = &state.cascade {
                        for (w, _) in &c.stages {
                            w.send(Command::Stop);
                        }
                    }
                    Ok::<(), anyhow::Error>(())
                })?;
                let _ = engine_thread.join();
                for h in stage_threads {
                    let _ = h.join();
                }
                Ok(())
            })?;
        Ok(Server {
            addr,
            engine: cfg,
            speculation,
            kv_plan: plan,
            cascade: cascade_line,
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

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max_connections: usize,
    header_timeout: Duration,
}

/// The accept loop (axum's `serve` with the limits it does not expose): HTTP/1.1 connections with a
/// header-read timeout (which also ends idle keep-alive connections) and bounded headers, at most
/// `max_connections` of them (the next ones get a 503 and are closed). On `shutdown` it stops
/// accepting and waits for the open connections to finish their requests.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 << 10)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(c) => c,
                // Out of file descriptors and the like: wait, then go on accepting.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection beyond the cap: a 503 in OpenAI's JSON, then closed.
async fn refuse_connection(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::json!({"error": {
        "message": format!("the server has {max} connections open (--max-connections); retry later"),
        "type": "service_unavailable",
        "param": null,
        "code": 503,
    }})
    .to_string();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(resp.as_bytes())).await;
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
