//! The HTTP endpoints: OpenAI's completions, chat completions and models, plus health and Prometheus
//! metrics; bearer-key authentication on `/v1` (and `/metrics`); OpenAI-style JSON for every error;
//! SSE streaming.

use super::api::{self, ChatRequest, CompletionRequest, Plan, Prompt, Prompted};
use super::error::ApiError;
use super::respond::{Collector, Kind};
use super::worker::{Command, Worker};
use crate::chat::{ChatTemplate, Message};
use crate::engine::metrics::Metrics;
use crate::engine::{Output, SeqId};
use crate::tokenizer::Tokenizer;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct AppState {
    pub worker: Worker,
    pub tokenizer: Tokenizer,
    /// The model's chat template (ChatML when its file has none).
    pub template: ChatTemplate,
    /// The tokens that end a chat answer besides the model's EOS: the template's end-of-turn marker.
    pub chat_stop_ids: Vec<u32>,
    pub model_id: String,
    /// Another name `model` may give: the file name without its extension.
    pub model_alias: Option<String>,
    /// The model's vocabulary size.
    pub vocab: usize,
    /// The sampling values the model ships (defaults of the requests' fields).
    pub generation: crate::model::GenerationDefaults,
    /// What `/api/ps` reports besides the live gauges: the model file's size, the KV cache's layout.
    pub loaded: Loaded,
    pub api_key: Option<String>,
    /// `/metrics` without the key even when there is one (`--metrics-public`).
    pub metrics_public: bool,
    pub metrics: Arc<Mutex<Metrics>>,
    pub max_model_len: usize,
    pub shutting_down: AtomicBool,
    pub next_id: AtomicU64,
    pub created: u64,
    /// Structured output: the grammar compiler (`super::structured`).
    pub structured: Arc<super::structured::Structured>,
    /// Cascade decoding (`--cascade`): the smaller models' engines; `worker` is the largest model's.
    pub cascade: Option<super::cascade::Cascade>,
}

/// The loaded model and its KV cache, as `GET /api/ps` (`bushu ps`) reports them.
pub struct Loaded {
    /// The model file (or directory) served.
    pub path: String,
    /// Bytes of its weight files.
    pub file_bytes: u64,
    /// `f32` or `int8`.
    pub kv_type: &'static str,
    pub block_size: usize,
    pub kv_bytes_per_position: usize,
}

/// Largest request body (OpenAI's own limit is larger, but a prompt of a few thousand tokens is far
/// below this).
pub const MAX_BODY: usize = 2 << 20;
/// How long a client has to send a request's body once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/api/ps", get(ps))
        .layer(middleware::from_fn(intake))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route(
            "/metrics",
            get(metrics).layer(middleware::from_fn_with_state(state.clone(), metrics_auth)),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Whatever answers with an error that is not already OpenAI's JSON (axum's and hyper's own 4xx
/// responses: 405, 413, 415, 408, ...) gets it, with the status's reason as the message.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&body);
    let reason = status.canonical_reason().unwrap_or("error");
    let msg = match detail.trim() {
        "" => reason.to_string(),
        d => format!("{reason}: {d}"),
    };
    ApiError::new(status, msg).into_response()
}

/// Before a `/v1` POST handler: the body must be JSON (415 otherwise), at most [`MAX_BODY`] bytes
/// (413) and arrive within [`BODY_TIMEOUT`] (408); it is read here, whole, so a handler never waits
/// on a slow client.
async fn intake(req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)",
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )
            .into_response()
        }
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} bytes (or was cut short)", MAX_BODY),
            )
            .into_response()
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The key of an `Authorization` header: scheme `Bearer` in any case, as RFC 9110 has it.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Whether `given` is `key`, in a time that does not depend on where they differ (nor on the key's
/// length): their SHA-256 digests are compared byte by byte without an early exit.
fn same_key(given: &str, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(key.as_bytes()));
    let diff = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The key check itself: `None` when the request may go on.
fn check_key(st: &AppState, req: &Request) -> Option<Response> {
    let key = st.api_key.as_ref()?;
    let given = bearer(req);
    if given.is_some_and(|g| same_key(g, key)) {
        return None;
    }
    let msg = if given.is_none() {
        "missing API key (Authorization: Bearer ...)"
    } else {
        "invalid API key"
    };
    Some(ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response())
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(refused) = check_key(&st, &req) {
        return refused;
    }
    if st.shutting_down.load(Ordering::Relaxed) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response();
    }
    next.run(req).await
}

/// `/metrics` (request and token counts) asks for the key too, unless `--metrics-public`.
async fn metrics_auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !st.metrics_public {
        if let Some(refused) = check_key(&st, &req) {
            return refused;
        }
    }
    next.run(req).await
}

