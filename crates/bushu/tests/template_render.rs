//! Chat templates rendered by bushu equal Hugging Face `apply_chat_template` (transformers'
//! `render_jinja_template`, jinja2) on every template in ../shared/testdata/templates and a few
//! conversations: system + multi-turn, no system, single user turn, tool definitions, reasoning markers.
//! Fixture: tests/fixtures/templates/renderings.json, made by scripts/refs/make_template_refs.py.

use bushu::chat::{ChatTemplate, Message};
use minijinja::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn template_source(name: &str) -> Option<String> {
    let shared = root()
        .join("../shared/testdata/templates")
        .join(format!("{name}.jinja"));
    let local = root().join("tests/fixtures/templates").join(format!("{name}.jinja"));
    std::fs::read_to_string(local)
        .or_else(|_| std::fs::read_to_string(shared))
        .ok()
}

#[test]
fn renderings_equal_hugging_face() {
    let path = root().join("tests/fixtures/templates/renderings.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let (mut checked, mut refused, mut skipped) = (0, 0, Vec::new());
    let mut failures = Vec::new();
    for c in cases {
        let name = c["template"].as_str().unwrap();
        let case = c["case"].as_str().unwrap();
        let Some(src) = template_source(name) else {
            skipped.push(name.to_string());
            continue;
        };
        let t = ChatTemplate::new(&src, c["bos_token"].as_str().unwrap(), c["eos_token"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tools = if c["tools"].is_null() {
            None
        } else {
            Some(Value::from_serialize(&c["tools"]))
        };
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let got = t.render_with(Value::from_serialize(&c["messages"]), gen, tools, &[]);
        match (&got, c.get("expected"), c.get("error")) {
            (Ok(text), Some(want), _) if want.as_str() == Some(text.as_str()) => checked += 1,
            (Err(e), None, Some(msg)) => {
                let msg = msg.as_str().unwrap();
                assert!(
                    e.to_string().contains(msg),
                    "{name}/{case}: error {e:?} does not name {msg:?}"
                );
                assert!(
                    !e.to_string().contains('\n'),
                    "{name}/{case}: the error is not one line: {e}"
                );
                refused += 1;
            }
            _ => failures.push(format!(
                "{name}/{case}:\n  bushu: {:?}\n  HF:    {:?}",
                got.as_ref().map_err(|e| e.to_string()),
                c.get("expected").or(c.get("error"))
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} renderings differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    skipped.dedup();
    if !skipped.is_empty() {
        eprintln!("skipped (template source not found): {skipped:?}");
    }
    assert!(checked >= 30, "only {checked} renderings checked");
    eprintln!("{checked} renderings equal, {refused} refusals equal");
}

#[test]
fn simple_api_renders_chatml() {
    let src = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + \
               '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let t = ChatTemplate::new(src, "<|im_start|>", "<|im_end|>").unwrap();
    let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&msgs[..1], false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n"
    );
}
