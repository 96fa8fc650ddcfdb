//! The official `openai` Python client against `bushu serve`: completions, chat, streaming (both),
//! models, and its error types for 401 and 400. Skipped (with a message) when the package is missing:
//! `pip install openai`.

use bushu::server::{ServeOptions, Server};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = r#"
import sys, openai
base = sys.argv[1]
c = openai.OpenAI(base_url=base, api_key="key")
models = c.models.list()
name = models.data[0].id
r = c.completions.create(model=name, prompt="Once upon a time", max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
text = r.choices[0].text
assert r.usage.completion_tokens == 8, r.usage
assert r.choices[0].finish_reason == "length"
s = c.completions.create(model=name, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True, extra_body={"ignore_eos": True})
assert "".join(ch.choices[0].text for ch in s if ch.choices) == text
m = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
r = c.chat.completions.create(model=name, messages=m, max_tokens=5, temperature=0, seed=1)
content = r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
s = c.chat.completions.create(model=name, messages=m, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True})
parts, usage = [], None
for ch in s:
    if ch.choices:
        parts.append(ch.choices[0].delta.content or "")
    if ch.usage:
        usage = ch.usage
assert "".join(parts) == content, (parts, content)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
try:
    openai.OpenAI(base_url=base, api_key="wrong").models.list()
    raise SystemExit("no 401")
except openai.AuthenticationError:
    pass
try:
    c.completions.create(model=name, prompt="x", max_tokens=2, temperature=7)
    raise SystemExit("no 400")
except openai.BadRequestError as e:
    assert "temperature" in str(e)
print("openai client ok")
"#;

#[test]
fn official_openai_python_client() {
    let has = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipped: the openai Python package is not installed (pip install openai)");
        return;
    }
    let mut o = ServeOptions::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/tiny-llama-q8_0.gguf"),
    );
    o.port = 0;
    o.ctx = Some(256);
    o.api_key = Some("key".into());
    o.grace = Duration::from_secs(2);
    let server = Server::start(o).unwrap();
    let out = Command::new("python3")
        .args(["-c", SCRIPT, &format!("http://{}/v1", server.addr)])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && so.contains("openai client ok"),
        "stdout: {so}\nstderr: {se}"
    );
    server.shutdown().unwrap();
}