/// Counts responses by status for `/metrics`.
async fn count_status(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let counted = req.uri().path().starts_with("/v1/") && req.uri().path() != "/v1/models";
    let resp = next.run(req).await;
    if counted {
        st.metrics.lock().unwrap().request(resp.status().as_str());
    }
    resp
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let body = st.metrics.lock().unwrap().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// ollama's `GET /api/ps`: what is loaded, and how much of its KV cache is in use (blocks held by running
/// sequences; blocks that only keep a finished prefix for reuse count as cached, not used).
async fn ps(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let g = st.metrics.lock().unwrap().gauges;
    let l = &st.loaded;
    let block_bytes = (l.block_size * l.kv_bytes_per_position) as u64;
    let used = g.kv_blocks_total.saturating_sub(g.kv_blocks_free);
    Json(json!({"models": [{
        "name": st.model_id,
        "model": l.path,
        "size": l.file_bytes,
        "context_length": st.max_model_len,
        "running": g.running,
        "waiting": g.waiting,
        "kv_cache": {
            "type": l.kv_type,
            "block_size": l.block_size,
            "blocks_total": g.kv_blocks_total,
            "blocks_used": used,
            "blocks_cached": g.kv_blocks_cached,
            "bytes_total": g.kv_blocks_total as u64 * block_bytes,
            "bytes_used": used as u64 * block_bytes,
        },
    }]}))
}

async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.model_id,
        "object": "model",
        "created": st.created,
        "owned_by": "bushu",
        "max_model_len": st.max_model_len,
    }]}))
}

