//! Structured output through `bushu serve` (issue 21) on the Shakespeare model: `response_format`
//! `json_schema` (strict) and `json_object`, vLLM's `guided_json` / `guided_regex` / `guided_grammar` /
//! `guided_choice`, streaming, the `length` finish of a schema the token limit cuts, the 400s (a grammar
//! that does not compile names the field and the problem), the official `openai` Python client with
//! `response_format` and `tools` (skipped when the package is missing), the `/metrics` counters of
//! constrained requests and fast-forward, and tool calls streamed as generated ([`ToolStream`]: the
//! parts checked by hand, OpenAI's delta shapes).

mod common;
use bushu::server::tools::{Part, ToolStream, Tools};
use bushu::server::{ServeOptions, Server};
use common::http::{post, request};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn start() -> Server {
    let mut o = ServeOptions::new(common::shared("models/shakespeare/shakespeare-expert-f16.gguf"));
    o.port = 0;
    o.ctx = Some(512);
    o.max_batch = 8;
    o.grace = Duration::from_secs(2);
    // The name the Python clients ask for.
    o.model_name = Some("m".into());
    Server::start(o).unwrap()
}

fn valid(schema: &Value, v: &Value) -> bool {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
        .is_valid(v)
}

fn weather() -> Value {
    json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 16},
        "temperature_c": {"type": "number", "minimum": -90, "maximum": 60},
        "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]}},
      "required": ["city", "temperature_c", "conditions"], "additionalProperties": false})
}

