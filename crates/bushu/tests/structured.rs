//! Structured output (issue 21): 35 JSON schemas of real-world shapes (nested objects, arrays with
//! min/max items, enums, anyOf/allOf, $ref and recursion, string formats and patterns, numeric bounds,
//! multipleOf, tuples, nullable fields) on the Shakespeare model (always present) and SmolLM2 (when
//! cached), greedy and sampled. Every output that ends on an end-of-sequence token parses and validates
//! against its schema with the `jsonschema` crate (formats checked); an output cut by the token limit is
//! reported as `length` and its tokens are a prefix the grammar has not completed. Also: regex and Lark
//! constraints, GBNF grammars (accepting exactly what llama.cpp's own validator accepts), the token
//! trie's bytes, rewinding a grammar, speculative decoding under a grammar equal to
//! plain decoding, and the command line (`--json-schema`, `--regex`, `--grammar` Lark or GBNF, errors in
//! one line).

mod common;
use bushu::generate::{generate, FinishReason, GenerateOptions, Generation};
use bushu::model::{load, Model, ModelFile};
use bushu::sampling::{Sampler, SamplingParams};
use bushu::spec_decode::{generate_fast_forward, generate_speculative, DraftLengthParams, DraftModel, PromptLookup};
use bushu::structured::{vocab, Compiler, Constraint, Grammar, InvalidGrammar};
use common::{fixture, shared};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const AMATEUR: &str = "models/shakespeare/shakespeare-amateur-f16.gguf";

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

fn schemas() -> Vec<(String, Value)> {
    let v = common::read_json(&fixture("structured/schemas.json"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["schema"].clone()))
        .collect()
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("the validator rejects the schema {schema}: {e}"))
}

