//! OpenAI tool calling: `tools` and `tool_choice` (`none`, `auto`, `required`, a named function).
//!
//! The tool definitions are rendered through the model's own chat template (its `tools` variable, as
//! Hugging Face's `apply_chat_template(tools=...)` does: Qwen2.5's template writes them in a `<tools>`
//! block and asks for `<tool_call>{"name": ..., "arguments": ...}</tool_call>`). A template that knows no
//! tools (SmolLM2's) gets the same instructions as a system message, in the same format, so that one
//! parser reads the answers of both. Assistant messages with `tool_calls` and `tool` messages are passed
//! to the template as OpenAI sends them, the arguments parsed into objects (what templates expect).
//!
//! `required` and a named function constrain the answer by grammar: one or more `<tool_call>` blocks
//! whose JSON is a call of one of the tools (or of the named one) with arguments valid against its
//! `parameters` schema. With `auto` the answer is free and parsed: `<tool_call>` blocks naming a known
//! tool with a JSON object of arguments become `tool_calls` and the finish reason `tool_calls`; anything
//! else stays `content`. With `none` the tools are not shown and nothing is parsed.
//!
//! Streaming ([`ToolStream`]): the chunks OpenAI sends, as the answer is generated — the content before
//! the first `<tool_call>` as it comes (holding back only what may be the start of `<tool_call>`); per
//! call, a `tool_calls` delta with its `index`, `id`, `type` and `function.name` (arguments `""`), then
//! its arguments in fragments; the finish reason `tool_calls`. With `required` or a named function the
//! grammar makes every call well-formed, and the arguments go out token by token as they are generated.
//! With `auto` the model is free and may write a malformed call: each call is sent once its
//! `</tool_call>` closes it and it parses (its name and arguments then in one delta each), so that no
//! call is ever sent that the whole answer would not hold.

use super::error::ApiError;
use crate::chat::ChatTemplate;
use crate::structured::Constraint;
use serde_json::{json, Value};

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::bad_request(msg).param(param)
}

/// What `tool_choice` asks.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, checked.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The `tools` array as sent (each `{"type": "function", "function": {...}}`).
    pub defs: Vec<Value>,
    pub names: Vec<String>,
    pub choice: Choice,
    pub parallel: bool,
}

