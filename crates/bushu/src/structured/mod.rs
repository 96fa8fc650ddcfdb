//! Structured output: constrained decoding on llguidance, an engine-level concern as in vLLM v1.
//!
//! A request may carry a [`Constraint`] — a JSON Schema, "any JSON object", a regular expression or a
//! Lark grammar (or a llama.cpp GBNF one, translated: [`gbnf`]). [`Compiler`] (one per model: the token trie of [`vocab`] and llguidance's
//! `ParserFactory`) turns it into a [`Grammar`], shared by reference in
//! [`crate::sampling::SamplingParams::grammar`]. Every sampler built from those parameters — `bushu run`
//! and `chat`, each sequence of the serving engine, the target and draft samplers of speculative decoding —
//! then carries a [`crate::sampling::grammar::GrammarMask`] at the head of its processor chain: at each
//! step the tokens the grammar does not allow next get `-inf`, so every output is valid by construction,
//! and the end-of-sequence tokens are allowed only where the grammar can end (once the grammar is
//! complete they are the only choice). An output cut by the token limit ends with the `length` reason,
//! never claimed complete.
//!
//! The per-sequence state ([`GrammarState`]) is a function of the generated tokens: before computing a
//! mask it compares the tokens it has consumed with the sequence's, rolls back what the sequence no
//! longer has (a speculative rejection, a [`crate::sampling::Sampler::rewind`] with the KV cache) and
//! consumes what is new. A rewind of the sampler is therefore a rewind of the grammar, with nothing else
//! to call.
//!
//! # Fast-forward
//!
//! Where the grammar allows one continuation only (a JSON key and its `": "`, the `", "` between
//! fields, a `const`), the bytes it forces need no choice from the model. [`GrammarState::forced`] turns
//! them into tokens, and the decoding loops ([`crate::spec_decode::SpecDecoder`] for `bushu run` and
//! `chat`, [`crate::engine::Engine`] for each served sequence) feed them as drafts after the
//! sequence's last token: one forward pass over all of them instead of one pass each. Each row of that
//! pass is then sampled by the sequence's own sampler (the mask included) and a draft is kept while it
//! is the token sampled, exactly as speculative drafts are verified: the output is token for token
//! the output without fast-forward (greedy or sampled, with the same draws), only the number of passes
//! differs. With a byte-level BPE tokenizer the mask allows only the forced token at each of these
//! positions, so the drafts are never rejected; with SentencePiece the model may prefer another
//! tokenization of the forced bytes, and the draft is then replaced by the model's token.
//!
//! JSON is generated compactly by default — `", "` between items, `": "` after keys, no other whitespace
//! (llguidance's own default lets any whitespace in, which lets a small model pad an object with newlines
//! until it runs out of tokens); a schema may override this with llguidance's `x-guidance` options.

pub mod gbnf;
pub mod vocab;

use anyhow::{anyhow, Result};
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};
use std::sync::Arc;

use crate::tokenizer::Tokenizer;

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON Schema (llguidance's subset of draft 2020-12).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A regular expression the whole output must match (Rust `regex` syntax).
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
    /// A grammar in llama.cpp's GBNF syntax (translated to Lark, [`gbnf`]).
    Gbnf(String),
}

impl Constraint {
    /// A grammar given as text: GBNF where it defines its rules with `::=` ([`gbnf::is_gbnf`]), else Lark.
    pub fn grammar(text: String) -> Constraint {
        if gbnf::is_gbnf(&text) {
            Constraint::Gbnf(text)
        } else {
            Constraint::Lark(text)
        }
    }

    /// What kind of constraint, for messages: `JSON schema`, `regex`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::JsonObject => "JSON object",
            Constraint::Regex(_) => "regex",
            Constraint::Lark(_) => "Lark grammar",
            Constraint::Gbnf(_) => "GBNF grammar",
        }
    }

    fn to_llguidance(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(anyhow!("a JSON schema must be an object (got {})", type_name(schema)));
                }
                TopLevelGrammar::from_json_schema(with_compact_json(schema.clone()))
            }
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(with_compact_json(json!({"type": "object"}))),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Constraint::Gbnf(g) => TopLevelGrammar::from_lark(gbnf::to_lark(g)?),
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The schema with bushu's JSON layout (see the module documentation) unless it sets its own.
fn with_compact_json(mut schema: Value) -> Value {
    if let Value::Object(m) = &mut schema {
        m.entry("x-guidance").or_insert(json!({
            "item_separator": ", ",
            "key_separator": ": ",
            "whitespace_flexible": false,
        }));
    } else if schema == Value::Bool(true) {
        return with_compact_json(json!({}));
    }
    schema
}

/// A constraint that cannot be compiled: what it is and why, in one line.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidGrammar {
    pub kind: &'static str,
    pub problem: String,
}

impl std::fmt::Display for InvalidGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.problem)
    }
}

