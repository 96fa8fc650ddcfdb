//! The structured-output flags `bushu run` and `bushu chat` share: `--json-schema FILE`, `--json-object`,
//! `--regex R`, `--grammar FILE` (Lark or GBNF; at most one), and their compilation for the loaded model.

use crate::structured::{Compiler, Constraint, Grammar};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Clone, Debug, Default)]
pub struct StructuredArgs {
    /// Structured output: the output is JSON valid against the JSON Schema in FILE.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Structured output: the output is a JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// Structured output: the whole output matches this regular expression (Rust regex syntax).
    #[arg(long, value_name = "REGEX", allow_hyphen_values = true)]
    pub regex: Option<String>,
    /// Structured output: the output follows the grammar in FILE: llguidance's Lark syntax, or llama.cpp's
    /// GBNF (rules defined with `::=`, starting at `root`).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
    /// Structured output: feed the tokens the grammar forces one pass each, instead of all in one pass
    /// (the output is the same; for measuring).
    #[arg(long)]
    pub no_fast_forward: bool,
}

impl StructuredArgs {
    /// The constraint the flags ask for (files read, JSON parsed), `None` without one.
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let given = [
            self.json_schema.is_some(),
            self.json_object,
            self.regex.is_some(),
            self.grammar.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() > 1 {
            bail!("--json-schema, --json-object, --regex and --grammar cannot be combined: choose one");
        }
        if let Some(path) = &self.json_schema {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--json-schema: cannot read {}", path.display()))?;
            let schema: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--json-schema: {} is not JSON", path.display()))?;
            return Ok(Some(Constraint::JsonSchema(schema)));
        }
        if self.json_object {
            return Ok(Some(Constraint::JsonObject));
        }
        if let Some(rx) = &self.regex {
            return Ok(Some(Constraint::Regex(rx.clone())));
        }
        if let Some(path) = &self.grammar {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--grammar: cannot read {}", path.display()))?;
            return Ok(Some(Constraint::grammar(text)));
        }
        Ok(None)
    }

    /// The flag that set the constraint, for messages.
    pub fn flag(&self) -> &'static str {
        if self.json_schema.is_some() {
            "--json-schema"
        } else if self.json_object {
            "--json-object"
        } else if self.regex.is_some() {
            "--regex"
        } else {
            "--grammar"
        }
    }

    /// The constraint compiled for a model (`n_vocab` output rows, `tok`, ending on `eos_ids`); `None`
    /// without one. A grammar that does not compile is an error naming the flag.
    pub fn compile(&self, tok: &Tokenizer, n_vocab: usize, eos_ids: &[u32]) -> Result<Option<Arc<Grammar>>> {
        let Some(c) = self.constraint()? else { return Ok(None) };
        let compiler = Compiler::new(tok, n_vocab, eos_ids)?;
        let g = compiler
            .compile(&c)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.flag()))?;
        Ok(Some(g))
    }
}