/// The model a request names must be the one loaded: its id (`--model-name`, else the file name) or
/// the file name without its extension. A request without `model` gets the loaded one.
fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None => Ok(()),
        Some(m) if m == st.model_id || st.model_alias.as_deref() == Some(m) => Ok(()),
        Some(m) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{}` does not exist. This server serves `{}`.",
                m.escape_debug(),
                st.model_id
            ),
        )
        .param("model")),
    }
}

/// A logprobs count (`logprobs` of completions, `top_logprobs` of chat): 0 to 20.
fn logprobs_count(k: Option<i64>, name: &'static str) -> Result<Option<usize>, ApiError> {
    match k {
        None => Ok(None),
        Some(k @ 0..=20) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::bad_request(format!("{name} must be between 0 and 20 (got {k})")).param(name)),
    }
}

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r: CompletionRequest = api::parse_request(&body, api::COMPLETION_FIELDS)?;
    check_model(&st, r.common.model.as_deref())?;
    let encode = |s: &str| st.tokenizer.encode(s, true).map_err(ApiError::from);
    let (prompt, text) = match &r.prompt {
        Prompt::Text(s) => (encode(s)?, Some(s.clone())),
        Prompt::Texts(v) if v.len() == 1 => (encode(&v[0])?, Some(v[0].clone())),
        Prompt::Tokens(t) => (t.clone(), None),
        Prompt::TokenLists(v) if v.len() == 1 => (v[0].clone(), None),
        _ => return Err(ApiError::bad_request("send one prompt per request").param("prompt")),
    };
    let logprobs = logprobs_count(r.logprobs, "logprobs")?;
    // `echo`: the prompt's text before each choice's (the prompt's logprobs are not computed).
    let echo = match (r.echo, logprobs) {
        (false, _) => None,
        (true, Some(_)) => {
            return Err(
                ApiError::bad_request("echo with logprobs is not supported (prompt logprobs are not computed)")
                    .param("echo"),
            )
        }
        (true, None) => Some(match text {
            Some(t) => t,
            None => st.tokenizer.decode(&prompt),
        }),
    };
    let prompted = Prompted {
        tokens: prompt,
        max_default: 16,
        max_model_len: st.max_model_len,
        vocab: st.vocab,
        generation: st.generation.clone(),
        prompt_name: "prompt",
        logprobs,
        stop_ids: Vec::new(),
    };
    let mut plan = api::plan(&r.common, prompted)?;
    st.structured
        .apply(&r.common.structured, r.common.ignore_eos, &mut plan)
        .await?;
    let id = format!("cmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    generate(st, plan, Kind::Completion, id, logprobs.is_some(), echo, None).await
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r: ChatRequest = api::parse_request(&body, api::CHAT_FIELDS)?;
    check_model(&st, r.common.model.as_deref())?;
    if r.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    // Roles and message fields checked first, whichever way the conversation is rendered.
    for m in &r.messages {
        m.role()?;
    }
    let tools = super::tools::Tools::parse(r.tools.as_ref(), r.tool_choice.as_ref(), r.parallel_tool_calls)?;
    let text = if tools.is_some() || r.messages.iter().any(|m| m.is_tool_exchange()) {
        let raw = r
            .messages
            .iter()
            .map(|m| m.to_value())
            .collect::<Result<Vec<_>, ApiError>>()?;
        super::tools::render(tools.as_ref(), &st.template, st.structured.native_tools, &raw)?
    } else {
        let messages = r
            .messages
            .iter()
            .map(|m| Ok(Message::new(m.role()?, &m.text()?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        st.template
            .render(&messages, true)
            .map_err(|e| ApiError::bad_request(format!("chat template: {e:#}")))?
    };
    let prompt = st.tokenizer.encode_with(&text, false, true)?;
    let top = logprobs_count(r.top_logprobs, "top_logprobs")?;
    let logprobs = match (r.logprobs, top) {
        (false, Some(_)) => {
            return Err(ApiError::bad_request("top_logprobs needs logprobs: true").param("top_logprobs"))
        }
        (false, None) => None,
        (true, k) => Some(k.unwrap_or(0)),
    };
    let prompted = Prompted {
        max_default: st.max_model_len,
        max_model_len: st.max_model_len,
        vocab: st.vocab,
        generation: st.generation.clone(),
        prompt_name: "messages",
        tokens: prompt,
        logprobs,
        stop_ids: st.chat_stop_ids.clone(),
    };
    let mut plan = api::plan(&r.common, prompted)?;
    st.structured
        .apply(&r.common.structured, r.common.ignore_eos, &mut plan)
        .await?;
    let tools = tools.filter(|t| t.active());
    if let Some(c) = tools.as_ref().and_then(|t| t.constraint()) {
        if r.common.structured.constraint()?.is_some() {
            return Err(ApiError::bad_request(
                "tool_choice required or a named function cannot be combined with response_format or guided_* fields",
            )
            .param("tool_choice"));
        }
        let g = st.structured.compile(c, "tools").await?;
        st.structured.attach(g, r.common.ignore_eos, "tool_choice", &mut plan)?;
    }
    let id = format!("chatcmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    generate(st, plan, Kind::Chat, id, r.logprobs, None, tools).await
}

/// A request's sequences in the engine; dropping it (finished, or the client went away) cancels
/// whatever is still running and so frees its blocks.
struct Submission {
    worker: Worker,
    rx: mpsc::UnboundedReceiver<Output>,
    col: Collector,
    metrics: Arc<Mutex<Metrics>>,
    arrival: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Submission {
    /// The next change for the client, or `None` once every choice has finished.
    async fn next(&mut self) -> Option<super::respond::Delta> {
        while !self.col.done() {
            let o = self.rx.recv().await?;
            let Some(d) = self.col.push(o) else { continue };
            if let Some(seq) = d.cancel {
                self.worker.send(Command::Cancel(vec![seq]));
            }
            if d.token {
                let now = Instant::now();
                let mut m = self.metrics.lock().unwrap();
                match self.last_token {
                    None => {
                        m.ttft.observe((now - self.arrival).as_secs_f64());
                        self.first_token = Some(now);
                    }
                    Some(t) => m.itl.observe((now - t).as_secs_f64()),
                }
                self.last_token = Some(now);
            }
            return Some(d);
        }
        None
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        let log = super::request_log::RequestLog {
            id: &self.col.id,
            prompt_tokens: self.col.prompt_tokens,
            cached_tokens: self.col.cached_tokens,
            completion_tokens: self.col.completion_tokens(),
            ttft: self.first_token.map(|t| t - self.arrival),
            total: self.arrival.elapsed(),
            finishes: self.col.finishes(),
        };
        eprintln!("{}", log.line());
        let left: Vec<SeqId> = self.col.unfinished();
        let mut m = self.metrics.lock().unwrap();
        if left.is_empty() {
            m.e2e.observe(self.arrival.elapsed().as_secs_f64());
        } else {
            m.request("cancelled");
            self.worker.send(Command::Cancel(left));
        }
    }
}

async fn generate(
    st: Arc<AppState>,
    plan: Plan,
    kind: Kind,
    id: String,
    want_logprobs: bool,
    echo: Option<String>,
    tools: Option<super::tools::Tools>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let prompt_tokens = plan.requests[0].prompt.len();
    // A cascade: the smaller models answer first; a kept answer is replayed, else the largest answers.
    let decided = match &st.cascade {
        Some(c) => Some(c.decide(&plan.requests).await?),
        None => None,
    };
    if let Some(d) = &decided {
        if let Some(n) = st.metrics.lock().unwrap().cascade.get_mut(d.stage) {
            n.1 += 1;
        }
    }
    let cascade_info = decided.as_ref().map(|d| d.info.clone());
    let (worker, ids, rx) = match decided.and_then(|d| d.replay) {
        Some(r) => r,
        None => {
            let (ids, rx) = st
                .worker
                .submit(plan.requests)
                .await
                .map_err(super::cascade::submit_error)?;
            (st.worker.clone(), ids, rx)
        }
    };
    let col = Collector::new(
        kind,
        id.clone(),
        st.model_id.clone(),
        &st.tokenizer,
        &ids,
        &plan.stops,
        prompt_tokens * plan.n,
        want_logprobs,
        echo,
    );
    let mut sub = Submission {
        worker,
        rx,
        col,
        metrics: st.metrics.clone(),
        arrival,
        first_token: None,
        last_token: None,
    };
    if !plan.stream {
        while sub.next().await.is_some() {}
        if !sub.col.done() {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped"));
        }
        if sub.col.failed() {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, st.worker.last_error()));
        }
        let mut resp = sub.col.response();
        if let Some(t) = &tools {
            t.rewrite(&mut resp, &id);
        }
        if let Some(info) = &cascade_info {
            resp["cascade"] = info.clone();
        }
        return Ok(with_stage(Json(resp).into_response(), cascade_info.as_ref()));
    }
    // Streaming: a task feeds the SSE body; when the client disconnects the body is dropped, the
    // task's send fails, and dropping the submission cancels the sequences.
    let (tx, body) = mpsc::channel::<Result<Event, Infallible>>(64);
    let include_usage = plan.include_usage;
    let header_info = cascade_info.clone();
    // Tools: each choice's text turned into OpenAI's content and tool-call deltas as it comes.
    let mut tool_streams: Option<Vec<super::tools::ToolStream>> = tools
        .as_ref()
        .map(|t| (0..plan.n).map(|i| super::tools::ToolStream::new(t, &id, i)).collect());
    tokio::spawn(async move {
        let mut announced = vec![false; plan.n];
        loop {
            let d = tokio::select! {
                d = sub.next() => d,
                _ = tx.closed() => return,
            };
            let Some(d) = d else { break };
            if d.finish == Some("error") {
                // As vLLM: an error object in the stream, then its end.
                let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, st.worker.last_error());
                let _ = tx.send(Ok(Event::default().data(e.body().to_string()))).await;
                break;
            }
            if d.text.is_empty() && d.finish.is_none() && d.logprobs.is_empty() {
                continue;
            }
            if let Some(ts) = &mut tool_streams {
                let t = &mut ts[d.index];
                let mut parts = t.push(&d.text);
                let finish = d.finish.map(|f| {
                    let (more, reason) = t.finish(f);
                    parts.extend(more);
                    reason
                });
                let mut deltas = super::tools::ToolStream::deltas(&parts);
                if deltas.is_empty() && !d.logprobs.is_empty() {
                    deltas.push(json!({}));
                }
                for (k, mut delta) in deltas.into_iter().enumerate() {
                    if !std::mem::replace(&mut announced[d.index], true) {
                        delta["role"] = json!("assistant");
                    }
                    let lp: &[serde_json::Value] = if k == 0 { &d.logprobs } else { &[] };
                    let chunk = sub.col.chat_chunk(d.index, delta, lp, None);
                    if !send_chunk(&tx, chunk, cascade_info.as_ref()).await {
                        return;
                    }
                }
                if let Some(f) = finish {
                    let mut delta = json!({});
                    if !std::mem::replace(&mut announced[d.index], true) {
                        delta["role"] = json!("assistant");
                    }
                    let chunk = sub.col.chat_chunk(d.index, delta, &[], Some(f.as_str()));
                    if !send_chunk(&tx, chunk, cascade_info.as_ref()).await {
                        return;
                    }
                }
                continue;
            }
            let first = !std::mem::replace(&mut announced[d.index], true);
            if !send_chunk(&tx, sub.col.chunk(&d, first), cascade_info.as_ref()).await {
                return;
            }
        }
        if include_usage {
            let _ = tx
                .send(Ok(Event::default().data(sub.col.usage_chunk().to_string())))
                .await;
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    Ok(with_stage(
        Sse::new(stream).keep_alive(KeepAlive::default()).into_response(),
        header_info.as_ref(),
    ))
}

/// Sends one chunk of a stream, with the cascade's stage when a cascade answered; false once the client
/// is gone.
async fn send_chunk(
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    mut chunk: serde_json::Value,
    cascade: Option<&serde_json::Value>,
) -> bool {
    if let Some(info) = cascade {
        chunk["cascade"] = info.clone();
    }
    tx.send(Ok(Event::default().data(chunk.to_string()))).await.is_ok()
}

/// A cascade's answer says which stage answered in the `x-bushu-cascade-stage` header too.
fn with_stage(mut r: Response, info: Option<&serde_json::Value>) -> Response {
    if let Some(stage) = info.and_then(|i| i["stage"].as_u64()) {
        r.headers_mut().insert("x-bushu-cascade-stage", stage.into());
    }
    r
}
