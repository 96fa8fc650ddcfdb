//! Turning a request's token stream into OpenAI response bodies: per choice, incremental
//! detokenization, stop strings (held back until they can no longer match), logprobs, finish reasons,
//! and the `usage` totals; whole responses and streaming chunks alike.

use crate::engine::{FinishReason, Output, SeqId};
use crate::generate::stop::StopMatcher;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

struct Choice {
    seq: SeqId,
    dec: StreamDecoder,
    stop: StopMatcher,
    text: String,
    tokens: usize,
    /// Log-probabilities, in the shape the endpoint returns.
    logprobs: Vec<Value>,
    finish: Option<&'static str>,
    /// Characters of text before each token (completions' `text_offset`).
    offset: usize,
    /// The prompt's text, still to go before the choice's first text (completions' `echo`).
    echo: Option<String>,
}

/// What one engine output changed for the client.
pub struct Delta {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<Value>,
    pub finish: Option<&'static str>,
    /// A stop string matched: the sequence should be cancelled.
    pub cancel: Option<SeqId>,
    pub token: bool,
}

pub struct Collector {
    pub kind: Kind,
    pub id: String,
    pub model: String,
    pub created: u64,
    tok: Tokenizer,
    choices: Vec<Choice>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    /// Speculative decoding: drafts verified for this request and kept (llama-server's `draft_n`,
    /// `draft_n_accepted`).
    pub draft_n: usize,
    pub draft_n_accepted: usize,
    want_logprobs: bool,
}

