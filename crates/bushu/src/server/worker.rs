//! The engine's own thread: it takes submissions and cancellations between steps, runs the step loop
//! while there is work (sleeping on its queue when there is none), and routes each step's tokens to
//! the request that owns the sequence. A request whose receiver is gone (client disconnected) has its
//! sequences cancelled, which frees their blocks.

use crate::engine::metrics::Metrics;
use crate::engine::{Engine, FinishReason, Output, Request, SeqId};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc as tmpsc, oneshot};

pub enum Command {
    /// Queue the choices of one request; replies with their sequence ids.
    Submit {
        reqs: Vec<Request>,
        events: tmpsc::UnboundedSender<Output>,
        reply: oneshot::Sender<Result<Vec<SeqId>, SubmitError>>,
    },
    Cancel(Vec<SeqId>),
    /// Cancel everything in flight (end of graceful shutdown).
    CancelAll,
    Stop,
}

#[derive(Debug)]
pub enum SubmitError {
    QueueFull { waiting: usize, max: usize },
    Invalid(String),
}

/// Handle to the engine thread.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Command>,
    /// Why the last failed step failed (its sequences end with [`crate::engine::FinishReason::Error`]).
    last_error: Arc<Mutex<String>>,
}

impl Worker {
    /// Starts the thread.
    pub fn spawn(
        engine: Engine,
        max_queue: usize,
        metrics: Arc<Mutex<Metrics>>,
    ) -> (Worker, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let last_error = Arc::new(Mutex::new(String::new()));
        let errors = last_error.clone();
        let h = std::thread::Builder::new()
            .name("bushu-engine".into())
            .spawn(move || run(engine, rx, max_queue, metrics, errors))
            .expect("spawn the engine thread");
        (Worker { tx, last_error }, h)
    }

    /// The message of the last failed engine step.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap().clone()
    }

    pub fn send(&self, c: Command) {
        let _ = self.tx.send(c);
    }

    /// Submits requests; the receiver gets every output of their sequences.
    pub async fn submit(
        &self,
        reqs: Vec<Request>,
    ) -> Result<(Vec<SeqId>, tmpsc::UnboundedReceiver<Output>), SubmitError> {
        let (events, rx) = tmpsc::unbounded_channel();
        let (reply, wait) = oneshot::channel();
        self.send(Command::Submit { reqs, events, reply });
        match wait.await {
            Ok(r) => r.map(|ids| (ids, rx)),
            Err(_) => Err(SubmitError::Invalid("the engine has stopped".into())),
        }
    }
}

fn run(
    mut engine: Engine,
    rx: mpsc::Receiver<Command>,
    max_queue: usize,
    metrics: Arc<Mutex<Metrics>>,
    last_error: Arc<Mutex<String>>,
) {
    let mut routes: HashMap<SeqId, tmpsc::UnboundedSender<Output>> = HashMap::new();
    loop {
        // Block for a command when idle; otherwise take what is queued and step.
        let first = if engine.has_work() {
            rx.try_recv().ok()
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        let mut cmds: Vec<Command> = first.into_iter().collect();
        cmds.extend(rx.try_iter());
        for c in cmds {
            match c {
                Command::Submit { reqs, events, reply } => {
                    let waiting = engine.sched.num_waiting();
                    if waiting + reqs.len() > max_queue {
                        let _ = reply.send(Err(SubmitError::QueueFull {
                            waiting,
                            max: max_queue,
                        }));
                        continue;
                    }
                    if let Some(e) = reqs.iter().find_map(|r| engine.check(r).err()) {
                        let _ = reply.send(Err(SubmitError::Invalid(format!("{e:#}"))));
                        continue;
                    }
                    let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
                    let constrained = reqs.iter().any(|r| r.sampling.grammar.is_some());
                    let ids: Vec<SeqId> = reqs.into_iter().map(|r| engine.add(r).expect("checked")).collect();
                    for &id in &ids {
                        routes.insert(id, events.clone());
                    }
                    {
                        let mut m = metrics.lock().unwrap();
                        m.prompt_tokens += prompt_tokens as u64;
                        m.structured_requests += constrained as u64;
                    }
                    if reply.send(Ok(ids.clone())).is_err() {
                        cancel(&mut engine, &mut routes, &ids);
                    }
                }
                Command::Cancel(ids) => cancel(&mut engine, &mut routes, &ids),
                Command::CancelAll => {
                    let ids: Vec<SeqId> = routes.keys().copied().collect();
                    cancel(&mut engine, &mut routes, &ids);
                }
                Command::Stop => {
                    let ids: Vec<SeqId> = routes.keys().copied().collect();
                    cancel(&mut engine, &mut routes, &ids);
                    return;
                }
            }
        }
        // Clients that went away since the last step.
        let gone: Vec<SeqId> = routes
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        cancel(&mut engine, &mut routes, &gone);
        if !engine.has_work() {
            publish(&engine, &metrics, 0);
            continue;
        }
        let outputs = match engine.step() {
            Ok(o) => o,
            Err(e) => {
                // A failed step (non-finite logits from a broken model, ...): end every sequence in
                // flight with the error, which their requests report, rather than spin.
                let msg = format!("{e:#}");
                eprintln!(
                    "bushu serve: engine step failed: {}",
                    crate::display::escape_controls(&msg)
                );
                *last_error.lock().unwrap() = msg;
                let ids: Vec<SeqId> = routes.keys().copied().collect();
                end(&mut engine, &mut routes, &ids, FinishReason::Error);
                continue;
            }
        };
        // The metrics first: a client that has its answer sees a /metrics that counts it.
        let tokens = outputs.iter().map(|o| o.tokens.len()).sum();
        publish(&engine, &metrics, tokens);
        for o in outputs {
            let (id, finished) = (o.seq, o.finish.is_some());
            let delivered = routes.get(&id).is_some_and(|tx| tx.send(o).is_ok());
            if finished {
                routes.remove(&id);
            } else if !delivered {
                cancel(&mut engine, &mut routes, &[id]);
            }
        }
    }
}

/// Aborts sequences and tells their requests (if still listening).
fn cancel(engine: &mut Engine, routes: &mut HashMap<SeqId, tmpsc::UnboundedSender<Output>>, ids: &[SeqId]) {
    end(engine, routes, ids, FinishReason::Abort)
}

/// Ends sequences with `reason` and tells their requests (if still listening).
fn end(
    engine: &mut Engine,
    routes: &mut HashMap<SeqId, tmpsc::UnboundedSender<Output>>,
    ids: &[SeqId],
    reason: FinishReason,
) {
    for &id in ids {
        engine.abort(id);
        if let Some(tx) = routes.remove(&id) {
            let _ = tx.send(Output {
                seq: id,
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: Some(reason),
                cached_tokens: 0,
                verified: Default::default(),
                forced: Default::default(),
            });
        }
    }
}

fn publish(engine: &Engine, metrics: &Mutex<Metrics>, tokens: usize) {
    let mut m = metrics.lock().unwrap();
    m.gauges = engine.gauges();
    m.forced = engine.forced;
    if let Some(spec) = &engine.spec {
        m.spec = Some(spec.counters.clone());
    }
    m.generation_tokens += tokens as u64;
}
