//! Request bodies of the OpenAI API (and the extensions vLLM and llama-server accept), their
//! validation, and their translation into engine requests.

use super::error::ApiError;
use crate::engine::Request;
use crate::model::GenerationDefaults;
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
    /// Token id (as a string) -> bias in [-100, 100], added to the logit before sampling.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// The end user, for the client's own records; it changes nothing in the answer.
    pub user: Option<String>,
    /// `response_format` and vLLM's `guided_*` fields (`super::structured`).
    #[serde(flatten)]
    pub structured: super::structured::StructuredFields,
}

/// The fields of [`Common`], for [`parse_request`]'s check of unknown fields.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop",
    "seed",
    "n",
    "ignore_eos",
    "stream",
    "stream_options",
    "logit_bias",
    "user",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_grammar",
    "guided_choice",
    "grammar",
];

/// Fields of `/v1/completions` besides [`COMMON_FIELDS`].
pub const COMPLETION_FIELDS: &[&str] = &["prompt", "logprobs", "echo"];
/// Fields of `/v1/chat/completions` besides [`COMMON_FIELDS`].
pub const CHAT_FIELDS: &[&str] = &[
    "messages",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

/// Fields of a chat message besides `role` and `content` (tool calling's).
const MESSAGE_FIELDS: &[&str] = &["tool_calls", "tool_call_id", "name"];

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
    /// The role, checked: OpenAI's roles (`developer` is its newer name for `system`); the message's
    /// other fields must be tool calling's.
    pub fn role(&self) -> Result<&str, ApiError> {
        if let Some(k) = self.extra.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unsupported message field '{}' (messages have role, content, {})",
                k.escape_debug(),
                MESSAGE_FIELDS.join(", ")
            ))
            .param("messages"));
        }
        match self.role.as_str() {
            "system" | "developer" => Ok("system"),
            r @ ("user" | "assistant" | "tool") => Ok(r),
            r => Err(ApiError::bad_request(format!(
                "unknown message role '{}' (expected system, developer, user, assistant or tool)",
                r.escape_debug()
            ))
            .param("messages")),
        }
    }

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

/// Parses an endpoint's JSON body strictly: a JSON object whose every field is one this server
/// honours ([`COMMON_FIELDS`] and the endpoint's `fields`), so that nothing a client asks for is
/// silently ignored.
pub fn parse_request<T: for<'de> Deserialize<'de>>(body: &[u8], fields: &[&str]) -> Result<T, ApiError> {
    let v: Value = parse(body)?;
    let Value::Object(map) = &v else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    if let Some(k) = map
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !fields.contains(&k.as_str()))
    {
        let known: Vec<&str> = COMMON_FIELDS.iter().chain(fields).copied().collect();
        return Err(ApiError::bad_request(format!(
            "unsupported field '{}' (this server honours: {})",
            k.escape_debug(),
            known.join(", ")
        )));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
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
    /// `max_tokens` when the request gives none (lowered to the room left in the context).
    pub max_default: usize,
    /// Longest sequence the engine runs (prompt + completion).
    pub max_model_len: usize,
    /// The model's vocabulary size (for `logit_bias`).
    pub vocab: usize,
    /// The sampling values the model ships: defaults of `temperature`, `top_k`, `top_p`, `min_p`.
    pub generation: GenerationDefaults,
    /// What the prompt is called in errors: `messages` (chat) or `prompt`.
    pub prompt_name: &'static str,
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
    let (max, prompt) = (p.max_model_len, p.tokens.len());
    let room = max.saturating_sub(prompt);
    if room == 0 {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max} tokens. However, you requested {prompt} tokens in the {}, which leaves no room for the completion. Please reduce the length of the {}.",
            p.prompt_name, p.prompt_name
        ))
        .param(p.prompt_name));
    }
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => p.max_default.min(room),
        Some(m) if m < 1 => {
            return Err(ApiError::bad_request(format!("max_tokens must be at least 1 (got {m})")).param("max_tokens"))
        }
        // vLLM's words.
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {max} tokens. However, you requested {} tokens ({prompt} in the {}, {m} in the completion). Please reduce the length of the {} or completion.",
                prompt as u64 + m as u64,
                p.prompt_name,
                p.prompt_name
            ))
            .param("max_tokens"))
        }
        Some(m) => m as usize,
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
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("stop sequences must not be empty").param("stop"));
    }
    let sampling = sampling(c, &p.generation)?;
    sampling.validate_for_vocab(p.vocab)?;
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