impl std::error::Error for InvalidGrammar {}

/// Compiles constraints for one model: its token trie and llguidance's parser factory, built once.
pub struct Compiler {
    factory: ParserFactory,
    n_vocab: usize,
    aliases: Arc<Vec<u32>>,
}

impl Compiler {
    /// A compiler for a model with `n_vocab` output rows, `tok`'s vocabulary, ending on `eos_ids`.
    pub fn new(tok: &Tokenizer, n_vocab: usize, eos_ids: &[u32]) -> Result<Compiler> {
        let env: TokEnv = vocab::token_env(tok, n_vocab, eos_ids)?;
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // Errors name the problem, not the whole grammar and parser state.
            verbose_errors: false,
            ..ParserLimits::default()
        };
        let n_vocab = env.tok_trie().vocab_size();
        Ok(Compiler {
            factory,
            n_vocab,
            aliases: Arc::new(vocab::byte_aliases(tok, n_vocab)),
        })
    }

    /// Compiles `c`; an [`InvalidGrammar`] error when it cannot be.
    pub fn compile(&self, c: &Constraint) -> Result<Arc<Grammar>> {
        let invalid = |e: anyhow::Error| {
            let msg = format!("{e:#}");
            // llguidance's messages may span lines (a regex with a caret under the error): one line.
            let problem = msg
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::Error::new(InvalidGrammar {
                kind: c.kind(),
                problem,
            })
        };
        let top = c.to_llguidance().map_err(invalid)?;
        let parser = self.factory.create_parser(top).map_err(invalid)?;
        // A first matcher: a grammar whose start already fails (an unsatisfiable schema) errors here.
        let mut m = Matcher::new(Ok(parser.clone()));
        m.compute_mask().map_err(invalid)?;
        Ok(Arc::new(Grammar {
            parser,
            env: self.factory.tok_env().clone(),
            aliases: self.aliases.clone(),
            eos: self.factory.tok_env().tok_trie().eos_token_set(),
            n_vocab: self.n_vocab,
            constraint: c.clone(),
        }))
    }

    /// The number of token ids the compiled grammars mask.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }
}

/// A compiled constraint: the start state every sequence's [`GrammarState`] is cloned from.
pub struct Grammar {
    parser: TokenParser,
    /// The vocabulary (to tokenize forced bytes when the tokenizer is not canonical).
    env: TokEnv,
    aliases: Arc<Vec<u32>>,
    /// The end-of-sequence tokens, as a mask.
    eos: SimpleVob,
    n_vocab: usize,
    constraint: Constraint,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grammar({:?})", self.constraint)
    }
}

/// Two grammars are equal when compiled from equal constraints (for [`crate::sampling::SamplingParams`]'s
/// equality).
impl PartialEq for Grammar {
    fn eq(&self, other: &Grammar) -> bool {
        self.constraint == other.constraint && self.n_vocab == other.n_vocab
    }
}

impl Grammar {
    /// The constraint this grammar was compiled from.
    pub fn constraint(&self) -> &Constraint {
        &self.constraint
    }

    /// The number of token ids its masks cover.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// A fresh matcher at the start of the grammar.
    pub fn state(&self) -> GrammarState {
        GrammarState {
            matcher: Matcher::new(Ok(self.parser.clone())),
            consumed: Vec::new(),
            error: None,
            eos: self.eos.clone(),
            env: self.env.clone(),
            aliases: self.aliases.clone(),
            ready: Vec::new(),
        }
    }
}

/// One sequence's position in a grammar, following the sequence's generated tokens (see the module
/// documentation).
pub struct GrammarState {
    matcher: Matcher,
    consumed: Vec<u32>,
    error: Option<String>,
    eos: SimpleVob,
    env: TokEnv,
    /// [`vocab::byte_aliases`].
    aliases: Arc<Vec<u32>>,
    /// Masks computed ahead by [`GrammarState::prepare`]: `(n, mask)` is the mask after `consumed[..n]`
    /// (every entry has `n <= consumed.len()`; a rollback below `n` drops it).
    ready: Vec<(usize, SimpleVob)>,
}

impl GrammarState {
    /// Brings the state to `generated` (the tokens after the prompt): rolls back the tokens that are no
    /// longer there, consumes the new ones.
    pub fn sync(&mut self, generated: &[u32]) -> Result<()> {
        let common = self.consumed.iter().zip(generated).take_while(|(a, b)| a == b).count();
        if common < self.consumed.len() {
            self.ready.retain(|(n, _)| *n <= common);
            let back = self.consumed.len() - common;
            if common == 0 {
                self.matcher.reset()?;
            } else {
                self.matcher.rollback(back)?;
            }
            self.consumed.truncate(common);
        }
        if generated.len() > common {
            self.matcher.consume_tokens(&generated[common..])?;
            self.consumed.extend_from_slice(&generated[common..]);
        }
        Ok(())
    }