#[test]
fn response_format_guided_fields_and_errors() {
    let server = start();
    let a = server.addr;
    let msgs = json!([{"role": "user", "content": "The weather in Verona, as JSON."}]);

    // json_schema, strict, greedy and sampled, n = 2.
    for temperature in [0.0, 1.0] {
        let (s, r) = post(
            a,
            "/v1/chat/completions",
            json!({
            "messages": msgs, "max_tokens": 96, "temperature": temperature, "n": 2, "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "strict": true, "schema": weather()}}}),
        );
        assert_eq!(s, 200, "{r}");
        for c in r["choices"].as_array().unwrap() {
            assert_eq!(c["finish_reason"], "stop", "{c}");
            let content = c["message"]["content"].as_str().unwrap();
            let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content}: {e}"));
            assert!(valid(&weather(), &v), "{v}");
        }
    }
    // json_object.
    let (s, r) = post(
        a,
        "/v1/chat/completions",
        json!({
        "messages": msgs, "max_tokens": 64, "temperature": 0, "response_format": {"type": "json_object"}}),
    );
    assert_eq!(s, 200, "{r}");
    let c = &r["choices"][0];
    let content = c["message"]["content"].as_str().unwrap();
    if c["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object(), "{content}");
    } else {
        assert_eq!(c["finish_reason"], "length");
        assert!(content.starts_with('{'), "{content}");
    }
    // text: no constraint.
    let (s, _) = post(
        a,
        "/v1/chat/completions",
        json!({
        "messages": msgs, "max_tokens": 4, "response_format": {"type": "text"}}),
    );
    assert_eq!(s, 200);

    // vLLM's guided fields on /v1/completions.
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({
        "prompt": "KING:", "max_tokens": 20, "temperature": 1.0, "seed": 5, "guided_regex": "[0-9]{2}:[0-9]{2} (am|pm)"}),
    );
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    let rx = fancy_regex::Regex::new("^[0-9]{2}:[0-9]{2} (am|pm)$").unwrap();
    assert!(rx.is_match(text).unwrap(), "{text:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({
        "prompt": "KING:", "max_tokens": 30, "temperature": 1.0, "guided_choice": ["Hamlet", "Ophelia \"the fair\""]}),
    );
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(text == "Hamlet" || text == "Ophelia \"the fair\"", "{text:?}");
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({
        "prompt": "KING:", "max_tokens": 30, "temperature": 0,
        "guided_grammar": "start: \"(\" item (\" \" item)* \")\"\nitem: /[a-z]{1,6}/ | NUMBER\n%import common.NUMBER\n"}),
    );
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with('('), "{text:?}");
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(text.ends_with(')'), "{text:?}");
    }
    // llama-server's `grammar` field: GBNF (a regular language, checked by an equivalent regex).
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({
        "prompt": "KING:", "max_tokens": 40, "temperature": 1.0, "seed": 3,
        "grammar": "root ::= item+\nitem ::= \"- \" [a-z ]{1,12} \"\\n\"\n"}),
    );
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    let rx = fancy_regex::Regex::new("^(- [a-z ]{1,12}\n)+$").unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(rx.is_match(text).unwrap(), "{text:?}");
    } else {
        assert!(text.starts_with("- "), "{text:?}");
    }
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({
        "prompt": "KING:", "max_tokens": 96, "temperature": 0, "guided_json": weather().to_string()}),
    );
    assert_eq!(s, 200, "{r}");
    let v: Value = serde_json::from_str(r["choices"][0]["text"].as_str().unwrap()).unwrap();
    assert!(valid(&weather(), &v));

    // Cut by the token limit: length, and the text is not a complete object.
    let (s, r) = post(
        a,
        "/v1/completions",
        json!({"prompt": "KING:", "max_tokens": 4, "temperature": 0, "guided_json": weather()}),
    );
    assert_eq!(s, 200);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert!(serde_json::from_str::<Value>(r["choices"][0]["text"].as_str().unwrap()).is_err());

    // Streaming: the concatenated deltas are the schema's JSON.
    let (s, body) = request(
        a,
        "POST",
        "/v1/chat/completions",
        Some(&json!({
        "messages": msgs, "max_tokens": 96, "temperature": 0, "stream": true,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": weather()}}})),
        None,
    );
    assert_eq!(s, 200);
    let mut text = String::new();
    let mut finish = Value::Null;
    for line in body.lines() {
        let Some(d) = line.strip_prefix("data: ") else { continue };
        if d == "[DONE]" {
            break;
        }
        let ch: Value = serde_json::from_str(d).unwrap();
        if let Some(t) = ch["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !ch["choices"][0]["finish_reason"].is_null() {
            finish = ch["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(finish, "stop");
    assert!(valid(&weather(), &serde_json::from_str(&text).unwrap()), "{text}");

    // 400s naming the field and the problem.
    let cases = [
        (
            json!({"guided_regex": "[0-9"}),
            "guided_regex",
            "unclosed character class",
        ),
        (
            json!({"guided_grammar": "start: nope"}),
            "guided_grammar",
            "unknown name",
        ),
        (
            json!({"grammar": "root ::= item\n"}),
            "grammar",
            "invalid GBNF grammar: undefined rule `item`",
        ),
        (
            json!({"guided_json": {"type": "integer", "minimum": 3, "maximum": 1}}),
            "guided_json",
            "Unsatisfiable",
        ),
        (json!({"guided_json": "{not json"}), "guided_json", "not JSON"),
        (json!({"guided_choice": []}), "guided_choice", "at least one"),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
            "\"xml\"",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format",
            "json_schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}}),
            "response_format",
            "nowhere",
        ),
        (
            json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
            "guided_regex",
            "cannot be combined",
        ),
        (
            json!({"guided_regex": "a", "ignore_eos": true}),
            "ignore_eos",
            "ignore_eos",
        ),
    ];
    for (extra, param, needle) in cases {
        let mut body = json!({"prompt": "KING:", "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, r) = post(a, "/v1/completions", body);
        assert_eq!(s, 400, "{extra}: {r}");
        assert_eq!(r["error"]["param"], param, "{extra}: {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error", "{r}");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(needle), "{extra}: {m}");
    }
    server.shutdown().unwrap();
}

const SCRIPT: &str = r#"
import sys, json, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none")
schema = json.loads(sys.argv[2])
m = [{"role": "user", "content": "The weather in Verona, as JSON."}]
r = c.chat.completions.create(model="m", messages=m, max_tokens=96, temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": schema}})
v = json.loads(r.choices[0].message.content)
assert r.choices[0].finish_reason == "stop"
assert set(v) == {"city", "temperature_c", "conditions"}, v
assert v["conditions"] in ("sunny", "cloudy", "rain", "snow")
r = c.chat.completions.create(model="m", messages=m, max_tokens=64, temperature=0, response_format={"type": "json_object"})
assert r.choices[0].message.content.startswith("{")
try:
    c.chat.completions.create(model="m", messages=m, max_tokens=4, extra_body={"guided_regex": "("})
    raise SystemExit("no 400")
except openai.BadRequestError as e:
    assert "guided_regex" in str(e), str(e)
print("openai structured ok")
"#;

/// 16 streams at once, each with its own schema and prompt (greedy and sampled): every answer that ends
/// on its own validates; then the same 16 prompts unconstrained (`ignore_eos`, the same token limit) for
/// the aggregate tokens/s of both (printed: docs/BENCHMARKS.md quotes a run).
#[test]
fn sixteen_concurrent_constrained_streams_validate() {
    let mut o = ServeOptions::new(common::shared("models/shakespeare/shakespeare-expert-f16.gguf"));
    o.port = 0;
    o.ctx = Some(256);
    o.max_batch = 16;
    o.grace = Duration::from_secs(2);
    let server = Server::start(o).unwrap();
    let a = server.addr;
    let fixtures = common::read_json(&common::fixture("structured/schemas.json"));
    let fixture =
        |name: &str| fixtures.as_array().unwrap().iter().find(|e| e["name"] == name).unwrap()["schema"].clone();
    let schemas = [
        weather(),
        fixture("person"),
        fixture("rating_enum"),
        fixture("book"),
        fixture("geo_point_const_type"),
        fixture("feature_flags"),
        fixture("yes_no_bool"),
        fixture("address"),
    ];
    let cities = [
        "Verona", "Padua", "Mantua", "Venice", "Milan", "Rome", "Naples", "Elsinore",
    ];
    let run = |constrained: bool| {
        let t0 = std::time::Instant::now();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let schema = schemas[i % schemas.len()].clone();
                let mut body = json!({
                    "messages": [{"role": "user", "content": format!("{} of {}, as JSON.", i, cities[i % cities.len()])}],
                    "max_tokens": 64, "temperature": if i % 2 == 0 { 0.0 } else { 0.8 }, "seed": i,
                });
                if constrained {
                    body["response_format"] =
                        json!({"type": "json_schema", "json_schema": {"name": "s", "strict": true, "schema": schema}});
                } else {
                    body["ignore_eos"] = json!(true);
                }
                std::thread::spawn(move || (i, schema, post(a, "/v1/chat/completions", body)))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (results, t0.elapsed().as_secs_f64())
    };
    let (results, secs_c) = run(true);
    let (mut stopped, mut tokens_c) = (0, 0);
    for (i, schema, (status, r)) in &results {
        assert_eq!(*status, 200, "stream {i}: {r}");
        let c = &r["choices"][0];
        let content = c["message"]["content"].as_str().unwrap();
        tokens_c += r["usage"]["completion_tokens"].as_u64().unwrap();
        if c["finish_reason"] == "stop" {
            stopped += 1;
            let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("stream {i}: {content}: {e}"));
            assert!(valid(schema, &v), "stream {i}: {v}");
        } else {
            assert_eq!(c["finish_reason"], "length", "stream {i}: {c}");
        }
    }
    assert!(stopped >= 12, "only {stopped} of 16 streams completed");
    let (results, secs_u) = run(false);
    let tokens_u: u64 = results
        .iter()
        .map(|(_, _, (s, r))| {
            assert_eq!(*s, 200, "{r}");
            r["usage"]["completion_tokens"].as_u64().unwrap()
        })
        .sum();
    eprintln!(
        "16 streams: constrained {tokens_c} tokens in {secs_c:.2} s ({:.1} t/s, {stopped} complete), unconstrained {tokens_u} tokens in {secs_u:.2} s ({:.1} t/s)",
        tokens_c as f64 / secs_c,
        tokens_u as f64 / secs_u
    );
}

#[test]
fn official_openai_client_response_format() {
    let has = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let server = start();
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &format!("http://{}/v1", server.addr),
            &weather().to_string(),
        ])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && so.contains("openai structured ok"),
        "stdout: {so}\nstderr: {se}"
    );
    server.shutdown().unwrap();
}

const TOOLS_SCRIPT: &str = r#"
import sys, json, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none")
tools = json.loads(sys.argv[2])
m = [{"role": "user", "content": "What is the weather in Verona?"}]

def check_call(tc, name=None):
    # The call names a tool, its arguments follow that tool's parameters (required keys, no others,
    # enums, string lengths).
    assert tc.type == "function" and tc.id, tc
    args = json.loads(tc.function.arguments)
    (params,) = [t["function"]["parameters"] for t in tools if t["function"]["name"] == tc.function.name]
    props = params["properties"]
    assert set(params["required"]) <= set(args) <= set(props), (args, params)
    for k, v in args.items():
        if "enum" in props[k]:
            assert v in props[k]["enum"], (k, v)
        if "maxLength" in props[k]:
            assert isinstance(v, str) and len(v) <= props[k]["maxLength"], (k, v)
    if name:
        assert tc.function.name == name, tc

# required: a grammar-constrained call, parsed into tool_calls.
r = c.chat.completions.create(model="m", messages=m, tools=tools, tool_choice="required", parallel_tool_calls=False,
                              max_tokens=80, temperature=0)
ch = r.choices[0]
assert ch.finish_reason == "tool_calls", ch
assert len(ch.message.tool_calls) == 1, ch.message
tc = ch.message.tool_calls[0]
check_call(tc)
# Send the result back, get the final answer (tool_choice none: text).
m2 = m + [ch.message.model_dump(exclude_none=True),
          {"role": "tool", "tool_call_id": tc.id, "content": json.dumps({"temperature": 21, "sky": "clear"})}]
r2 = c.chat.completions.create(model="m", messages=m2, tools=tools, tool_choice="none", max_tokens=24, temperature=0)
assert r2.choices[0].message.content, r2
assert not r2.choices[0].message.tool_calls
assert r2.choices[0].finish_reason in ("stop", "length")
# auto after the tool result: whatever the model says is content or a well-formed call.
# (Not on a model whose context cannot hold the tools, the call and its result.)
if sys.argv[3] == "long":
    r3 = c.chat.completions.create(model="m", messages=m2, tools=tools, max_tokens=24, temperature=0)
    assert r3.choices[0].finish_reason in ("stop", "length", "tool_calls")
    for t in r3.choices[0].message.tool_calls or []:
        check_call(t)
# A named function, sampled, parallel calls allowed.
r = c.chat.completions.create(model="m", messages=m, tools=tools, max_tokens=100, temperature=0.8, seed=4,
                              tool_choice={"type": "function", "function": {"name": tools[-1]["function"]["name"]}})
ch = r.choices[0]
if ch.finish_reason == "tool_calls":
    for t in ch.message.tool_calls:
        check_call(t, tools[-1]["function"]["name"])
else:
    assert ch.finish_reason == "length", ch
# Streaming: the deltas rebuild the same call.
r = c.chat.completions.create(model="m", messages=m, tools=tools, tool_choice="required", parallel_tool_calls=False,
                              max_tokens=80, temperature=0)
s = c.chat.completions.create(model="m", messages=m, tools=tools, tool_choice="required", parallel_tool_calls=False,
                              max_tokens=80, temperature=0, stream=True)
name, args, ids, finish, pieces, first = "", "", set(), None, 0, None
for chunk in s:
    d = chunk.choices[0].delta
    for t in d.tool_calls or []:
        assert t.index == 0
        if first is None:
            # As OpenAI: the call's first delta has its id, type and name, and empty arguments.
            first = t
            assert t.id and t.type == "function" and t.function.name and t.function.arguments == "", t
        else:
            assert not t.id and not t.function.name, t
        if t.id:
            ids.add(t.id)
        if t.function.name:
            name += t.function.name
        if t.function.arguments:
            pieces += 1
        args += t.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls" and len(ids) == 1, (finish, ids)
# The arguments come as they are generated: in several fragments, not one.
assert pieces > 1, (pieces, args)
assert name == r.choices[0].message.tool_calls[0].function.name
assert json.loads(args) == json.loads(r.choices[0].message.tool_calls[0].function.arguments)
try:
    c.chat.completions.create(model="m", messages=m, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}})
    raise SystemExit("no 400")
