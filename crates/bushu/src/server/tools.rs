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
//! Streaming: a request with tools is generated whole, then sent as the chunks OpenAI sends — the role,
//! the content if any, each call's id and name with empty arguments then its arguments, the finish reason.

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

    /// The streaming chunks of a whole (rewritten) chat response, as OpenAI sends them.
    pub fn chunks(resp: &Value) -> Vec<Value> {
        let env = |choice: Value| {
            json!({"id": resp["id"], "object": "chat.completion.chunk", "created": resp["created"],
                   "model": resp["model"], "choices": [choice]})
        };
        let mut out = Vec::new();
        for c in resp["choices"].as_array().into_iter().flatten() {
            let i = &c["index"];
            let m = &c["message"];
            out.push(env(json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})));
            if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
                out.push(env(
                    json!({"index": i, "delta": {"content": t}, "logprobs": null, "finish_reason": null}),
                ));
            }
            for (k, tc) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
                out.push(env(json!({"index": i, "delta": {"tool_calls": [{"index": k, "id": tc["id"], "type": "function",
                    "function": {"name": tc["function"]["name"], "arguments": ""}}]}, "logprobs": null, "finish_reason": null})));
                out.push(env(json!({"index": i, "delta": {"tool_calls": [{"index": k,
                    "function": {"arguments": tc["function"]["arguments"]}}]}, "logprobs": null, "finish_reason": null})));
            }
            out.push(env(
                json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": c["finish_reason"]}),
            ));
        }
        out
    }
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