/// Runs every schema on a model, greedy and sampled; returns (completed, cut by the limit).
fn run_schemas(f: &ModelFile, m: &Model, prompt: &dyn Fn(&str) -> Vec<u32>, max_tokens: usize) -> (usize, usize) {
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let (mut done, mut cut) = (0, 0);
    for (name, schema) in schemas() {
        let g = compiler
            .compile(&Constraint::JsonSchema(schema.clone()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let check = validator(&schema);
        for (i, temperature) in [0.0, 0.9].into_iter().enumerate() {
            let sampling = SamplingParams {
                temperature,
                top_k: 0,
                top_p: 1.0,
                seed: 7 + i as u64,
                grammar: Some(g.clone()),
                ..Default::default()
            };
            let opts = GenerateOptions::new(max_tokens, sampling, f.eos_ids.clone());
            let p = prompt(&name);
            let mut st = m.new_state(p.len() + max_tokens + 1);
            let out = generate(m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
            match out.finish_reason {
                FinishReason::Stop => {
                    done += 1;
                    let v: Value = serde_json::from_str(&out.text)
                        .unwrap_or_else(|e| panic!("{name} t={temperature}: not JSON ({e}): {}", out.text));
                    let errors: Vec<String> = check.iter_errors(&v).map(|e| e.to_string()).collect();
                    assert!(
                        errors.is_empty(),
                        "{name} t={temperature}: {} invalid: {errors:?}",
                        out.text
                    );
                    // The end-of-sequence token is the last one and the only one.
                    assert!(f.eos_ids.contains(out.tokens.last().unwrap()));
                }
                FinishReason::Length => {
                    cut += 1;
                    assert_eq!(out.tokens.len(), max_tokens);
                    // Not complete: the grammar does not accept the text (or the model was not asked to end).
                    let mut s = g.state();
                    s.mask(&out.tokens);
                    assert!(s.error().is_none(), "{name}: the tokens left the grammar");
                    if check.is_valid(&serde_json::from_str(&out.text).unwrap_or(Value::Null)) {
                        assert!(s.is_accepting(), "{name}: a complete output reported as cut");
                    }
                }
                other => panic!("{name}: finish {other:?}"),
            }
            eprintln!("{name} t={temperature} {:?}: {}", out.finish_reason, out.text);
        }
    }
    (done, cut)
}

#[test]
fn json_schemas_shakespeare_greedy_and_sampled() {
    let (f, m) = open(EXPERT);
    let tok = f.tokenizer.clone();
    let (done, cut) = run_schemas(
        &f,
        &m,
        &|name| tok.encode(&format!("KING: {name}\n"), true).unwrap(),
        96,
    );
    eprintln!("shakespeare: {done} complete, {cut} cut by the token limit");
    // The schemas bound their strings, not their numbers' digits: a model this small repeating a digit
    // runs into the limit (then `length`, checked above); most outputs complete.
    assert!(done >= 45, "only {done} of 70 outputs completed");
}

#[test]
fn json_schemas_smollm2_greedy_and_sampled() {
    let Some(f) = common::cached_model("smollm2-135m") else {
        return;
    };
    let m = Model::new(&f).unwrap();
    let tok = f.tokenizer.clone();
    let prompt = |name: &str| {
        let text = format!(
            "<|im_start|>user\nGive an example {} as JSON.<|im_end|>\n<|im_start|>assistant\n",
            name.replace('_', " ")
        );
        tok.encode_with(&text, false, true).unwrap()
    };
    let (done, cut) = run_schemas(&f, &m, &prompt, 96);
    eprintln!("smollm2: {done} complete, {cut} cut by the token limit");
    assert!(done >= 45, "only {done} of 70 outputs completed");
}

#[test]
fn a_schema_cut_by_the_token_limit_finishes_with_length() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    // 40 characters at least: cannot fit in 6 tokens.
    let schema = serde_json::json!({"type": "object", "properties": {"s": {"type": "string", "minLength": 40}}, "required": ["s"]});
    let g = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
    let opts = GenerateOptions::new(
        6,
        SamplingParams {
            grammar: Some(g),
            ..SamplingParams::greedy()
        },
        f.eos_ids.clone(),
    );
    let p = f.tokenizer.encode("KING:", true).unwrap();
    let mut st = m.new_state(64);
    let out = generate(&m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert!(out.text.starts_with("{\"s\""), "{}", out.text);
    assert!(serde_json::from_str::<Value>(&out.text).is_err());
}

/// `n` tokens at most sampled (temperature 1, seed `seed`) under grammar `g` after "ROMEO:".
fn sample_after_romeo(f: &ModelFile, m: &Model, g: &Arc<Grammar>, seed: u64, n: usize) -> Generation {
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed,
        grammar: Some(g.clone()),
        ..Default::default()
    };
    let opts = GenerateOptions::new(n, sampling, f.eos_ids.clone());
    let p = f.tokenizer.encode("ROMEO:", true).unwrap();
    let mut st = m.new_state(p.len() + n + 1);
    generate(m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap()
}

#[test]
fn regex_and_lark_constraints() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let rx = fancy_regex::Regex::new(r"^[0-9]{3}-[a-z]{2,5}$").unwrap();
    let lark = r#"start: greeting " " name
greeting: "hail" | "farewell"
name: /[A-Z][a-z]{1,8}/"#;
    let lark_rx = fancy_regex::Regex::new(r"^(hail|farewell) [A-Z][a-z]{1,8}$").unwrap();
    for (c, check) in [
        (Constraint::Regex(r"[0-9]{3}-[a-z]{2,5}".into()), &rx),
        (Constraint::Lark(lark.into()), &lark_rx),
    ] {
        let g = compiler.compile(&c).unwrap();
        for seed in 0..4 {
            let out = sample_after_romeo(&f, &m, &g, seed, 40);
            assert_eq!(out.finish_reason, FinishReason::Stop, "{c:?}: {}", out.text);
            assert!(check.is_match(&out.text).unwrap(), "{c:?}: {:?}", out.text);
        }
    }
}

/// GBNF grammars — six of llama.cpp's own (`grammars/`: arithmetic, JSON, JSON arrays, lists, chess
/// moves, Japanese) and three written for the corners (a repetition followed by a character it also
/// takes, counted repetitions and every escape, empty alternatives and rules across lines) — translated
/// to Lark and compiled by llguidance accept exactly the strings that llama.cpp's `test-gbnf-validator`
/// accepts: its verdicts on hand-written inputs and seeded mutations of them, recorded by
/// `scripts/make-gbnf-fixtures.py`. Each input is fed as byte tokens (`<0xNN>`), so the tokenizer
/// plays no part.
#[test]
fn gbnf_grammars_accept_exactly_what_llama_cpp_accepts() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let byte = |b: u8| f.tokenizer.token_to_id(&format!("<0x{b:02X}>")).unwrap();
    let cases = common::read_json(&fixture("gbnf/cases.json"));
    let mut grammars = std::collections::HashMap::new();
    let mut seen: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for case in cases.as_array().unwrap() {
        let name = case["grammar"].as_str().unwrap();
        let g = grammars.entry(name.to_owned()).or_insert_with(|| {
            let text = std::fs::read_to_string(fixture(&format!("gbnf/{name}"))).unwrap();
            let c = Constraint::grammar(text);
            assert!(matches!(c, Constraint::Gbnf(_)), "{name}");
            compiler.compile(&c).unwrap_or_else(|e| panic!("{name}: {e}"))
        });
        let input = case["input"].as_str().unwrap();
        let tokens: Vec<u32> = input.bytes().map(byte).collect();
        let mut st = g.state();
        let ours = st.sync(&tokens).is_ok() && st.is_accepting();
        let want = case["valid"].as_bool().unwrap();
        assert_eq!(ours, want, "{name}: {input:?}: llama.cpp says valid = {want}");
        let n = seen.entry(name.to_owned()).or_default();
        *if want { &mut n.0 } else { &mut n.1 } += 1;
    }
    assert_eq!(seen.len(), 9, "{seen:?}");
    for (name, (valid, invalid)) in &seen {
        assert!(
            *valid >= 3 && *invalid >= 3,
            "{name}: {valid} valid, {invalid} invalid inputs"
        );
    }
}

/// Sampled outputs under two of llama.cpp's GBNF grammars of line-based regular languages (lists, chess
/// moves) follow regular expressions written for the same languages by hand: every complete line (and
/// an output that stops is nothing but complete lines, two or more for chess).
#[test]
fn gbnf_outputs_follow_the_grammar() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let mv = r"(([a-h]x)?[a-h][1-8](=[NBKQR])?|[NBKQR][a-h]?[1-8]?x?[a-h][1-8]|O-O(-O)?)[+#]?";
    let list_line = r"^- [^\r\n\x0b\x0c\x85\u2028\u2029]+$".to_owned();
    for (name, first, line, min_lines) in [
        ("list", list_line.clone(), list_line, 1),
        (
            "chess",
            format!(r"^1\. {mv} {mv}$"),
            format!(r"^[1-9][0-9]?\. {mv} {mv}$"),
            2,
        ),
    ] {
        let text = std::fs::read_to_string(fixture(&format!("gbnf/{name}.gbnf"))).unwrap();
        let g = compiler.compile(&Constraint::grammar(text)).unwrap();
        let (first, line) = (
            fancy_regex::Regex::new(&first).unwrap(),
            fancy_regex::Regex::new(&line).unwrap(),
        );
        let mut lines_checked = 0;
        for seed in 0..6 {
            let out = sample_after_romeo(&f, &m, &g, seed, 60);
            let complete: Vec<&str> = out.text.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
            for (i, l) in complete.iter().enumerate() {
                let rx = if i == 0 { &first } else { &line };
                assert!(
                    rx.is_match(l.trim_end_matches('\n')).unwrap(),
                    "{name} line {i}: {l:?} in {:?}",
                    out.text
                );
                lines_checked += 1;
            }
            if out.finish_reason == FinishReason::Stop {
                assert!(
                    out.text.ends_with('\n') && complete.len() >= min_lines,
                    "{name}: {:?}",
                    out.text
                );
            } else {
                assert_eq!(out.finish_reason, FinishReason::Length, "{name}");
            }
        }
        assert!(
            lines_checked >= 3,
            "{name}: {lines_checked} complete lines in six outputs"
        );
    }
}