impl Tools {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the request has no tools (a
    /// `tool_choice` other than `none` without tools is a 400).
    pub fn parse(
        tools: Option<&Value>,
        choice: Option<&Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Tools>, ApiError> {
        let defs = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => {
                return Err(bad(
                    "tools must be an array of {\"type\": \"function\", \"function\": {...}}",
                    "tools",
                ))
            }
        };
        let mut names = Vec::new();
        for (i, t) in defs.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(format!("tools[{i}].type must be \"function\""), "tools"));
            }
            let f = t.get("function").filter(|f| f.is_object());
            let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
                return Err(bad(format!("tools[{i}].function.name is missing"), "tools"));
            };
            if name.is_empty() || names.iter().any(|n| n == name) {
                return Err(bad(
                    format!("tools[{i}].function.name {name:?} is empty or repeated"),
                    "tools",
                ));
            }
            if let Some(p) = f.and_then(|f| f.get("parameters")) {
                if !p.is_object() {
                    return Err(bad(
                        format!("tools[{i}].function.parameters must be a JSON schema object"),
                        "tools",
                    ));
                }
            }
            names.push(name.to_string());
        }
        let choice = match choice {
            None | Some(Value::Null) => Choice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(bad(
                        format!("tool_choice must be \"none\", \"auto\", \"required\" or a function (got {other:?})"),
                        "tool_choice",
                    ))
                }
            },
            Some(v) => match (
                v.get("type").and_then(Value::as_str),
                v.pointer("/function/name").and_then(Value::as_str),
            ) {
                (Some("function"), Some(n)) => Choice::Named(n.to_string()),
                _ => {
                    return Err(bad(
                        "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "tool_choice",
                    ))
                }
            },
        };
        if defs.is_empty() {
            return match choice {
                Choice::Auto | Choice::None => Ok(None),
                _ => Err(bad(
                    "tool_choice asks for a tool call but the request has no tools",
                    "tool_choice",
                )),
            };
        }
        if let Choice::Named(n) = &choice {
            if !names.contains(n) {
                return Err(bad(
                    format!("tool_choice names {n:?}, which is not among the tools"),
                    "tool_choice",
                ));
            }
        }
        Ok(Some(Tools {
            defs,
            names,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// Whether the tools are shown to the model and its answer parsed for calls.
    pub fn active(&self) -> bool {
        self.choice != Choice::None
    }

    /// The grammar of `required` and named choices: `<tool_call>` blocks of calls of the allowed tools.
    pub fn constraint(&self) -> Option<Constraint> {
        let allowed: Vec<&Value> = match &self.choice {
            Choice::None | Choice::Auto => return None,
            Choice::Required => self.defs.iter().collect(),
            Choice::Named(n) => self
                .defs
                .iter()
                .filter(|d| d.pointer("/function/name").and_then(Value::as_str) == Some(n))
                .collect(),
        };
        let calls: Vec<Value> = allowed
            .iter()
            .map(|d| {
                let f = &d["function"];
                let params = f.get("parameters").cloned().unwrap_or(json!({"type": "object"}));
                json!({"type": "object",
                       "properties": {"name": {"const": f["name"]}, "arguments": params},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        let schema = json!({
            "anyOf": calls,
            "x-guidance": {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false},
        });
        let more = if self.parallel { " (\"\\n\" call)*" } else { "" };
        Some(Constraint::Lark(format!(
            "start: call{more}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
        )))
    }

    /// The tool instructions for a template without a tools section (the wording of Qwen2.5's).
    fn instructions(&self) -> String {
        let mut s = String::from(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for d in &self.defs {
            s.push('\n');
            s.push_str(&d.to_string());
        }
        s.push_str(
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        s
    }

    /// The calls in an answer: `(content before the calls, [(name, arguments JSON text)])`, `None` when the
    /// answer holds no well-formed call of a known tool.
    pub fn parse_calls(&self, text: &str) -> Option<(String, Vec<(String, String)>)> {
        let start = text.find("<tool_call>")?;
        let content = text[..start].trim().to_string();
        let mut calls = Vec::new();
        let mut rest = &text[start..];
        while let Some(i) = rest.find("<tool_call>") {
            let body_start = i + "<tool_call>".len();
            let end = rest[body_start..].find("</tool_call>").map(|e| body_start + e);
            let body = &rest[body_start..end.unwrap_or(rest.len())];
            let v: Value = serde_json::from_str(body.trim()).ok()?;
            let name = v.get("name").and_then(Value::as_str)?;
            if !self.names.iter().any(|n| n == name) {
                return None;
            }
            let args = v.get("arguments").filter(|a| a.is_object())?;
            calls.push((name.to_string(), args.to_string()));
            match end {
                Some(e) => rest = &rest[e + "</tool_call>".len()..],
                None => break,
            }
        }
        Some((content, calls))
    }

    /// Rewrites a whole chat response: each choice whose answer holds tool calls gets `tool_calls` and the
    /// finish reason `tool_calls` (a choice cut by the token limit keeps `length` and its text).
    pub fn rewrite(&self, resp: &mut Value, id: &str) {
        if !self.active() {
            return;
        }
        let Some(choices) = resp["choices"].as_array_mut() else {
            return;
        };
        for (ci, c) in choices.iter_mut().enumerate() {
            if c["finish_reason"] != "stop" {
                continue;
            }
            let text = c["message"]["content"].as_str().unwrap_or("").to_string();
            let Some((content, calls)) = self.parse_calls(&text) else {
                continue;
            };
            let calls: Vec<Value> = calls
                .into_iter()
                .enumerate()
                .map(|(k, (name, args))| {
                    json!({"id": format!("call_{id}_{ci}_{k}"), "type": "function",
                           "function": {"name": name, "arguments": args}})
                })
                .collect();
            c["message"] = json!({
                "role": "assistant",
                "content": if content.is_empty() { Value::Null } else { Value::String(content) },
                "tool_calls": calls,
            });
            c["finish_reason"] = json!("tool_calls");
        }
    }
}

/// What a [`ToolStream`] has to send, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// Text before the calls.
    Content(String),
    /// A call begins: its index among the choice's calls, its id and the function's name.
    Call { index: usize, id: String, name: String },
    /// More of call `index`'s arguments (JSON text).
    Args { index: usize, text: String },
}

/// Where a [`ToolStream`] is in the answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Before the first `<tool_call>`: content.
    Content,
    /// After `<tool_call>`: the call's head (up to its arguments' `{`), or — `auto` — the whole block.
    Head,
    /// Inside the arguments object (`depth` braces or brackets open), streamed as it comes.
    Args { depth: usize, in_str: bool, esc: bool },
    /// After the arguments: up to `</tool_call>`.
    Tail,
    /// Between calls (text there is not part of the answer, as in [`Tools::parse_calls`]).
    Between,
    /// A malformed block: what follows is content when no call was sent, else dropped.
    Broken,
    /// After a malformed block with no call sent: content.
    BrokenContent,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One choice's answer turned into OpenAI's streaming parts as its text arrives (see the module
/// documentation).
pub struct ToolStream {
    names: Vec<String>,
    /// Stream the arguments token by token (the grammar guarantees well-formed calls); else a call is
    /// sent whole once it closes and parses.
    incremental: bool,
    /// Call ids: `{id_prefix}_{k}`, as [`Tools::rewrite`] names them.
    id_prefix: String,
    mode: Mode,
    /// Text received and not yet turned into parts.
    pending: String,
    /// Calls sent (a call counts from its [`Part::Call`]).
    calls: usize,
    /// The whitespace between the content and the first `<tool_call>` (not part of the content when a
    /// call follows; given back if the block is not a call).
    gap: String,
}

impl ToolStream {
    /// The stream of choice `choice` of response `id`.
    pub fn new(tools: &Tools, id: &str, choice: usize) -> ToolStream {
        ToolStream {
            names: tools.names.clone(),
            incremental: tools.constraint().is_some(),
            id_prefix: format!("call_{id}_{choice}"),
            mode: Mode::Content,
            pending: String::new(),
            calls: 0,
            gap: String::new(),
        }
    }

    /// Takes the next piece of the answer's text; the parts it completes.
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out, false) {}
        out
    }

    /// The answer ended with `finish` (`stop`, `length`, ...): the last parts and the finish reason to
    /// send (`tool_calls` when calls were sent and the answer ended on its own).
    pub fn finish(&mut self, finish: &str) -> (Vec<Part>, String) {
        let mut out = Vec::new();
        while self.step(&mut out, true) {}
        // Left over only in an unfinished call head: content if no call was sent, else dropped.
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() && self.calls == 0 {
            out.push(Part::Content(format!("{}{OPEN}{rest}", self.gap)));
        }
        let reason = match (finish, self.calls) {
            ("stop", n) if n > 0 => "tool_calls".to_string(),
            (f, _) => f.to_string(),
        };
        (out, reason)
    }

    /// One move of the state machine over `pending`; whether to go on.
    fn step(&mut self, out: &mut Vec<Part>, end: bool) -> bool {
        match self.mode {
            Mode::Content => match self.pending.find(OPEN) {
                Some(i) => {
                    let before = self.pending[..i].trim_end();
                    self.gap = self.pending[before.len()..i].to_string();
                    if !before.is_empty() {
                        out.push(Part::Content(before.to_string()));
                    }
                    self.pending.drain(..i + OPEN.len());
                    self.mode = Mode::Head;
                    true
                }
                None => {
                    // Hold back what may be the start of `<tool_call>` and the whitespace before it.
                    let keep = match end {
                        true => 0,
                        false => held_back(&self.pending),
                    };
                    let send = self.pending.len() - keep;
                    if send > 0 {
                        out.push(Part::Content(self.pending[..send].to_string()));
                        self.pending.drain(..send);
                    }
                    false
                }
            },
            Mode::Head if self.incremental => match head(&self.pending) {
                Head::More => false,
                Head::Bad => {
                    self.mode = Mode::Broken;
                    true
                }
                Head::Done { name, len } if self.names.contains(&name) => {
                    let index = self.calls;
                    self.calls += 1;
                    out.push(Part::Call {
                        index,
                        id: format!("{}_{index}", self.id_prefix),
                        name,
                    });
                    out.push(Part::Args {
                        index,
                        text: "{".into(),
                    });
                    self.pending.drain(..len);
                    self.mode = Mode::Args {
                        depth: 1,
                        in_str: false,
                        esc: false,
                    };
                    true
                }
                Head::Done { .. } => {
                    self.mode = Mode::Broken;
                    true
                }
            },
            Mode::Head => {
                // `auto`: the whole block, parsed as `Tools::parse_calls` would.
                let end_at = self.pending.find(CLOSE);
                if end_at.is_none() && !end {
                    return false;
                }
                let body_end = end_at.unwrap_or(self.pending.len());
                let parsed = serde_json::from_str::<Value>(self.pending[..body_end].trim())
                    .ok()
                    .and_then(|v| {
                        let name = v.get("name").and_then(Value::as_str)?.to_string();
                        let args = v.get("arguments").filter(|a| a.is_object())?.to_string();
                        self.names.contains(&name).then_some((name, args))
                    });
                match parsed {
                    Some((name, args)) => {
                        let index = self.calls;
                        self.calls += 1;
                        out.push(Part::Call {
                            index,
                            id: format!("{}_{index}", self.id_prefix),
                            name,
                        });
                        out.push(Part::Args { index, text: args });
                        self.pending.drain(..end_at.map_or(body_end, |e| e + CLOSE.len()));
                        self.mode = Mode::Between;
                        true
                    }
                    None => {
                        self.mode = Mode::Broken;
                        true
                    }
                }
            }
            Mode::Args {
                mut depth,
                mut in_str,
                mut esc,
            } => {
                let mut cut = None;
                for (i, ch) in self.pending.char_indices() {
                    if in_str {
                        match (esc, ch) {
                            (true, _) => esc = false,
                            (false, '\\') => esc = true,
                            (false, '"') => in_str = false,
                            _ => {}
                        }
                        continue;
                    }
                    match ch {
                        '"' => in_str = true,
                        '{' | '[' => depth += 1,
                        '}' | ']' => {
                            depth -= 1;
                            if depth == 0 {
                                cut = Some(i + 1);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let index = self.calls - 1;
                let n = cut.unwrap_or(self.pending.len());
                if n > 0 {
                    out.push(Part::Args {
                        index,
                        text: self.pending[..n].to_string(),
                    });
                    self.pending.drain(..n);
                }
                self.mode = match cut {
                    Some(_) => Mode::Tail,
                    None => Mode::Args { depth, in_str, esc },
                };
                cut.is_some()
            }
            Mode::Tail => match self.pending.find(CLOSE) {
                Some(i) => {
                    self.pending.drain(..i + CLOSE.len());
                    self.mode = Mode::Between;
                    true
                }
                None => {
                    if end {
                        self.pending.clear();
                    }
                    false
                }
            },
            Mode::Between => match self.pending.find(OPEN) {
                Some(i) => {
                    self.pending.drain(..i + OPEN.len());
                    self.mode = Mode::Head;
                    true
                }
                None => {
                    // Text between or after calls is not sent (as in the whole response); keep a
                    // possible start of `<tool_call>`.
                    let keep = held_back(&self.pending);
                    let drop = self.pending.len() - keep;
                    self.pending.drain(..drop);
                    if end {
                        self.pending.clear();
                    }
                    false
                }
            },
            Mode::Broken => {
                if self.calls == 0 {
                    // Nothing sent as a call: the block and what follows are content.
                    let rest = format!("{}{OPEN}{}", self.gap, std::mem::take(&mut self.pending));
                    out.push(Part::Content(rest));
                    self.mode = Mode::BrokenContent;
                } else {
                    self.pending.clear();
                }
                false
            }
            Mode::BrokenContent => {
                if !self.pending.is_empty() {
                    out.push(Part::Content(std::mem::take(&mut self.pending)));
                }
                false
            }
        }
    }

    /// The streaming chunk deltas of `parts`, as OpenAI sends them.
    pub fn deltas(parts: &[Part]) -> Vec<Value> {
        parts
            .iter()
            .map(|p| match p {
                Part::Content(t) => json!({"content": t}),
                Part::Call { index, id, name } => json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                Part::Args { index, text } => {
                    json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
                }
            })
            .collect()
    }
}

/// How many bytes at the end of `s` may begin `<tool_call>` (a prefix of it, and the whitespace
/// before it, which the content before a call does not keep).
fn held_back(s: &str) -> usize {
    let partial = (1..OPEN.len().min(s.len()) + 1)
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && OPEN.starts_with(&s[s.len() - k..]))
        .unwrap_or(0);
    let rest = &s[..s.len() - partial];
    partial + (rest.len() - rest.trim_end().len())
}

/// The head of a call block, `\n{"name": "NAME", "arguments": {`, with any whitespace between tokens.
enum Head {
    More,
    Bad,
    Done { name: String, len: usize },
}

fn head(s: &str) -> Head {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Each literal: all there, a prefix of it at the end (more to come), or a mismatch.
    let lit = |i: &mut usize, l: &str| -> Option<bool> {
        let rest = &b[*i..];
        if rest.len() < l.len() {
            return if l.as_bytes().starts_with(rest) {
                None
            } else {
                Some(false)
            };
        }
        if rest.starts_with(l.as_bytes()) {
            *i += l.len();
            Some(true)
        } else {
            Some(false)
        }
    };
    macro_rules! expect {
        ($l:expr) => {
            ws(&mut i);
            match lit(&mut i, $l) {
                None => return Head::More,
                Some(false) => return Head::Bad,
                Some(true) => {}
            }
        };
    }
    expect!("{");
    expect!("\"name\"");
    expect!(":");
    ws(&mut i);
    if i >= b.len() {
        return Head::More;
    }
    if b[i] != b'"' {
        return Head::Bad;
    }
    // The name: a JSON string.
    let start = i;
    i += 1;
    let mut esc = false;
    loop {
        if i >= b.len() {
            return Head::More;
        }
        match (esc, b[i]) {
            (true, _) => esc = false,
            (false, b'\\') => esc = true,
            (false, b'"') => break,
            _ => {}
        }
        i += 1;
    }
    i += 1;
    let Ok(name) = serde_json::from_str::<String>(&s[start..i]) else {
        return Head::Bad;
    };
    expect!(",");
    expect!("\"arguments\"");
    expect!(":");
    expect!("{");
    Head::Done { name, len: i }
}

/// The prompt: the conversation (OpenAI messages, tool calls and results included) rendered with the
/// active tools, natively when the template knows tools, else with the tool instructions as a system
/// message.
pub fn render(
    tools: Option<&Tools>,
    template: &ChatTemplate,
    native: bool,
    messages: &[Value],
) -> Result<String, ApiError> {
    let messages: Vec<Value> = messages.iter().map(|m| for_template(m, native)).collect();
    let active = tools.filter(|t| t.active());
    let (messages, defs) = match active {
        None => (messages, None),
        Some(t) if native => (messages, Some(Value::Array(t.defs.clone()))),
        Some(t) => {
            let mut sys = t.instructions();
            let mut rest = messages;
            if rest.first().and_then(|m| m["role"].as_str()) == Some("system") {
                let first = rest.remove(0);
                sys = format!("{}\n\n{sys}", first["content"].as_str().unwrap_or(""));
            }
            let mut all = vec![json!({"role": "system", "content": sys})];
            all.extend(rest);
            (all, None)
        }
    };
    let defs = defs.map(|d| minijinja::Value::from_serialize(&d));
    template
        .render_with(minijinja::Value::from_serialize(&messages), true, defs, &[])
        .map_err(|e| ApiError::bad_request(format!("chat template: {e:#}")))
}

/// An OpenAI message as chat templates expect it: `tool_calls[].function.arguments` parsed from its JSON
/// string into an object; for a template without tools, an assistant's calls written into its content in
/// the `<tool_call>` format and `tool` results as user turns in `<tool_response>` blocks.
fn for_template(m: &Value, native: bool) -> Value {
    let mut m = m.clone();
    if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for c in calls.iter_mut() {
            if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str) {
                if let Ok(v) = serde_json::from_str::<Value>(a) {
                    c["function"]["arguments"] = v;
                }
            }
        }
    }
    if m.get("content").is_none_or(Value::is_null) {
        m["content"] = json!("");
    }
    if !native {
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array).cloned() {
            let mut text = m["content"].as_str().unwrap_or("").to_string();
            for c in calls {
                let f = &c["function"];
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!(
                    "<tool_call>\n{}\n</tool_call>",
                    json!({"name": f["name"], "arguments": f["arguments"]})
                ));
            }
            m = json!({"role": "assistant", "content": text});
        } else if m["role"] == "tool" {
            let content = m["content"].as_str().unwrap_or("").to_string();
            m = json!({"role": "user", "content": format!("<tool_response>\n{content}\n</tool_response>")});
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Value) -> Tools {
        let defs = json!([{"type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "add"}}]);
        Tools::parse(Some(&defs), Some(&choice), None).unwrap().unwrap()
    }

    #[test]
    fn parses_tool_calls_and_leaves_other_text() {
        let t = tools(json!("auto"));
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = t.parse_calls(text).unwrap();
        assert_eq!(content, "Let me look.");
        assert_eq!(
            calls,
            vec![
                ("get_weather".into(), "{\"city\":\"Paris\"}".into()),
                ("add".into(), "{}".into())
            ]
        );
        assert!(t.parse_calls("no call here").is_none());
        assert!(t
            .parse_calls("<tool_call>{\"name\": \"nope\", \"arguments\": {}}</tool_call>")
            .is_none());
        assert!(t
            .parse_calls("<tool_call>{\"name\": \"add\", \"arguments\": 3}</tool_call>")
            .is_none());
        assert!(t.parse_calls("<tool_call>{not json</tool_call>").is_none());
    }

    #[test]
    fn tool_choice_checks() {
        assert_eq!(tools(json!("required")).choice, Choice::Required);
        assert_eq!(
            tools(json!({"type": "function", "function": {"name": "add"}})).choice,
            Choice::Named("add".into())
        );
        let defs = json!([{"type": "function", "function": {"name": "f"}}]);
        for (c, needle) in [
            (json!("sometimes"), "tool_choice must be"),
            (
                json!({"type": "function", "function": {"name": "g"}}),
                "not among the tools",
            ),
            (json!({"type": "function"}), "tool_choice must be"),
        ] {
            let e = Tools::parse(Some(&defs), Some(&c), None).unwrap_err();
            assert!(e.message.contains(needle), "{c}: {}", e.message);
        }
        let e = Tools::parse(None, Some(&json!("required")), None).unwrap_err();
        assert!(e.message.contains("no tools"));
        let e = Tools::parse(Some(&json!([{"type": "retrieval"}])), None, None).unwrap_err();
        assert!(e.message.contains("type must be"));
        assert!(Tools::parse(None, Some(&json!("none")), None).unwrap().is_none());
    }

    #[test]
    fn messages_for_templates() {
        let m = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "add", "arguments": "{\"a\": 1}"}}]});
        let native = for_template(&m, true);
        assert_eq!(native["tool_calls"][0]["function"]["arguments"], json!({"a": 1}));
        assert_eq!(native["content"], "");
        let plain = for_template(&m, false);
        assert_eq!(
            plain["content"],
            "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1}}\n</tool_call>"
        );
        let r = for_template(&json!({"role": "tool", "tool_call_id": "c1", "content": "2"}), false);
        assert_eq!(
            r,
            json!({"role": "user", "content": "<tool_response>\n2\n</tool_response>"})
        );
    }
}