except openai.BadRequestError as e:
    assert "nope" in str(e), str(e)
print("openai tools ok")
"#;

fn tools_against(server: &Server, tools: &Value, context: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            TOOLS_SCRIPT,
            &format!("http://{}/v1", server.addr),
            &tools.to_string(),
            context,
        ])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && so.contains("openai tools ok"),
        "stdout: {so}\nstderr: {se}"
    );
}

/// The value of an unlabelled counter in a Prometheus text page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_constrained_requests_and_forced_tokens() {
    let server = start();
    let a = server.addr;
    let names = [
        "bushu_structured_requests_total",
        "bushu_structured_forced_steps_total",
        "bushu_structured_forced_tokens_total",
        "bushu_structured_forced_accepted_tokens_total",
        "bushu_engine_steps_total",
    ];
    let read = || {
        let page = request(a, "GET", "/metrics", None, None).1;
        names.map(|n| metric(&page, n))
    };
    let m0 = read();
    assert_eq!(m0[..4], [0, 0, 0, 0]);
    // Unconstrained: the structured counters stay.
    let (status, r) = post(
        a,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Speak."}], "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(status, 200, "{r}");
    let m1 = read();
    assert_eq!(m1[..4], [0, 0, 0, 0]);
    assert!(m1[4] > m0[4]);
    // One constrained request, alone in the engine: every step of it gives one token plus the forced
    // tokens kept, so its tokens are the steps it took plus the forced tokens kept.
    let (status, r) = post(
        a,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "The weather of Verona, as JSON."}], "max_tokens": 64,
               "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": weather()}}}),
    );
    assert_eq!(status, 200, "{r}");
    let tokens = r["usage"]["completion_tokens"].as_u64().unwrap();
    let m2 = read();
    let d: Vec<u64> = (0..5).map(|i| m2[i] - m1[i]).collect();
    assert_eq!(d[0], 1, "one constrained request");
    assert!(d[1] > 0 && d[2] >= d[1] && d[2] >= d[3], "{d:?}");
    assert_eq!(tokens, d[4] + d[3], "tokens = steps + forced tokens kept ({d:?})");
    // A request of two choices is one request; a tool_choice required is constrained too.
    let (status, r) = post(
        a,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Yes or no?"}], "max_tokens": 8, "n": 2,
               "temperature": 0.7, "seed": 1, "guided_choice": ["yes", "no"]}),
    );
    assert_eq!(status, 200, "{r}");
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object",
        "properties": {"x": {"enum": [1, 2]}}, "required": ["x"]}}});
    let (status, r) = post(
        a,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Call f."}], "max_tokens": 40, "temperature": 0,
               "tools": [tool], "tool_choice": "required"}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(read()[0] - m2[0], 2);
    server.shutdown().unwrap();
}