impl Collector {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Kind,
        id: String,
        model: String,
        tok: &Tokenizer,
        seqs: &[SeqId],
        stops: &[String],
        prompt_tokens: usize,
        want_logprobs: bool,
        echo: Option<String>,
    ) -> Collector {
        let choices = seqs
            .iter()
            .map(|&seq| Choice {
                seq,
                // Completions continue the prompt's text; a chat answer is decoded on its own.
                dec: match kind {
                    Kind::Completion => StreamDecoder::continuation(tok),
                    Kind::Chat => StreamDecoder::new(tok),
                },
                stop: StopMatcher::new(stops),
                text: String::new(),
                tokens: 0,
                logprobs: Vec::new(),
                finish: None,
                offset: 0,
                echo: echo.clone(),
            })
            .collect();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Collector {
            kind,
            id,
            model,
            created,
            tok: tok.clone(),
            choices,
            prompt_tokens,
            cached_tokens: 0,
            draft_n: 0,
            draft_n_accepted: 0,
            want_logprobs,
        }
    }

    /// Whether a choice ended because the engine failed.
    pub fn failed(&self) -> bool {
        self.choices.iter().any(|c| c.finish == Some("error"))
    }

    pub fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Each choice's finish reason (`None`: not finished).
    pub fn finishes(&self) -> Vec<Option<&'static str>> {
        self.choices.iter().map(|c| c.finish).collect()
    }

    /// Sequences not finished yet.
    pub fn unfinished(&self) -> Vec<SeqId> {
        self.choices
            .iter()
            .filter(|c| c.finish.is_none())
            .map(|c| c.seq)
            .collect()
    }

    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.tokens).sum()
    }

    /// Takes one engine output; `None` if it no longer matters (the choice already ended).
    pub fn push(&mut self, o: Output) -> Option<Delta> {
        let index = self.choices.iter().position(|c| c.seq == o.seq)?;
        let kind = self.kind;
        let c = &mut self.choices[index];
        if c.finish.is_some() {
            return None;
        }
        self.cached_tokens += o.cached_tokens;
        self.draft_n += o.verified.drafted;
        self.draft_n_accepted += o.verified.accepted;
        let mut piece = String::new();
        let mut logprobs = Vec::new();
        for (i, &t) in o.tokens.iter().enumerate() {
            c.tokens += 1;
            // Where this token's text starts: after the earlier tokens of this output.
            let offset = c.offset + piece.chars().count();
            let eos = i + 1 == o.tokens.len() && o.finish == Some(FinishReason::Stop);
            if !eos {
                piece.push_str(&c.dec.push(t));
            }
            if let (Some(lp), true) = (o.logprobs.get(i), self.want_logprobs) {
                let entry = match kind {
                    Kind::Chat => chat_logprob(&self.tok, t, lp.logprob, &lp.top),
                    Kind::Completion => json!({
                        "token": token_text(&self.tok, t),
                        "logprob": lp.logprob,
                        "top": lp.top.iter().map(|&(id, l)| (token_text(&self.tok, id), json!(l))).collect::<Map<_, _>>(),
                        "offset": offset,
                    }),
                };
                logprobs.push(entry);
            }
        }
        if o.finish.is_some() {
            piece.push_str(&c.dec.flush());
        }
        let (mut text, hit) = c.stop.push(&piece);
        let mut cancel = None;
        let finish = if hit {
            cancel = Some(c.seq);
            Some("stop")
        } else if let Some(r) = o.finish {
            text.push_str(&c.stop.finish());
            Some(r.as_str())
        } else {
            None
        };
        c.finish = finish;
        if let Some(e) = c.echo.take() {
            text.insert_str(0, &e);
        }
        c.offset += text.chars().count();
        c.text.push_str(&text);
        c.logprobs.extend(logprobs.iter().cloned());
        Some(Delta {
            index,
            text,
            logprobs,
            finish,
            cancel,
            token: !o.tokens.is_empty(),
        })
    }

    pub fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole response.
    pub fn response(&self) -> Value {
        let choices = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let lp = self.logprobs_value(&c.logprobs);
                match self.kind {
                    Kind::Completion => json!({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish}),
                    Kind::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": lp,
                        "finish_reason": c.finish,
                    }),
                }
            })
            .collect();
        let mut v = self.envelope(false, choices);
        v["usage"] = self.usage();
        self.add_timings(&mut v);
        v
    }

    /// With speculative decoding, llama-server's `timings.draft_n` / `draft_n_accepted`.
    fn add_timings(&self, v: &mut Value) {
        if self.draft_n > 0 {
            v["timings"] = json!({"draft_n": self.draft_n, "draft_n_accepted": self.draft_n_accepted});
        }
    }

    /// A streaming chunk for one delta (`first`: the chat chunk that announces the role).
    pub fn chunk(&self, d: &Delta, first: bool) -> Value {
        let lp = self.logprobs_value(&d.logprobs);
        let choice = match self.kind {
            Kind::Completion => json!({"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish}),
            Kind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": d.text})
                } else {
                    json!({"content": d.text})
                };
                json!({"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": d.finish})
            }
        };
        self.envelope(true, vec![choice])
    }

    /// A chat streaming chunk for choice `index` with a given `delta` (tool calls: [`super::tools::ToolStream`]).
    pub fn chat_chunk(&self, index: usize, delta: Value, logprobs: &[Value], finish: Option<&str>) -> Value {
        let lp = self.logprobs_value(logprobs);
        self.envelope(
            true,
            vec![json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish})],
        )
    }

    /// The last streaming chunk when usage is asked for: no choices, the totals.
    pub fn usage_chunk(&self) -> Value {
        let mut v = self.envelope(true, Vec::new());
        v["usage"] = self.usage();
        self.add_timings(&mut v);
        v
    }

    fn logprobs_value(&self, entries: &[Value]) -> Value {
        if !self.want_logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => json!({"content": entries}),
            Kind::Completion => json!({
                "tokens": entries.iter().map(|e| e["token"].clone()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| e["top"].clone()).collect::<Vec<_>>(),
                "text_offset": entries.iter().map(|e| e["offset"].clone()).collect::<Vec<_>>(),
            }),
        }
    }
}

fn token_text(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.id_to_bytes(id)).into_owned()
}

fn chat_logprob(tok: &Tokenizer, t: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
    let one = |id: u32, l: f32| json!({"token": token_text(tok, id), "logprob": l, "bytes": tok.id_to_bytes(id)});
    let mut v = one(t, logprob);
    v["top_logprobs"] = Value::Array(top.iter().map(|&(id, l)| one(id, l)).collect());
    v
}
