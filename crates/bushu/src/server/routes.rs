//! The HTTP endpoints: OpenAI's completions, chat completions and models, plus health and Prometheus
//! metrics; bearer-key authentication on `/v1`; SSE streaming.

use super::api::{self, ChatRequest, CompletionRequest, Plan, Prompt, Prompted};
use super::error::ApiError;
use super::respond::{Collector, Kind};
use super::worker::{Command, SubmitError, Worker};
use crate::chat::{ChatTemplate, Message};
use crate::engine::metrics::Metrics;
use crate::engine::{Output, SeqId};
use crate::tokenizer::Tokenizer;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

pub struct AppState {
    pub worker: Worker,
    pub tokenizer: Tokenizer,
    /// The model's chat template (ChatML when its file has none).
    pub template: ChatTemplate,
    /// The tokens that end a chat answer besides the model's EOS: the template's end-of-turn marker.
    pub chat_stop_ids: Vec<u32>,
    pub model_id: String,
    pub api_key: Option<String>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub max_model_len: usize,
    pub shutting_down: AtomicBool,
    pub next_id: AtomicU64,
    pub created: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .with_state(state)
}

/// `Authorization: Bearer KEY` when the server has a key.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let msg = if given.is_none() {
                "missing API key (Authorization: Bearer ...)"
            } else {
                "invalid API key"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
        }
    }
    if st.shutting_down.load(Ordering::Relaxed) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response();
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

async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.model_id,
        "object": "model",
        "created": st.created,
        "owned_by": "bushu",
        "max_model_len": st.max_model_len,
    }]}))
}

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r: CompletionRequest = api::parse(&body)?;
    let encode = |s: &str| st.tokenizer.encode(s, true).map_err(ApiError::from);
    let prompt = match &r.prompt {
        Prompt::Text(s) => encode(s)?,
        Prompt::Texts(v) if v.len() == 1 => encode(&v[0])?,
        Prompt::Tokens(t) => t.clone(),
        Prompt::TokenLists(v) if v.len() == 1 => v[0].clone(),
        _ => return Err(ApiError::bad_request("send one prompt per request").param("prompt")),
    };
    let logprobs = r.logprobs.map(|k| k.max(0) as usize);
    let prompted = Prompted {
        tokens: prompt,
        max_default: 16,
        logprobs,
        stop_ids: Vec::new(),
    };
    let plan = api::plan(&r.common, prompted)?;
    let id = format!("cmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    generate(st, plan, Kind::Completion, id, logprobs.is_some()).await
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r: ChatRequest = api::parse(&body)?;
    if r.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let messages = r
        .messages
        .iter()
        .map(|m| Ok(Message::new(&m.role, &m.text()?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = st
        .template
        .render(&messages, true)
        .map_err(|e| ApiError::bad_request(format!("chat template: {e:#}")))?;
    let prompt = st.tokenizer.encode_with(&text, false, true)?;
    let logprobs = match (r.logprobs, r.top_logprobs) {
        (false, _) => None,
        (true, k) => Some(k.unwrap_or(0).max(0) as usize),
    };
    let prompted = Prompted {
        max_default: st.max_model_len.saturating_sub(prompt.len()).max(1),
        tokens: prompt,
        logprobs,
        stop_ids: st.chat_stop_ids.clone(),
    };
    let plan = api::plan(&r.common, prompted)?;
    let id = format!("chatcmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    generate(st, plan, Kind::Chat, id, r.logprobs).await
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
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let prompt_tokens = plan.requests[0].prompt.len();
    let (ids, rx) = st.worker.submit(plan.requests).await.map_err(|e| match e {
        SubmitError::QueueFull { waiting, max } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the request queue is full ({waiting} sequences waiting, limit {max}); retry later"),
        ),
        SubmitError::Invalid(m) => ApiError::bad_request(m),
    })?;
    let col = Collector::new(
        kind,
        id,
        st.model_id.clone(),
        &st.tokenizer,
        &ids,
        &plan.stops,
        prompt_tokens * plan.n,
        want_logprobs,
    );
    let mut sub = Submission {
        worker: st.worker.clone(),
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
        return Ok(Json(sub.col.response()).into_response());
    }
    // Streaming: a task feeds the SSE body; when the client disconnects the body is dropped, the
    // task's send fails, and dropping the submission cancels the sequences.
    let (tx, body) = mpsc::channel::<Result<Event, Infallible>>(64);
    let include_usage = plan.include_usage;
    tokio::spawn(async move {
        let mut announced = vec![false; plan.n];
        loop {
            let d = tokio::select! {
                d = sub.next() => d,
                _ = tx.closed() => return,
            };
            let Some(d) = d else { break };
            if d.text.is_empty() && d.finish.is_none() && d.logprobs.is_empty() {
                continue;
            }
            let first = !std::mem::replace(&mut announced[d.index], true);
            let ev = Event::default().data(sub.col.chunk(&d, first).to_string());
            if tx.send(Ok(ev)).await.is_err() {
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