#[test]
fn compile_errors_name_the_problem() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let cases = [
        (Constraint::Regex("[0-9".into()), "regex", "unclosed character class"),
        (Constraint::Lark("start: foo".into()), "Lark grammar", "unknown name"),
        (
            Constraint::grammar("root ::= item\n".into()),
            "GBNF grammar",
            "undefined rule `item`",
        ),
        (
            Constraint::grammar("root ::= \"a\" [b-\n".into()),
            "GBNF grammar",
            "unterminated character class at line 2, column 1",
        ),
        (
            Constraint::JsonSchema(serde_json::json!({"$ref": "#/$defs/nowhere"})),
            "JSON schema",
            "/$defs/nowhere",
        ),
        (
            Constraint::JsonSchema(serde_json::json!({"type": "integer", "minimum": 5, "maximum": 2})),
            "JSON schema",
            "minimum (5) is greater than maximum (2)",
        ),
        (
            Constraint::JsonSchema(serde_json::json!([1])),
            "JSON schema",
            "must be an object",
        ),
    ];
    for (c, kind, needle) in cases {
        let e = compiler.compile(&c).unwrap_err();
        let g = e
            .downcast_ref::<InvalidGrammar>()
            .unwrap_or_else(|| panic!("{c:?}: {e}"));
        assert_eq!(g.kind, kind);
        assert!(g.problem.contains(needle), "{c:?}: {}", g.problem);
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn token_bytes_follow_the_tokenizer() {
    // SentencePiece with byte fallback: `▁the` is " the", `<0x0A>` is a newline byte, `</s>` special.
    let (f, _) = open(EXPERT);
    let tok = &f.tokenizer;
    let bytes = vocab::token_bytes(tok, tok.vocab_size());
    let nl = tok.token_to_id("<0x0A>").unwrap();
    assert_eq!(bytes[nl as usize], b"\n");
    let eos = tok.eos_id().unwrap();
    assert_eq!(bytes[eos as usize], b"\xff</s>");
    let mut hand = 0;
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.token_text(id).unwrap();
        if let Some(rest) = text.strip_prefix('\u{2581}') {
            if !rest.is_empty() && !rest.contains('\u{2581}') {
                assert_eq!(bytes[id as usize], format!(" {rest}").as_bytes(), "{text}");
                hand += 1;
            }
        }
    }
    assert!(hand > 100);
    // Byte-level BPE: `Ġworld` is " world"; `<|im_end|>` is special.
    if let Some(f) = common::cached_model("smollm2-135m") {
        let tok = &f.tokenizer;
        let bytes = vocab::token_bytes(tok, tok.vocab_size());
        let w = tok.token_to_id("\u{120}world").unwrap();
        assert_eq!(bytes[w as usize], b" world");
        let end = tok.token_to_id("<|im_end|>").unwrap();
        assert_eq!(bytes[end as usize], b"\xff<|im_end|>");
        // Every token's bytes decode to what the tokenizer decodes it to.
        for id in (0..tok.vocab_size() as u32).step_by(97) {
            if bytes[id as usize].first() != Some(&0xff) {
                assert_eq!(bytes[id as usize], tok.decode_bytes(&[id]), "token {id}");
            }
        }
    }
}

#[test]
fn rewinding_the_sampler_rewinds_the_grammar() {
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let g = compiler
        .compile(&Constraint::Regex("[a-z]{2,4}[0-9]{1,3}-[a-z]{2,6}".into()))
        .unwrap();
    // Sampling (greedy's distribution is a one-hot): the distributions show what the grammar allows.
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        grammar: Some(g),
        ..Default::default()
    };
    let vocab = m.config.vocab_size;
    // Flat logits favouring higher ids: the grammar alone decides what is possible.
    let logits: Vec<f32> = (0..vocab).map(|i| i as f32 * 1e-4).collect();
    let argmax = |d: &[f32]| (0..d.len()).max_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap() as u32;
    let prompt = [1u32, 5, 9];
    let mut s = Sampler::new(&params).unwrap();
    s.set_prompt(&prompt);
    let mut path = Vec::new();
    let mut dists = Vec::new();
    for _ in 0..8 {
        let d = s.distribution(&logits);
        let t = argmax(&d);
        dists.push(d);
        path.push(t);
        s.accept(t);
    }
    // Back to 3 generated tokens, then on again: the same distributions.
    s.rewind(prompt.len() + 3);
    for i in 3..8 {
        assert_eq!(s.distribution(&logits), dists[i], "step {i}");
        s.accept(path[i]);
    }
    // At a step with a choice take another allowed token (a different branch), then rewind to the
    // choice: the distributions are those of the first path again.
    let k = (0..7)
        .find(|&i| dists[i].iter().filter(|&&p| p > 0.0).count() > 1)
        .expect("a step with a choice");
    s.rewind(prompt.len() + k);
    let other = (0..vocab as u32)
        .find(|&t| dists[k][t as usize] > 0.0 && t != path[k])
        .unwrap();
    s.accept(other);
    let next = argmax(&s.distribution(&logits));
    s.accept(next);
    s.rewind(prompt.len() + k);
    for i in k..8 {
        assert_eq!(s.distribution(&logits), dists[i], "step {i} after the branch");
        s.accept(path[i]);
    }
    // Every token of the path was allowed where it was taken.
    for (i, &t) in path.iter().enumerate() {
        assert!(dists[i][t as usize] > 0.0, "step {i}");
    }
}

/// Applying a grammar's mask: at every step, the sampler's candidates (filled from the mask's set bits,
/// with or without the masks prepared ahead as the engine does during the pass) written back densely
/// equal the reference — every token the mask does not allow at `-inf`, every other logit unchanged —
/// on random logits, along a path that takes the forced tokens, rejects prepared drafts (a draft
/// that is not the token taken) and rewinds.
fn mask_application_equals_reference(f: &ModelFile, vocab: usize) {
    use bushu::sampling::grammar::GrammarMask;
    use bushu::sampling::rng::Rng;
    use bushu::sampling::{Candidates, Context};
    let compiler = Compiler::new(&f.tokenizer, vocab, &f.eos_ids).unwrap();
    let mut rng = Rng::new(11);
    let mut checked = 0;
    for name in ["person", "order_with_items", "weather"] {
        let schema = schemas().into_iter().find(|(n, _)| n == name).unwrap().1;
        let g = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
        let prompt = [1u32, 2, 3];
        // Ours: prepared (odd steps) or computed on demand (even steps).
        let mut ours = GrammarMask::new(&g);
        let mut cands = Candidates::default();
        let mut tokens: Vec<u32> = prompt.to_vec();
        let mut dense = vec![0f32; vocab];
        for step in 0..40 {
            let generated = tokens[prompt.len()..].to_vec();
            // The reference: llguidance's mask from a fresh state, applied token by token.
            let mask = g.state().mask(&generated);
            let logits: Vec<f32> = (0..vocab).map(|_| rng.next_f32() * 20.0 - 10.0).collect();
            let reference: Vec<f32> = (0..vocab)
                .map(|i| {
                    if mask.is_allowed(i as u32) {
                        logits[i]
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let forced = g.state().forced(&generated, 4);
            if let Some(&t) = forced.first() {
                assert!(mask.is_allowed(t), "{name} step {step}: forced token {t} not allowed");
            }
            // Prepared with drafts: the forced tokens, or a wrong guess (an allowed token that will
            // not be taken) to be rejected.
            let allowed: Vec<u32> = (0..vocab as u32).filter(|&t| mask.is_allowed(t)).collect();
            let drafts = match step % 4 {
                1 => forced.clone(),
                3 => allowed.iter().rev().take(1).copied().collect(),
                _ => Vec::new(),
            };
            if step % 2 == 1 {
                ours.prepare(&generated, &drafts);
            }
            let ctx = Context {
                tokens: &tokens,
                prompt_len: prompt.len(),
            };
            ours.fill(&mut cands, &logits, &ctx);
            cands.to_dense(&mut dense);
            for i in 0..vocab {
                assert!(
                    dense[i].to_bits() == reference[i].to_bits(),
                    "{name} step {step} token {i}: {} vs reference {}",
                    dense[i],
                    reference[i]
                );
            }
            // Greedy decoding under the grammar alone: the reference's argmax (smallest id among equals).
            let best = (0..vocab)
                .filter(|&i| reference[i] != f32::NEG_INFINITY)
                .fold(None::<usize>, |b, i| match b {
                    Some(j) if reference[j] >= reference[i] => Some(j),
                    _ => Some(i),
                });
            assert_eq!(ours.argmax(&logits, &ctx), best.map(|i| i as u32), "{name} step {step}");
            checked += 1;
            if allowed.iter().all(|t| f.eos_ids.contains(t)) {
                break;
            }
            // Next: the first forced token, else the allowed non-EOS token with the best logit
            // (never the wrong draft above, unless it is the only choice).
            let next = forced.first().copied().unwrap_or_else(|| {
                let mut c: Vec<u32> = allowed.iter().copied().filter(|t| !f.eos_ids.contains(t)).collect();
                if c.len() > 1 && step % 4 == 3 {
                    c.retain(|t| Some(t) != drafts.first());
                }
                *c.iter()
                    .max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize]))
                    .unwrap()
            });
            tokens.push(next);
            // Now and then a rewind of two tokens, then the same tokens again.
            if step % 7 == 6 && tokens.len() > prompt.len() + 2 {
                let again = tokens.split_off(tokens.len() - 2);
                let ctx = Context {
                    tokens: &tokens,
                    prompt_len: prompt.len(),
                };
                ours.fill(&mut cands, &logits, &ctx);
                tokens.extend(again);
            }
        }
    }
    assert!(checked > 60, "{checked} steps checked");
}