    /// The tokens allowed after `generated`: the grammar's mask, the end-of-sequence tokens alone once it
    /// is complete. When the tokens do not follow the grammar (a caller forced a token the mask did not
    /// allow) the state keeps the error and allows the end-of-sequence tokens only.
    ///
    /// A mask [`GrammarState::prepare`]d for `generated` is returned without computing it again.
    pub fn mask(&mut self, generated: &[u32]) -> SimpleVob {
        if let Some(m) = self.take_ready(generated) {
            return m;
        }
        self.compute(generated)
    }

    /// The prepared mask after `generated`, if there is one (see the field `ready`).
    fn take_ready(&mut self, generated: &[u32]) -> Option<SimpleVob> {
        let n = generated.len();
        let i = self.ready.iter().position(|(k, _)| *k == n)?;
        if self.error.is_none() && self.consumed.get(..n) == Some(generated) {
            Some(self.ready.swap_remove(i).1)
        } else {
            self.ready.clear();
            None
        }
    }

    /// Computes the mask after `generated` (see [`GrammarState::mask`]).
    fn compute(&mut self, generated: &[u32]) -> SimpleVob {
        if self.error.is_none() {
            if let Err(e) = self.sync(generated) {
                self.error = Some(format!("{e:#}"));
            }
        }
        if self.error.is_none() {
            match self.matcher.compute_mask_or_eos() {
                Ok(m) => return m,
                Err(e) => self.error = Some(format!("{e:#}")),
            }
        }
        self.eos.clone()
    }

    /// Computes ahead the masks [`GrammarState::mask`] will be asked for next: the one after
    /// `generated` and, while the grammar accepts them, the ones after each of `drafts` in turn (the
    /// rows a pass verifying these drafts gives). Meant to run while the forward pass that produces
    /// the logits runs (the engine does, on another thread); a later [`GrammarState::mask`] for one of
    /// these token prefixes returns the prepared mask, any other prefix computes its own (prepared
    /// masks of a prefix no longer there are dropped). The masks are those `mask` computes: a
    /// function of the tokens alone.
    pub fn prepare(&mut self, generated: &[u32], drafts: &[u32]) {
        self.ready.clear();
        let m = self.compute(generated);
        if self.error.is_some() {
            return;
        }
        self.ready.push((generated.len(), m));
        for &d in drafts {
            if self.matcher.is_stopped() {
                break;
            }
            // Checked before consuming: a token the grammar refuses would put llguidance's matcher
            // in its error state for good.
            match self.matcher.try_consume_tokens(&[d]) {
                Ok(1) => self.consumed.push(d),
                _ => break,
            }
            let n = self.consumed.len();
            match self.matcher.compute_mask_or_eos() {
                Ok(m) => self.ready.push((n, m)),
                Err(e) => {
                    self.error = Some(format!("{e:#}"));
                    self.ready.clear();
                    return;
                }
            }
        }
    }

    /// Whether the tokens consumed so far form a complete output (the grammar accepts them); call it
    /// after a [`GrammarState::sync`] or [`GrammarState::mask`] of the sequence's tokens (a
    /// [`GrammarState::prepare`] consumes drafts ahead).
    pub fn is_accepting(&mut self) -> bool {
        self.error.is_none() && (self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false))
    }

    /// At most `max` tokens the grammar forces after `generated` (where it allows one continuation of
    /// its bytes), as a draft for [fast-forward](crate::structured#fast-forward); empty when the next bytes are a
    /// choice, the tokens left the grammar, or it is complete.
    ///
    /// With a canonical tokenizer (byte-level BPE) they are llguidance's fast-forward tokens: the forced
    /// bytes in the model's own tokenization, minus a last token that the text after it could merge
    /// into; llguidance's mask then allows exactly the first of them, so each is the only choice in
    /// turn. Otherwise (SentencePiece: the mask allows every tokenization of the forced bytes) they are
    /// the forced bytes split greedily into the longest tokens of the vocabulary — a guess that the
    /// model's own choice, made at verification, confirms or not.
    pub fn forced(&mut self, generated: &[u32], max: usize) -> Vec<u32> {
        if max == 0 || self.error.is_some() {
            return Vec::new();
        }
        if let Err(e) = self.sync(generated) {
            self.error = Some(format!("{e:#}"));
            return Vec::new();
        }
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        let mut tokens = if self.env.tokenize_is_canonical() {
            self.matcher.compute_ff_tokens()
        } else {
            let bytes = self.matcher.compute_ff_bytes();
            if bytes.is_empty() {
                Vec::new()
            } else {
                let mut t = self.env.tok_trie().greedy_tokenize(&bytes);
                for x in &mut t {
                    *x = self.aliases.get(*x as usize).copied().unwrap_or(*x);
                }
                t
            }
        };
        tokens.truncate(max);
        tokens
    }

    /// Why the tokens stopped following the grammar, if they did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}
