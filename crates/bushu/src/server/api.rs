//! Request bodies of the OpenAI API (and the extensions vLLM and llama-server accept), their
//! validation, and their translation into engine requests.

use super::error::ApiError;
use crate::engine::Request;
use crate::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::Value;

/// Fields shared by `/v1/completions` and `/v1/chat/completions`.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// `response_format` and vLLM's `guided_*` fields (`super::structured`).
    #[serde(flatten)]
    pub structured: super::structured::StructuredFields,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Legacy logprobs: return this many alternatives per token.
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// OpenAI tool calling (`super::tools`).
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    /// The message's other fields (`tool_calls`, `tool_call_id`, `name`), for tool calling.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl ChatMessage {
    /// Whether the message is part of a tool exchange (an assistant's calls or a tool's result).
    pub fn is_tool_exchange(&self) -> bool {
        self.role == "tool" || self.extra.get("tool_calls").is_some_and(|c| !c.is_null())
    }

    /// The message as OpenAI sent it (text content, other fields kept).
    pub fn to_value(&self) -> Result<Value, ApiError> {
        let mut m = self.extra.clone();
        m.insert("role".into(), Value::String(self.role.clone()));
        m.insert("content".into(), Value::String(self.text()?));
        Ok(Value::Object(m))
    }

    /// The text of a message: a string, or the text parts of a content array.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(parts)) => {
                let mut out = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => out.push_str(t),
                        _ => {
                            return Err(ApiError::bad_request("only text content parts are supported").param("messages"))
                        }
                    }
                }
                Ok(out)
            }
            Some(_) => {
                Err(ApiError::bad_request("message content must be a string or an array of parts").param("messages"))
            }
        }
    }
}

/// Parses a JSON body, turning serde's complaint into a 400.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// What the handlers need beyond the per-choice engine requests.
pub struct Plan {
    pub requests: Vec<Request>,
    pub stops: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
}

/// What an endpoint made of its request's prompt, and the limits that go with it.
pub struct Prompted {
    pub tokens: Vec<u32>,
    /// `max_tokens` when the request gives none.
    pub max_default: usize,
    /// Alternatives per token asked for, if any.
    pub logprobs: Option<usize>,
    /// Tokens that end a choice besides the model's EOS (a chat template's end of turn).
    pub stop_ids: Vec<u32>,
}

/// The one mapping from an OpenAI request to engine requests, for both endpoints: `n` requests over the
/// prompt, with the sampling parameters of the common fields (seeds `seed`, `seed + 1`, ...).
pub fn plan(c: &Common, p: Prompted) -> Result<Plan, ApiError> {
    let n = c.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request(format!("n must be between 1 and 16 (got {n})")).param("n"));
    }
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => p.max_default,
        Some(m) if m >= 1 => m as usize,
        Some(m) => {
            return Err(ApiError::bad_request(format!("max_tokens must be at least 1 (got {m})")).param("max_tokens"))
        }
    };
    if let Some(k) = p.logprobs {
        if k > 20 {
            return Err(ApiError::bad_request(format!("at most 20 logprobs per token (got {k})")).param("logprobs"));
        }
    }
    let stops = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() <= 4 => v.clone(),
        Some(Stop::Many(_)) => return Err(ApiError::bad_request("at most 4 stop sequences").param("stop")),
    };
    let sampling = sampling(c)?;
    let requests = (0..n as u64)
        .map(|i| Request {
            prompt: p.tokens.clone(),
            sampling: SamplingParams {
                seed: sampling.seed.wrapping_add(i),
                ..sampling.clone()
            },
            max_tokens,
            ignore_eos: c.ignore_eos,
            stop_ids: p.stop_ids.clone(),
            logprobs: p.logprobs,
        })
        .collect();
    Ok(Plan {
        requests,
        stops,
        n: n as usize,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// The sampling parameters of the common fields, with OpenAI's defaults and ranges (temperature 1 in
/// [0, 2], penalties in [-2, 2]; no top-k, top-p 1) on top of the library's own validation. Without a
/// seed, the clock's.
fn sampling(c: &Common) -> Result<SamplingParams, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(
            ApiError::bad_request(format!("temperature must be in [0, 2] (got {temperature})")).param("temperature"),
        );
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::bad_request(format!("{name} must be in [-2, 2] (got {v})")).param(name));
            }
        }
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let sampling = SamplingParams {
        temperature,
        top_k: c.top_k.unwrap_or(0).max(0) as usize,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        seed,
        ..Default::default()
    };
    sampling.validate()?;
    Ok(sampling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompted(tokens: Vec<u32>) -> Prompted {
        Prompted {
            tokens,
            max_default: 16,
            logprobs: None,
            stop_ids: Vec::new(),
        }
    }

    #[test]
    fn parses_openai_fields_and_ignores_unknown_ones() {
        let r: CompletionRequest = parse(
            br#"{"model":"m","prompt":"hi","max_tokens":5,"temperature":0,"stop":["a","b"],"n":2,"user":"x","top_k":-1}"#,
        )
        .unwrap();
        let p = plan(
            &r.common,
            Prompted {
                stop_ids: vec![7],
                ..prompted(vec![1, 2])
            },
        )
        .unwrap();
        assert_eq!(p.requests.len(), 2);
        assert!(p.requests.iter().all(|q| q.stop_ids == [7] && q.prompt == [1, 2]));
        assert_eq!(p.requests[0].max_tokens, 5);
        assert!(p.requests[0].sampling.is_greedy());
        assert_eq!(p.requests[0].sampling.top_k, 0);
        assert_eq!(p.stops, vec!["a", "b"]);
    }

    #[test]
    fn rejects_bad_fields() {
        for body in [
            r#"{"prompt":"x","temperature":5}"#,
            r#"{"prompt":"x","n":0}"#,
            r#"{"prompt":"x","max_tokens":0}"#,
            r#"{"prompt":"x","top_p":0}"#,
        ] {
            let r: CompletionRequest = parse(body.as_bytes()).unwrap();
            assert!(plan(&r.common, prompted(vec![1])).is_err(), "{body}");
        }
        // The library's parameter names are the JSON fields: they become `param`.
        let r: CompletionRequest = parse(br#"{"prompt":"x","top_p":0}"#).unwrap();
        let e = plan(&r.common, prompted(vec![1])).err().unwrap();
        assert_eq!(
            (e.param, e.message.as_str()),
            (Some("top_p"), "top_p must be in (0, 1] (got 0)")
        );
        assert!(parse::<CompletionRequest>(br#"{"prompt":"x","max_tokens":"many"}"#).is_err());
        assert!(parse::<CompletionRequest>(b"{not json").is_err());
    }
}