#[test]
fn mask_application_equals_reference_masking_shakespeare() {
    let (f, m) = open(EXPERT);
    mask_application_equals_reference(&f, m.config.vocab_size);
}

#[test]
fn mask_application_equals_reference_masking_smollm2() {
    let Some(f) = common::cached_model("smollm2-135m") else {
        return;
    };
    let vocab = bushu::model::Model::new(&f).unwrap().config.vocab_size;
    mask_application_equals_reference(&f, vocab);
}

#[test]
fn speculative_decoding_under_a_grammar_equals_plain_decoding() {
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let (_, schema) = schemas().into_iter().find(|(n, _)| n == "recipe").unwrap();
    let g = compiler.compile(&Constraint::JsonSchema(schema.clone())).unwrap();
    let opts = GenerateOptions::new(
        80,
        SamplingParams {
            grammar: Some(g),
            ..SamplingParams::greedy()
        },
        f.eos_ids.clone(),
    );
    let p = f.tokenizer.encode("KING: a recipe\n", true).unwrap();
    let mut st = m.new_state(256);
    let plain = generate(&m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
    let length = DraftLengthParams {
        max: 6,
        ..DraftLengthParams::default()
    };
    let mut draft = DraftModel::new(&dm, 256, &opts.sampling, 0.0).unwrap();
    let mut st = m.new_state(256);
    let (spec, stats) =
        generate_speculative((&m, &f.tokenizer, &mut st), &p, &opts, &mut draft, length, &mut |_| {}).unwrap();
    assert_eq!(spec.tokens, plain.tokens);
    assert_eq!(spec.finish_reason, plain.finish_reason);
    assert!(stats.draft_n_accepted > 0, "{stats:?}");
    let mut lookup = PromptLookup::new(3).unwrap();
    let mut st = m.new_state(256);
    let (spec, _) =
        generate_speculative((&m, &f.tokenizer, &mut st), &p, &opts, &mut lookup, length, &mut |_| {}).unwrap();
    assert_eq!(spec.tokens, plain.tokens);
    if plain.finish_reason == FinishReason::Stop {
        let v: Value = serde_json::from_str(&plain.text).unwrap();
        assert!(validator(&schema).is_valid(&v), "{}", plain.text);
    }
}

// ---- Fast-forward ----

/// Schemas whose outputs have forced stretches of several kinds (keys, separators, enums, a `const`).
const FF_SCHEMAS: [&str; 6] = [
    "person",
    "order_with_items",
    "weather",
    "recipe",
    "geo_point_const_type",
    "log_entry",
];

/// Runs `schemas` on a model with and without fast-forward, greedy and sampled: the same tokens and
/// finish reason, and fewer forward passes (counted on the model's state). Returns the passes
/// (without, with) and the forced tokens (fed, kept).
fn fast_forward_equals_plain(
    f: &ModelFile,
    m: &Model,
    prompt: &dyn Fn(&str) -> Vec<u32>,
    max_tokens: usize,
) -> ((usize, usize), (usize, usize)) {
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let all = schemas();
    let (mut plain_passes, mut ff_passes, mut fed, mut kept) = (0, 0, 0, 0);
    for name in FF_SCHEMAS {
        let schema = &all.iter().find(|(n, _)| n == name).unwrap().1;
        let g = compiler.compile(&Constraint::JsonSchema(schema.clone())).unwrap();
        for (i, temperature) in [0.0, 0.9].into_iter().enumerate() {
            let sampling = SamplingParams {
                temperature,
                top_k: 0,
                top_p: 1.0,
                seed: 11 + i as u64,
                grammar: Some(g.clone()),
                ..Default::default()
            };
            let mut opts = GenerateOptions::new(max_tokens, sampling, f.eos_ids.clone());
            let p = prompt(name);
            opts.fast_forward = false;
            let mut st = m.new_state(p.len() + max_tokens + 1);
            let plain = generate(m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
            // Plain decoding: the prompt's pass, then one pass per token but the last.
            assert_eq!(st.passes(), plain.tokens.len(), "{name}");
            plain_passes += st.passes();
            opts.fast_forward = true;
            let mut st = m.new_state(p.len() + max_tokens + 1);
            let mut streamed = String::new();
            let (ff, stats) =
                generate_fast_forward((m, &f.tokenizer, &mut st), &p, &opts, &mut |s| streamed.push_str(s)).unwrap();
            let also = generate(
                m,
                &f.tokenizer,
                &mut m.new_state(p.len() + max_tokens + 1),
                &p,
                &opts,
                &mut |_| {},
            );
            assert_eq!(
                also.unwrap().tokens,
                ff.tokens,
                "{name}: generate() fast-forwards the same way"
            );
            assert_eq!(ff.tokens, plain.tokens, "{name} t={temperature}");
            assert_eq!(ff.finish_reason, plain.finish_reason, "{name} t={temperature}");
            assert_eq!(ff.text, plain.text);
            assert_eq!(streamed, plain.text);
            assert_eq!(st.passes(), 1 + stats.target_passes, "{name}");
            assert!(stats.forced_n_accepted <= stats.forced_n);
            // Each pass makes one token beside the forced tokens it keeps (the last pass may make more
            // than the output keeps).
            assert!(
                st.passes() + stats.forced_n_accepted >= ff.tokens.len(),
                "{name}: {stats:?}"
            );
            eprintln!(
                "{name} t={temperature}: {} tokens, {} passes without fast-forward, {} with ({} forced fed, {} kept)",
                ff.tokens.len(),
                plain.tokens.len(),
                st.passes(),
                stats.forced_n,
                stats.forced_n_accepted
            );
            ff_passes += st.passes();
            fed += stats.forced_n;
            kept += stats.forced_n_accepted;
        }
    }
    eprintln!("passes: {plain_passes} without fast-forward, {ff_passes} with; forced tokens fed {fed}, kept {kept}");
    assert!(
        ff_passes < plain_passes,
        "{ff_passes} passes with fast-forward, {plain_passes} without"
    );
    ((plain_passes, ff_passes), (fed, kept))
}

#[test]
fn fast_forward_gives_plain_decodings_tokens_in_fewer_passes_shakespeare() {
    let (f, m) = open(EXPERT);
    let tok = f.tokenizer.clone();
    let ((plain, ff), (fed, kept)) = fast_forward_equals_plain(
        &f,
        &m,
        &|name| tok.encode(&format!("KING: {name}\n"), true).unwrap(),
        80,
    );
    // SentencePiece: the model picks its own split of the forced bytes, often not the greedy one; still
    // a good share of the drafts stand (392 of 1,095 when written) and the passes halve (321 of 713).
    assert!(kept * 4 > fed, "{kept} of {fed} forced tokens kept");
    assert!(ff * 2 < plain, "{ff} passes with fast-forward, {plain} without");
}

#[test]
fn fast_forward_gives_plain_decodings_tokens_in_fewer_passes_tiny_llama() {
    // Random weights, Llama 2's 32,000-token SentencePiece vocabulary.
    let (f, m) = open("models/tiny-llama-q8_0.gguf");
    let tok = f.tokenizer.clone();
    fast_forward_equals_plain(&f, &m, &|name| tok.encode(&format!("Hello {name}"), true).unwrap(), 48);
}

#[test]
fn fast_forward_gives_plain_decodings_tokens_in_fewer_passes_smollm2() {
    let Some(f) = common::cached_model("smollm2-135m") else {
        return;
    };
    let m = Model::new(&f).unwrap();
    let tok = f.tokenizer.clone();
    let prompt = |name: &str| {
        let text = format!(
            "<|im_start|>user\nGive an example {} as JSON.<|im_end|>\n<|im_start|>assistant\n",
            name.replace('_', " ")
        );
        tok.encode_with(&text, false, true).unwrap()
    };
    let ((plain, ff), (fed, kept)) = fast_forward_equals_plain(&f, &m, &prompt, 80);
    // Byte-level BPE: llguidance's forced tokens are the only ones its mask allows, so they stand.
    assert_eq!(kept, fed, "forced tokens rejected");
    assert!(ff * 10 < plain * 8, "{ff} passes with fast-forward, {plain} without");
}

#[test]
fn fast_forward_with_speculative_decoding_equals_plain_decoding() {
    let (f, m) = open(EXPERT);
    let (_, dm) = open(AMATEUR);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let all = schemas();
    for name in ["recipe", "order_with_items"] {
        let schema = &all.iter().find(|(n, _)| n == name).unwrap().1;
        let g = compiler.compile(&Constraint::JsonSchema(schema.clone())).unwrap();
        for temperature in [0.0, 0.8] {
            let mut opts = GenerateOptions::new(
                80,
                SamplingParams {
                    temperature,
                    top_k: 0,
                    top_p: 1.0,
                    seed: 3,
                    grammar: Some(g.clone()),
                    ..Default::default()
                },
                f.eos_ids.clone(),
            );
            let p = f.tokenizer.encode(&format!("KING: {name}\n"), true).unwrap();
            opts.fast_forward = false;
            let plain = generate(&m, &f.tokenizer, &mut m.new_state(256), &p, &opts, &mut |_| {}).unwrap();
            opts.fast_forward = true;
            let length = DraftLengthParams {
                max: 4,
                ..DraftLengthParams::default()
            };
            let mut draft = DraftModel::new(&dm, 256, &opts.sampling, 0.0).unwrap();
            let mut st = m.new_state(256);
            let (spec, stats) =
                generate_speculative((&m, &f.tokenizer, &mut st), &p, &opts, &mut draft, length, &mut |_| {}).unwrap();
            assert!(stats.forced_steps > 0 && stats.draft_steps > 0, "{name}: {stats:?}");
            assert_eq!(st.passes(), 1 + stats.target_passes);
            if temperature == 0.0 {
                // Greedy: token for token (sampled speculative decoding is exact in distribution only).
                assert_eq!(spec.tokens, plain.tokens, "{name}");
            } else {
                let v: Value = serde_json::from_str(&spec.text).unwrap_or(Value::Null);
                if spec.finish_reason == FinishReason::Stop {
                    assert!(validator(schema).is_valid(&v), "{name}: {}", spec.text);
                }
            }
        }
    }
}

#[test]
fn engine_fast_forward_gives_the_same_outputs_in_fewer_steps() {
    use bushu::engine::{Engine, EngineConfig, Request};
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let all = schemas();
    let mut reqs = Vec::new();
    for (i, name) in FF_SCHEMAS.iter().enumerate() {
        let schema = &all.iter().find(|(n, _)| n == name).unwrap().1;
        let g = compiler.compile(&Constraint::JsonSchema(schema.clone())).unwrap();
        let mut r = Request::greedy(f.tokenizer.encode(&format!("KING: {name}\n"), true).unwrap(), 64);
        r.sampling.grammar = Some(g);
        if i % 2 == 1 {
            r.sampling.temperature = 0.9;
            r.sampling.top_k = 0;
            r.sampling.top_p = 1.0;
            r.sampling.seed = i as u64;
        }
        reqs.push(r);
    }
    // And one unconstrained sequence in the same batch.
    reqs.push(Request::greedy(f.tokenizer.encode("KING:", true).unwrap(), 40));
    let eos = f.eos_ids.clone();
    let mut engine = Engine::new(m, eos, EngineConfig::for_model(&open(EXPERT).1, 8, Some(256), None));
    engine.fast_forward = false;
    let plain = engine.generate(reqs.clone()).unwrap();
    let plain_steps = engine.gauges().steps;
    assert_eq!(engine.forced, Default::default());
    engine.fast_forward = true;
    let ff = engine.generate(reqs).unwrap();
    let ff_steps = engine.gauges().steps - plain_steps;
    assert_eq!(ff, plain);
    let c = engine.forced;
    eprintln!("engine: {plain_steps} steps without fast-forward, {ff_steps} with; forced {c:?}");
    assert!(c.steps > 0 && c.accepted > 0, "{c:?}");
    assert!(
        ff_steps < plain_steps,
        "{ff_steps} steps with fast-forward, {plain_steps} without"
    );
    for (out, name) in ff.iter().zip(FF_SCHEMAS) {
        let schema = &all.iter().find(|(n, _)| n == name).unwrap().1;
        if f.eos_ids.contains(out.last().unwrap()) {
            let text = f.tokenizer.decode(&out[..out.len() - 1]);
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
            assert!(validator(schema).is_valid(&v), "{name}: {text}");
        }
    }
}

// ---- Command line ----

fn bushu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bushu")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_run_with_a_json_schema_regex_and_grammar() {
    let m = shared(EXPERT).to_str().unwrap().to_owned();
    let dir = std::env::temp_dir().join(format!("bushu-structured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, schema) = schemas().into_iter().find(|(n, _)| n == "weather").unwrap();
    let sp = dir.join("weather.json");
    std::fs::write(&sp, schema.to_string()).unwrap();
    // Greedy `run --json` of at most `n` tokens after "KING:", with `extra` flags: its JSON output.
    let greedy = |n: &str, extra: &[&str]| -> Value {
        let args = ["run", "-m", &m, "-p", "KING:", "-n", n, "--temperature", "0", "--json"];
        let (code, out, err) = bushu(&[&args[..], extra].concat());
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let o = greedy("80", &["--json-schema", sp.to_str().unwrap()]);
    assert_eq!(o["finish_reason"], "stop", "{o}");
    let v: Value = serde_json::from_str(o["text"].as_str().unwrap()).unwrap();
    assert!(validator(&schema).is_valid(&v), "{v}");
    // Without fast-forward: the same tokens, one pass per token (prompt's pass included, the last token
    // not fed); with it, fewer.
    let slow = greedy("80", &["--json-schema", sp.to_str().unwrap(), "--no-fast-forward"]);
    assert_eq!(slow["tokens"], o["tokens"]);
    let n = o["tokens"].as_array().unwrap().len() as u64;
    assert_eq!(slow["timings"]["forward_passes"], n);
    assert!(o["timings"]["forward_passes"].as_u64().unwrap() < n, "{o}");

    let (code, out, err) = bushu(&["run", "-m", &m, "-p", "KING:", "-n", "20", "--regex", "(yes|no)"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.trim() == "yes" || out.trim() == "no", "{out:?}");

    // A grammar file, greedy: the finish reason and the text.
    let with_grammar = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let o = greedy("30", &["--grammar", path.to_str().unwrap()]);
        let stop = o["finish_reason"] == "stop";
        assert!(stop || o["finish_reason"] == "length", "{o}");
        (stop, o["text"].as_str().unwrap().to_owned())
    };
    let (stop, text) = with_grammar("g.lark", "start: \"[\" num (\", \" num)* \"]\"\nnum: /[1-9][0-9]?/\n");
    if stop {
        let v: Vec<u32> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(v.iter().all(|&n| (1..100).contains(&n)));
    } else {
        assert!(text.starts_with('['), "{text}");
    }
    // A GBNF grammar (llama.cpp's syntax), told apart from Lark by its `::=`.
    let gbnf = "root ::= \"<\" digit{1,4} (\",\" digit{1,4})* \">\"\ndigit ::= [0-9]\n";
    let (stop, text) = with_grammar("digits.gbnf", gbnf);
    let rx = fancy_regex::Regex::new(r"^<[0-9]{1,4}(,[0-9]{1,4})*>$").unwrap();
    assert!(
        if stop {
            rx.is_match(&text).unwrap()
        } else {
            text.starts_with('<')
        },
        "{text:?}"
    );

    // Errors: one line, non-zero exit, nothing generated.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"type\": \"integer\", \"minimum\": 3, \"maximum\": 1}").unwrap();
    let notjson = dir.join("not.json");
    std::fs::write(&notjson, "{type: object").unwrap();
    let badgbnf = dir.join("bad.gbnf");
    std::fs::write(&badgbnf, "root ::= \"a\" item\n").unwrap();
    for (args, needle) in [
        (
            vec!["--grammar", badgbnf.to_str().unwrap()],
            "--grammar: invalid GBNF grammar: undefined rule `item`",
        ),
        (vec!["--regex", "[0-9"], "--regex: invalid regex"),
        (
            vec!["--json-schema", bad.to_str().unwrap()],
            "--json-schema: invalid JSON schema: Unsatisfiable",
        ),
        (vec!["--json-schema", notjson.to_str().unwrap()], "is not JSON"),
        (vec!["--json-schema", "/nonexistent/s.json"], "cannot read"),
        (vec!["--json-object", "--regex", "a"], "cannot be combined"),
        (vec!["--json-object", "--beams", "2"], "cannot be combined"),
    ] {
        let mut a = vec!["run", "-m", &m, "-p", "KING:", "-n", "4"];
        a.extend_from_slice(&args);
        let (code, out, err) = bushu(&a);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.trim().is_empty(), "{args:?}: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Measurements for docs/STRUCTURED.md and docs/BENCHMARKS.md (run by hand: `cargo test --release --test
/// structured -- --ignored --nocapture measure`): on a cached model, the compiler's build time, compile
/// time and first-mask latency per schema, the time per token of the sampler's grammar step (sync one
/// token, compute llguidance's mask, fill the candidates from it) replaying greedy outputs, and decode
/// tokens/s on the same prompt constrained with fast-forward, constrained without, and unconstrained
/// (the same number of tokens, no end-of-sequence).
fn measure(model: &str, names: &[&str], max_tokens: usize) {
    use bushu::sampling::grammar::GrammarMask;
    use bushu::sampling::{Candidates, Context};
    let Some(f) = common::cached_model(model) else {
        return;
    };
    let m = Model::new(&f).unwrap();
    let vocab = m.config.vocab_size;
    let t0 = std::time::Instant::now();
    let compiler = Compiler::new(&f.tokenizer, vocab, &f.eos_ids).unwrap();
    eprintln!(
        "{model}: vocabulary {vocab}; compiler (token trie + llguidance tables) built in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let (mut times, mut first, mut compile) = (Vec::new(), Vec::new(), Vec::new());
    // (tokens after the first, seconds) for: fast-forward, no fast-forward, unconstrained.
    let mut speed = [(0usize, 0f64); 3];
    let (mut passes_ff, mut passes_plain) = (0, 0);
    let logits: Vec<f32> = (0..vocab).map(|i| (i % 97) as f32 * 0.01).collect();
    for (name, schema) in schemas().into_iter().filter(|(n, _)| names.contains(&n.as_str())) {
        let t0 = std::time::Instant::now();
        let g = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
        compile.push(t0.elapsed().as_secs_f64());
        let text = format!(
            "<|im_start|>user\nGive an example {} as JSON.<|im_end|>\n<|im_start|>assistant\n",
            name.replace('_', " ")
        );
        let p = f.tokenizer.encode_with(&text, false, true).unwrap();
        let run = |grammar: Option<_>, ff: bool, n: usize, eos: Vec<u32>| {
            let sampling = SamplingParams {
                grammar,
                ..SamplingParams::greedy()
            };
            let mut st = m.new_state(p.len() + max_tokens + 2);
            let mut opts = GenerateOptions::new(n, sampling, eos);
            opts.fast_forward = ff;
            let g = generate(&m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
            (g, st.passes())
        };
        let (c, pc) = run(Some(g.clone()), true, max_tokens, f.eos_ids.clone());
        let (c2, pc2) = run(Some(g.clone()), false, max_tokens, f.eos_ids.clone());
        assert_eq!(c.tokens, c2.tokens, "{name}");
        let (u, _) = run(None, false, c.tokens.len(), Vec::new());
        for (k, g) in [&c, &c2, &u].into_iter().enumerate() {
            speed[k].0 += g.tokens.len().saturating_sub(1);
            speed[k].1 += g.timings.decode_ms / 1e3;
        }
        passes_ff += pc;
        passes_plain += pc2;
        eprintln!(
            "{name}: {} tokens, {pc} passes with fast-forward ({pc2} without); {:.1} / {:.1} / {:.1} t/s (ff / no ff / unconstrained)",
            c.tokens.len(),
            c.timings.decode_tokens_per_s,
            c2.timings.decode_tokens_per_s,
            u.timings.decode_tokens_per_s
        );
        let mut mask = GrammarMask::new(&g);
        let mut cands = Candidates::default();
        for i in 0..c.tokens.len() {
            let ctx = Context {
                tokens: &c.tokens[..i],
                prompt_len: 0,
            };
            let t0 = std::time::Instant::now();
            mask.fill(&mut cands, &logits, &ctx);
            let dt = t0.elapsed().as_secs_f64();
            assert!(cands.items.iter().any(|x| x.0 == c.tokens[i]), "{name}: step {i}");
            if i == 0 {
                first.push(dt);
            } else {
                times.push(dt);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let p99 = times[((times.len() as f64 * 0.99) as usize).min(times.len() - 1)];
    first.sort_by(f64::total_cmp);
    compile.sort_by(f64::total_cmp);
    eprintln!(
        "{model}: grammar step per token over {} steps: mean {:.1} us, median {:.1} us, p99 {:.1} us, max {:.1} us",
        times.len(),
        mean * 1e6,
        times[times.len() / 2] * 1e6,
        p99 * 1e6,
        times.last().unwrap() * 1e6
    );
    eprintln!(
        "{model}: compile median {:.2} ms, max {:.2} ms; first mask after compile median {:.1} us, max {:.1} us",
        compile[compile.len() / 2] * 1e3,
        compile.last().unwrap() * 1e3,
        first[first.len() / 2] * 1e6,
        first.last().unwrap() * 1e6
    );
    let tps = |(n, s): (usize, f64)| n as f64 / s;
    eprintln!(
        "{model}: decode {:.2} t/s with fast-forward ({passes_ff} passes), {:.2} t/s without ({passes_plain} passes), {:.2} t/s unconstrained; ratios {:.2}x and {:.2}x of unconstrained",
        tps(speed[0]),
        tps(speed[1]),
        tps(speed[2]),
        tps(speed[0]) / tps(speed[2]),
        tps(speed[1]) / tps(speed[2])
    );
}

#[test]
#[ignore]
fn measure_smollm2() {
    let names = [
        "person",
        "address",
        "order_with_items",
        "weather",
        "book",
        "log_entry",
        "recipe",
        "http_request",
    ];
    measure("smollm2-135m", &names, 64);
}

#[test]
#[ignore]
fn measure_qwen25_coder() {
    measure(
        "qwen2.5-coder-0.5b",
        &["person", "order_with_items", "weather", "log_entry", "recipe"],
        48,
    );
}

#[test]
fn cli_chat_answers_follow_the_schema() {
    use std::io::Write;
    let m = shared(EXPERT).to_str().unwrap().to_owned();
    let dir = std::env::temp_dir().join(format!("bushu-structured-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, schema) = schemas().into_iter().find(|(n, _)| n == "weather").unwrap();
    let sp = dir.join("weather.json");
    std::fs::write(&sp, schema.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["chat", "-m", &m, "-n", "96", "--json-schema", sp.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"The weather in Verona?\nAnd in Padua?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    for a in answers {
        let v: Value = serde_json::from_str(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        assert!(validator(&schema).is_valid(&v), "{v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forced_tokens_spell_the_forced_bytes_with_pieces() {
    use bushu::tokenizer::TokenType;
    let (f, m) = open(EXPERT);
    let compiler = Compiler::new(&f.tokenizer, m.config.vocab_size, &f.eos_ids).unwrap();
    let schema = schemas().into_iter().find(|(n, _)| n == "person").unwrap().1;
    assert_eq!(schema["required"][0], "name", "the fixture's first required key");
    let g = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
    let mut s = g.state();
    // At the start the schema forces the object's opening and its first key (compact layout).
    let forced = s.forced(&[], 32);
    let bytes: Vec<u8> = forced
        .iter()
        .flat_map(|&t| f.tokenizer.id_to_bytes(t).to_vec())
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), "{\"name\": \"");
    // `"` is an ordinary piece of this vocabulary: the draft uses it, not the byte token <0x22>.
    let quote = forced[1];
    assert_eq!(f.tokenizer.id_to_bytes(quote), b"\"");
    assert_eq!(f.tokenizer.token_type(quote), Some(TokenType::Normal));
    // `{` has no piece: its byte token stays.
    assert_eq!(f.tokenizer.token_type(forced[0]), Some(TokenType::Byte));
    assert_eq!(s.forced(&[], 3), forced[..3]);
    // Each forced token is allowed where it stands.
    for i in 0..forced.len() {
        assert!(s.mask(&forced[..i]).is_allowed(forced[i]), "token {i}");
    }
    // Inside the free string nothing is forced.
    assert!(s.forced(&forced, 32).is_empty());
}

/// The calling thread's CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`): what the thread itself spent,
/// without the time other processes had the core.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Where the time of a grammar step goes (run by hand: `cargo test --release --test structured --
/// --ignored --nocapture profile_`): greedy outputs of the model on the schemas of [`measure`], then
/// each output replayed token by token through a fresh [`GrammarState`] three times — the first replay
/// right after compiling (llguidance builds its lexer automaton lazily: states first visited here cost
/// their construction), the second on a new state of the same grammar (clones share the lexer's
/// caches: what a second sequence with the same grammar pays) — timing separately the sync (consuming
/// the new token), llguidance's mask, filling the candidates from it (sampling's path) and greedy's
/// pick straight from its bits (`masked_argmax`), in wall-clock time and in the
/// thread's CPU time (a step much longer in wall clock than in CPU time lost the core to another
/// process). Prints mean, median, p99 and the slowest steps with the token that precedes them.
fn profile(model: &str, names: &[&str], max_tokens: usize) {
    use bushu::sampling::Candidates;
    let Some(f) = common::cached_model(model) else {
        return;
    };
    let m = Model::new(&f).unwrap();
    let vocab = m.config.vocab_size;
    let compiler = Compiler::new(&f.tokenizer, vocab, &f.eos_ids).unwrap();
    let logits: Vec<f32> = (0..vocab).map(|i| (i % 97) as f32 * 0.01).collect();
    // Per replay: (what, wall s, cpu s) per step and part.
    let mut rows: [Vec<(String, [f64; 8])>; 2] = [Vec::new(), Vec::new()];
    for (name, schema) in schemas().into_iter().filter(|(n, _)| names.contains(&n.as_str())) {
        let g = compiler.compile(&Constraint::JsonSchema(schema)).unwrap();
        let text = format!(
            "<|im_start|>user\nGive an example {} as JSON.<|im_end|>\n<|im_start|>assistant\n",
            name.replace('_', " ")
        );
        let p = f.tokenizer.encode_with(&text, false, true).unwrap();
        let sampling = SamplingParams {
            grammar: Some(g.clone()),
            ..SamplingParams::greedy()
        };
        let mut st = m.new_state(p.len() + max_tokens + 2);
        let opts = GenerateOptions::new(max_tokens, sampling, f.eos_ids.clone());
        let out = generate(&m, &f.tokenizer, &mut st, &p, &opts, &mut |_| {}).unwrap();
        // A fresh compile: the generation above warmed the grammar's lexer.
        let g = compiler.compile(g.constraint()).unwrap();
        for rows in rows.iter_mut() {
            let mut s = g.state();
            let mut cands = Candidates::default();
            for i in 0..out.tokens.len() {
                let (w0, c0) = (std::time::Instant::now(), thread_cpu());
                s.sync(&out.tokens[..i]).unwrap();
                let (w1, c1) = (std::time::Instant::now(), thread_cpu());
                let mask = s.mask(&out.tokens[..i]);
                let (w2, c2) = (std::time::Instant::now(), thread_cpu());
                cands.items.clear();
                mask.iter_set_entries(|t| cands.items.push((t as u32, logits[t])));
                let (w3, c3) = (std::time::Instant::now(), thread_cpu());
                std::hint::black_box(bushu::sampling::grammar::masked_argmax(&mask, &logits));
                let (w4, c4) = (std::time::Instant::now(), thread_cpu());
                assert!(mask.is_allowed(out.tokens[i]), "{name}: step {i}");
                let prev = if i == 0 {
                    "<start>".to_owned()
                } else {
                    f.tokenizer.decode(&out.tokens[i - 1..i])
                };
                rows.push((
                    format!("{name} step {i} after {prev:?} ({} allowed)", mask.num_set()),
                    [
                        (w1 - w0).as_secs_f64(),
                        c1 - c0,
                        (w2 - w1).as_secs_f64(),
                        c2 - c1,
                        (w3 - w2).as_secs_f64(),
                        c3 - c2,
                        (w4 - w3).as_secs_f64(),
                        c4 - c3,
                    ],
                ));
            }
        }
    }
    let parts = [
        "sync wall",
        "sync cpu",
        "mask wall",
        "mask cpu",
        "fill wall",
        "fill cpu",
        "pick wall",
        "pick cpu",
    ];
    for (r, rows) in rows.iter().enumerate() {
        let what = ["first replay after compile", "second replay (lexer caches warm)"][r];
        eprintln!("{model} ({vocab} tokens), {what}, {} steps:", rows.len());
        for (k, part) in parts.iter().enumerate() {
            let mut v: Vec<f64> = rows.iter().map(|x| x.1[k]).collect();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let p99 = v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)];
            eprintln!(
                "  {part:9}: mean {:8.1} us  median {:7.1} us  p99 {:8.1} us  max {:8.1} us",
                mean * 1e6,
                v[v.len() / 2] * 1e6,
                p99 * 1e6,
                v.last().unwrap() * 1e6
            );
        }
        let mut slow: Vec<&(String, [f64; 8])> = rows.iter().collect();
        slow.sort_by(|a, b| (b.1[2] + b.1[0]).total_cmp(&(a.1[2] + a.1[0])));
        for (what, t) in slow.iter().take(8) {
            eprintln!(
                "  slow: {what}: sync {:.0}/{:.0} us, mask {:.0}/{:.0} us (wall/cpu)",
                t[0] * 1e6,
                t[1] * 1e6,
                t[2] * 1e6,
                t[3] * 1e6
            );
        }
    }
}

#[test]
#[ignore]
fn profile_smollm2() {
    let names = [
        "person",
        "address",
        "order_with_items",
        "weather",
        "book",
        "log_entry",
        "recipe",
        "http_request",
    ];
    profile("smollm2-135m", &names, 64);
}

#[test]
#[ignore]
fn profile_qwen25_coder() {
    profile(
        "qwen2.5-coder-0.5b",
        &["person", "order_with_items", "weather", "log_entry", "recipe"],
        48,
    );
}
