//! Structured output in the server: OpenAI's `response_format` (`text`, `json_object`, `json_schema`
//! with or without `strict`), vLLM's `guided_json`, `guided_regex`, `guided_grammar` (llguidance's Lark
//! syntax, or GBNF) and `guided_choice`, and llama-server's `grammar` (GBNF, or Lark), turned into one [`Constraint`], compiled per request against the model's
//! vocabulary, and attached to every choice's sampling parameters (the engine's samplers then mask each
//! step: see [`crate::structured`]). A constraint that cannot be compiled is a 400 naming the field and
//! the problem; `strict: false` is honoured the strict way (the output always follows the schema).

use super::api::Plan;
use super::error::ApiError;
use crate::structured::{Compiler, Constraint, Grammar};
use crate::tokenizer::Tokenizer;
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// The structured-output fields of a request (both endpoints).
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct StructuredFields {
    pub response_format: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_grammar: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// llama-server's field: a GBNF grammar.
    pub grammar: Option<String>,
}

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::bad_request(msg).param(param)
}

impl StructuredFields {
    /// The constraint the fields ask for, with the field that asked; `None` without one.
    pub fn constraint(&self) -> Result<Option<(Constraint, &'static str)>, ApiError> {
        let mut found: Vec<(Constraint, &'static str)> = Vec::new();
        if let Some(rf) = &self.response_format {
            if let Some(c) = response_format(rf)? {
                found.push((c, "response_format"));
            }
        }
        if let Some(g) = &self.guided_json {
            let schema = match g {
                Value::String(s) => serde_json::from_str(s)
                    .map_err(|e| bad(format!("guided_json is a string but not JSON: {e}"), "guided_json"))?,
                v => v.clone(),
            };
            found.push((Constraint::JsonSchema(schema), "guided_json"));
        }
        if let Some(rx) = &self.guided_regex {
            found.push((Constraint::Regex(rx.clone()), "guided_regex"));
        }
        if let Some(g) = &self.guided_grammar {
            found.push((Constraint::grammar(g.clone()), "guided_grammar"));
        }
        if let Some(g) = &self.grammar {
            found.push((Constraint::grammar(g.clone()), "grammar"));
        }
        if let Some(choices) = &self.guided_choice {
            if choices.is_empty() {
                return Err(bad("guided_choice must list at least one choice", "guided_choice"));
            }
            let alts: Vec<String> = choices.iter().map(|c| lark_string(c)).collect();
            found.push((
                Constraint::Lark(format!("start: {}\n", alts.join(" | "))),
                "guided_choice",
            ));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|f| f.1).collect();
            return Err(bad(
                format!(
                    "{} cannot be combined: give one structured-output constraint",
                    names.join(" and ")
                ),
                found[1].1,
            ));
        }
        Ok(found.pop())
    }
}

/// A Lark string literal matching `s` exactly.
fn lark_string(s: &str) -> String {
    // JSON string syntax is Lark's: quotes, backslashes and control characters escaped.
    serde_json::to_string(s).expect("a string serializes")
}

/// OpenAI's `response_format`.
fn response_format(rf: &Value) -> Result<Option<Constraint>, ApiError> {
    let p = "response_format";
    let Some(ty) = rf.get("type").and_then(Value::as_str) else {
        return Err(bad("response_format must be an object with a \"type\"", p));
    };
    match ty {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let Some(js) = rf.get("json_schema").filter(|v| v.is_object()) else {
                return Err(bad("response_format json_schema needs a \"json_schema\" object", p));
            };
            if js.get("name").and_then(Value::as_str).is_none() {
                return Err(bad("response_format.json_schema needs a \"name\"", p));
            }
            if let Some(s) = js.get("strict") {
                if !s.is_boolean() && !s.is_null() {
                    return Err(bad("response_format.json_schema.strict must be a boolean", p));
                }
            }
            // No schema: any JSON value (OpenAI's own default is an empty schema).
            let schema = js.get("schema").cloned().unwrap_or(Value::Object(Default::default()));
            Ok(Some(Constraint::JsonSchema(schema)))
        }
        other => Err(bad(
            format!("response_format type must be \"text\", \"json_object\" or \"json_schema\" (got {other:?})"),
            p,
        )),
    }
}

/// The server's grammar compiler, built on first use (the token trie and llguidance's tables for the
/// model's vocabulary take a moment: requests without a constraint never pay for them).
pub struct Structured {
    tokenizer: Tokenizer,
    n_vocab: usize,
    /// The tokens that end a constrained output: the model's EOS ids and the chat template's end of turn.
    eos_ids: Vec<u32>,
    compiler: OnceLock<Result<Arc<Compiler>, String>>,
    /// Whether the model's chat template renders `tools` itself (`super::tools`).
    pub native_tools: bool,
}

impl Structured {
    pub fn new(tokenizer: Tokenizer, n_vocab: usize, eos_ids: Vec<u32>, native_tools: bool) -> Structured {
        Structured {
            tokenizer,
            n_vocab,
            eos_ids,
            compiler: OnceLock::new(),
            native_tools,
        }
    }

    fn compiler(&self) -> Result<Arc<Compiler>, ApiError> {
        self.compiler
            .get_or_init(|| {
                Compiler::new(&self.tokenizer, self.n_vocab, &self.eos_ids)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| ApiError::bad_request(format!("structured output is unavailable for this model: {e}")))
    }

    /// Compiles `c` (off the async runtime: a large schema takes milliseconds); a 400 naming `param`.
    pub async fn compile(self: &Arc<Self>, c: Constraint, param: &'static str) -> Result<Arc<Grammar>, ApiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let compiler = me.compiler()?;
            compiler.compile(&c).map_err(|e| bad(format!("{param}: {e}"), param))
        })
        .await
        .map_err(|e| ApiError::bad_request(format!("{param}: the grammar compiler failed: {e}")))?
    }

    /// Applies the request's constraint, if any, to every choice of `plan`: the grammar in the sampling
    /// parameters, and the end-of-sequence tokens the grammar ends with among the tokens that stop it.
    pub async fn apply(
        self: &Arc<Self>,
        f: &StructuredFields,
        ignore_eos: bool,
        plan: &mut Plan,
    ) -> Result<(), ApiError> {
        let Some((c, param)) = f.constraint()? else {
            return Ok(());
        };
        let g = self.compile(c, param).await?;
        self.attach(g, ignore_eos, param, plan)
    }

    /// Attaches a compiled grammar to every choice of `plan`.
    pub fn attach(
        &self,
        g: Arc<Grammar>,
        ignore_eos: bool,
        param: &'static str,
        plan: &mut Plan,
    ) -> Result<(), ApiError> {
        if ignore_eos {
            return Err(bad(
                format!("ignore_eos cannot be combined with {param}: a constrained output ends with an end-of-sequence token"),
                "ignore_eos",
            ));
        }
        for r in &mut plan.requests {
            r.sampling.grammar = Some(g.clone());
            for &e in &self.eos_ids {
                if !r.stop_ids.contains(&e) {
                    r.stop_ids.push(e);
                }
            }
        }
        Ok(())
    }
}