#[test]
fn official_openai_client_tools() {
    let has = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let weather = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": false}}});
    let time = json!({"type": "function", "function": {"name": "get_time", "description": "The time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": false}}});
    // Shakespeare: no chat template (ChatML), tools as a system message; one tool (its 4,096-token
    // byte-fallback vocabulary spends many tokens on JSON, and its context is 512).
    let server = start();
    tools_against(&server, &json!([weather]), "short");
    server.shutdown().unwrap();
    // SmolLM2: its own template (which has no tools section).
    if common::cached_model("smollm2-135m").is_some() {
        let mut o = ServeOptions::new(bushu::pull::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"));
        o.port = 0;
        o.ctx = Some(1024);
        o.grace = Duration::from_secs(2);
        o.model_name = Some("m".into());
        let server = Server::start(o).unwrap();
        tools_against(&server, &json!([weather, time]), "long");
        server.shutdown().unwrap();
    }
}

#[test]
fn tools_render_through_qwen25_and_chatml_templates() {
    use bushu::chat::ChatTemplate;
    use bushu::server::tools::{render, Tools};
    let defs = json!([{"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let tools = Tools::parse(Some(&defs), None, None).unwrap().unwrap();
    let messages = vec![
        json!({"role": "user", "content": "Weather in Rome?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 20}"}),
    ];
    let src = std::fs::read_to_string(common::shared("testdata/templates/Qwen-Qwen2.5-7B-Instruct.jinja")).unwrap();
    let qwen = ChatTemplate::new(&src, "", "<|im_end|>").unwrap();
    let text = render(Some(&tools), &qwen, true, &messages).unwrap();
    // By hand, from the template: the tools block, the call with its arguments as an object, the result.
    let expected = format!(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n\
         You may call one or more functions to assist with the user query.\n\nYou are provided with function \
         signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\nFor each function call, return a \
         json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n\
         <|im_start|>user\nWeather in Rome?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{{\"name\": \
         \"get_weather\", \"arguments\": {{\"city\": \"Rome\"}}}}\n</tool_call><|im_end|>\n<|im_start|>user\n\
         <tool_response>\n{{\"temp\": 20}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#
    );
    assert_eq!(text, expected);
    // A template without tools (ChatML): the instructions as a system message, calls and results as text.
    let chatml = ChatTemplate::new(bushu::chat::session::CHATML, "", "").unwrap();
    let text = render(Some(&tools), &chatml, false, &messages).unwrap();
    assert!(text.starts_with("<|im_start|>system\n# Tools\n"), "{text}");
    assert!(text.contains("<tools>\n{\"type\":\"function\""), "{text}");
    assert!(text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n</tool_call><|im_end|>"), "{text}");
    assert!(
        text.contains("<|im_start|>user\n<tool_response>\n{\"temp\": 20}\n</tool_response><|im_end|>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
}

/// The tools of the streaming tests: `get_weather(city)` and `add()`, with `tool_choice` `choice`.
fn tools(choice: Value) -> Tools {
    let defs = json!([{"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "add"}}]);
    Tools::parse(Some(&defs), Some(&choice), None).unwrap().unwrap()
}

/// Feeds `text` in pieces of `step` characters; the parts and the finish reason.
fn stream(t: &Tools, text: &str, step: usize, finish: &str) -> (Vec<Part>, String) {
    let mut ts = ToolStream::new(t, "chatcmpl-7", 0);
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    for piece in chars.chunks(step) {
        parts.extend(ts.push(&piece.iter().collect::<String>()));
    }
    let (more, reason) = ts.finish(finish);
    parts.extend(more);
    (parts, reason)
}

fn content(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Content(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn args(parts: &[Part], index: usize) -> Vec<String> {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Args { index: i, text } if *i == index => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn constrained_calls_stream_their_arguments_token_by_token() {
    let t = tools(json!("required"));
    let call0 = r#"{"city": "Par}is \"{x\"", "n": [1, {"a": 2}]}"#;
    let text = format!(
        "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {call0}}}\n</tool_call>\n<tool_call>\n{{\"name\": \"add\", \"arguments\": {{}}}}\n</tool_call>"
    );
    for step in [1, 2, 3, 7, 1000] {
        let (parts, reason) = stream(&t, &text, step, "stop");
        assert_eq!(reason, "tool_calls", "step {step}");
        assert_eq!(content(&parts), "", "step {step}");
        // Each call: its header first, then its arguments, which rebuild the text generated.
        let heads: Vec<(usize, &str, &str)> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Call { index, id, name } => Some((*index, id.as_str(), name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            heads,
            vec![
                (0, "call_chatcmpl-7_0_0", "get_weather"),
                (1, "call_chatcmpl-7_0_1", "add")
            ],
            "step {step}"
        );
        let first_args = parts
            .iter()
            .position(|p| matches!(p, Part::Args { index: 0, .. }))
            .unwrap();
        assert!(matches!(parts[first_args - 1], Part::Call { index: 0, .. }));
        assert_eq!(args(&parts, 0).concat(), call0, "step {step}");
        assert_eq!(args(&parts, 1).concat(), "{}", "step {step}");
        let second = parts
            .iter()
            .position(|p| matches!(p, Part::Call { index: 1, .. }))
            .unwrap();
        assert!(parts[second..]
            .iter()
            .all(|p| !matches!(p, Part::Args { index: 0, .. })));
        // In pieces, the arguments come in pieces.
        if step < 7 {
            assert!(
                args(&parts, 0).len() >= call0.len() / step / 2,
                "step {step}: {:?}",
                args(&parts, 0)
            );
        }
    }
    // Cut inside the arguments: what was generated went out, the reason stays `length`.
    let (parts, reason) = stream(
        &t,
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1",
        2,
        "length",
    );
    assert_eq!(reason, "length");
    assert_eq!(args(&parts, 0).concat(), "{\"a\": 1");
    // Cut before the name is known: no call, the text is content.
    let (parts, reason) = stream(&t, "<tool_call>\n{\"name\": \"ad", 2, "length");
    assert_eq!(
        (content(&parts).as_str(), reason.as_str()),
        ("<tool_call>\n{\"name\": \"ad", "length")
    );
}

#[test]
fn auto_sends_content_as_it_comes_and_each_call_once_it_parses() {
    let t = tools(json!("auto"));
    let text =
        "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let mut ts = ToolStream::new(&t, "c", 1);
    // The content goes out before the call is complete; a possible start of `<tool_call>` waits.
    assert_eq!(
        ts.push("Let me look.\n<tool"),
        vec![Part::Content("Let me look.".into())]
    );
    assert_eq!(ts.push("_call>\n{\"name\": \"get_weather\""), vec![]);
    let rest = &text["Let me look.\n<tool_call>\n{\"name\": \"get_weather\"".len()..];
    let parts = ts.push(rest);
    assert_eq!(
        parts,
        vec![
            Part::Call {
                index: 0,
                id: "call_c_1_0".into(),
                name: "get_weather".into()
            },
            Part::Args {
                index: 0,
                text: "{\"city\":\"Paris\"}".into()
            },
        ]
    );
    assert_eq!(ts.finish("stop"), (vec![], "tool_calls".to_string()));
    // The same as the whole response's parse.
    assert_eq!(
        t.parse_calls(text).unwrap().1,
        vec![("get_weather".into(), "{\"city\":\"Paris\"}".into())]
    );
    for step in [1, 3, 1000] {
        // Text with a `<` and no call: all content, `stop`.
        let plain = "a < b <tool and <tool_c ok ";
        let (parts, reason) = stream(&t, plain, step, "stop");
        assert_eq!(
            (content(&parts).as_str(), reason.as_str()),
            (plain, "stop"),
            "step {step}"
        );
        // A block calling an unknown tool, or with arguments that are not an object: content, whole.
        for bad in [
            "Hi \n<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call> bye",
            "Hi <tool_call>{\"name\": \"add\", \"arguments\": 3}</tool_call>",
            "Hi <tool_call>{not json</tool_call>",
        ] {
            let (parts, reason) = stream(&t, bad, step, "stop");
            assert_eq!(
                (content(&parts).as_str(), reason.as_str()),
                (bad, "stop"),
                "step {step}"
            );
            assert!(parts.iter().all(|p| matches!(p, Part::Content(_))));
        }
    }
}

#[test]
fn stream_deltas_are_openais() {
    let d = ToolStream::deltas(&[
        Part::Content("hi".into()),
        Part::Call {
            index: 0,
            id: "call_1".into(),
            name: "add".into(),
        },
        Part::Args {
            index: 0,
            text: "{\"a\"".into(),
        },
    ]);
    assert_eq!(d[0], json!({"content": "hi"}));
    assert_eq!(
        d[1],
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}]})
    );
    assert_eq!(
        d[2],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]})
    );
}