/// The sampling parameters of the common fields, with OpenAI's ranges (temperature in [0, 2], penalties
/// in [-2, 2]) on top of the library's own validation. A field the request leaves out takes the model's
/// value ([`GenerationDefaults`]), else bushu's default: temperature 0.8 as `bushu run` and llama-server
/// (not OpenAI's 1), no top-k, top-p 1, min-p 0. Without a seed, the clock's.
fn sampling(c: &Common, model: &GenerationDefaults) -> Result<SamplingParams, ApiError> {
    let temperature = c
        .temperature
        .or(model.temperature)
        .unwrap_or(GenerationDefaults::TEMPERATURE);
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
    // vLLM's convention: -1 (or 0) is no top-k.
    let top_k = match c.top_k.or(model.top_k.map(|k| k as i64)).unwrap_or(0) {
        -1 | 0 => 0,
        k if k >= 1 => usize::try_from(k).unwrap_or(usize::MAX),
        k => {
            return Err(ApiError::bad_request(format!("top_k must be -1 (off) or at least 1 (got {k})")).param("top_k"))
        }
    };
    let mut logit_bias = Vec::new();
    for (k, &b) in c.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "logit_bias keys must be token ids (got '{}')",
                k.escape_debug()
            ))
            .param("logit_bias")
        })?;
        if !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::bad_request(format!(
                "logit_bias values must be in [-100, 100] (got {b} for token {id})"
            ))
            .param("logit_bias"));
        }
        logit_bias.push((id, b));
    }
    let sampling = SamplingParams {
        temperature,
        top_k,
        logit_bias,
        top_p: c.top_p.or(model.top_p).unwrap_or(1.0),
        min_p: c.min_p.or(model.min_p).unwrap_or(0.0),
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
            max_model_len: 64,
            vocab: 100,
            generation: GenerationDefaults::default(),
            prompt_name: "prompt",
            logprobs: None,
            stop_ids: Vec::new(),
        }
    }

    #[test]
    fn parses_openai_fields_and_refuses_unknown_ones() {
        let r: CompletionRequest = parse_request(
            br#"{"model":"m","prompt":"hi","max_tokens":5,"temperature":0,"stop":["a","b"],"n":2,"user":"x","top_k":-1}"#,
            COMPLETION_FIELDS,
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
        let e = parse_request::<CompletionRequest>(br#"{"prompt":"x","suffix":"y"}"#, COMPLETION_FIELDS).unwrap_err();
        assert!(e.message.starts_with("unsupported field 'suffix'"), "{}", e.message);
        // A chat field on the completions endpoint is unknown there.
        assert!(parse_request::<CompletionRequest>(br#"{"prompt":"x","messages":[]}"#, COMPLETION_FIELDS).is_err());
        // Tool calling's fields are the chat endpoint's own (server/tools.rs checks their values).
        assert!(parse_request::<ChatRequest>(br#"{"messages":[],"tools":[]}"#, CHAT_FIELDS).is_ok());
        assert!(parse_request::<CompletionRequest>(br#"{"prompt":"x","tools":[]}"#, COMPLETION_FIELDS).is_err());
        assert!(parse_request::<ChatRequest>(b"[1]", CHAT_FIELDS).is_err());
    }

    #[test]
    fn max_tokens_and_the_context() {
        let r: CompletionRequest = parse(br#"{"prompt":"x"}"#).unwrap();
        // No max_tokens: the default, lowered to the room left (64 - 60).
        let p = plan(&r.common, prompted(vec![1; 60])).unwrap();
        assert_eq!(p.requests[0].max_tokens, 4);
        assert!(plan(&r.common, prompted(vec![1; 64])).is_err());
        let r: CompletionRequest = parse(br#"{"prompt":"x","max_tokens":5}"#).unwrap();
        assert!(plan(&r.common, prompted(vec![1; 59])).is_ok());
        let e = plan(&r.common, prompted(vec![1; 60])).err().unwrap();
        assert!(
            e.message
                .contains("you requested 65 tokens (60 in the prompt, 5 in the completion)"),
            "{}",
            e.message
        );
        let r: CompletionRequest = parse(br#"{"prompt":"x","logit_bias":{"7":-100,"99":2.5}}"#).unwrap();
        let p = plan(&r.common, prompted(vec![1])).unwrap();
        assert_eq!(p.requests[0].sampling.logit_bias, vec![(7, -100.0), (99, 2.5)]);
        let r: CompletionRequest = parse(br#"{"prompt":"x","logit_bias":{"100":1}}"#).unwrap();
        assert_eq!(
            plan(&r.common, prompted(vec![1])).err().unwrap().param,
            Some("logit_bias")
        );
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
