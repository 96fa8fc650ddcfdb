//! Cascade decoding in the server (`bushu serve --cascade M1,M2[,M3]`): every model but the largest has
//! its own engine on its own thread ([`super::worker`]); a request goes to the smallest model's engine
//! first, with log-probabilities asked for ([`TOP_K`] alternatives, for the reliability features); when
//! all its choices have finished, the classifier judges them (a request is kept when its least reliable
//! choice reaches the threshold) and a kept answer is replayed to the request's collector as if it had
//! just been generated (with the logprobs the client asked for, or none); otherwise the next model
//! answers from scratch, the largest one on the server's main engine, streamed as usual. A stage's
//! answer is only known to be kept once it is complete, so answers of the smaller models stream in one
//! burst. The response says which stage answered (`"cascade"` in the body and each stream chunk, the
//! `x-bushu-cascade-stage` header); `/metrics` counts answers per stage (`bushu_cascade_answers_total`).

use super::error::ApiError;
use super::worker::{SubmitError, Worker};
use crate::cascade::features::{features, Step, TOP_K};
use crate::cascade::{accepts, Judge};
use crate::engine::{FinishReason, Output, Request, SeqId};
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// The cascade's stages before the largest model (which is the server's main engine).
pub struct Cascade {
    /// Each smaller model's engine and its name, smallest first.
    pub stages: Vec<(Worker, String)>,
    /// The largest model's name.
    pub last: String,
    pub judge: Judge,
    pub threshold: f64,
}

/// Where a request's answer comes from.
pub struct Decided {
    /// 0-based stage that answers (`stages.len()`: the largest model).
    pub stage: usize,
    /// What the response reports: stage (1-based), model, the reliabilities seen.
    pub info: Value,
    /// A smaller model's kept answer: its engine, its sequence ids and its outputs, replayed.
    pub replay: Option<(Worker, Vec<SeqId>, mpsc::UnboundedReceiver<Output>)>,
}

/// The error a refused submission gets.
pub fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { waiting, max } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the request queue is full ({waiting} sequences waiting, limit {max}); retry later"),
        ),
        SubmitError::Invalid(m) => ApiError::bad_request(m),
    }
}

impl Cascade {
    /// Runs `requests` (one request's choices) through the smaller models until one's answer is kept.
    pub async fn decide(&self, requests: &[Request]) -> Result<Decided, ApiError> {
        let mut scores = Vec::new();
        for (i, (worker, name)) in self.stages.iter().enumerate() {
            let reqs: Vec<Request> = requests
                .iter()
                .map(|r| Request {
                    logprobs: Some(r.logprobs.unwrap_or(0).max(TOP_K)),
                    ..r.clone()
                })
                .collect();
            let (ids, mut rx) = worker.submit(reqs).await.map_err(submit_error)?;
            let mut outputs = Vec::new();
            let mut steps: HashMap<SeqId, Vec<Step>> = HashMap::new();
            let mut left = ids.len();
            while left > 0 {
                let Some(o) = rx.recv().await else {
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped"));
                };
                if o.finish == Some(FinishReason::Error) {
                    return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, worker.last_error()));
                }
                let s = steps.entry(o.seq).or_default();
                s.extend(o.logprobs.iter().map(|l| Step {
                    logprob: l.logprob,
                    top: l.top.iter().take(TOP_K).map(|t| t.1).collect(),
                }));
                left -= o.finish.is_some() as usize;
                outputs.push(o);
            }
            // The request's reliability: its least reliable choice's.
            let score = ids
                .iter()
                .zip(requests)
                .map(|(id, r)| {
                    let f = features(steps.get(id).map_or(&[][..], |s| s), r.max_tokens);
                    self.judge.score(i, &f)
                })
                .fold(f64::INFINITY, f64::min);
            scores.push(score);
            if accepts(score, self.threshold) {
                let (tx, rx) = mpsc::unbounded_channel();
                let want: HashMap<SeqId, Option<usize>> =
                    ids.iter().zip(requests).map(|(&id, r)| (id, r.logprobs)).collect();
                for mut o in outputs {
                    match want.get(&o.seq).copied().flatten() {
                        Some(k) => o.logprobs.iter_mut().for_each(|l| l.top.truncate(k)),
                        None => o.logprobs.clear(),
                    }
                    let _ = tx.send(o);
                }
                return Ok(Decided {
                    stage: i,
                    info: self.info(i, name, &scores),
                    replay: Some((worker.clone(), ids, rx)),
                });
            }
        }
        let n = self.stages.len();
        Ok(Decided {
            stage: n,
            info: self.info(n, &self.last, &scores),
            replay: None,
        })
    }

    fn info(&self, stage: usize, model: &str, scores: &[f64]) -> Value {
        json!({
            "stage": stage + 1,
            "stages": self.stages.len() + 1,
            "model": model,
            "reliability": scores,
            "threshold": self.threshold,
        })
    }
}
