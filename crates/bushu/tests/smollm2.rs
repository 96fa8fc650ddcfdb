//! The default model, SmolLM2-135M-Instruct Q4_1, against its references (issue 10, "What must hold"):
//! - logprobs against the exact model (the file's weights dequantized to f32 in transformers), along 64 greedy
//!   tokens of a fixed chat prompt: bushu's exact path matches it, bushu's fast path is at least as close as
//!   llama.cpp, and greedy tokens equal llama.cpp's up to the first near-tie; both paths on the France prompt;
//! - tokenization equal to `llama-tokenize` on a varied text set;
//! - the chat rendering of multi-turn conversations equal to transformers' `apply_chat_template`, token for token.
//!
//! Fixtures: tests/fixtures/gguf/smollm2-135m-q4_1.json (scripts/refs/make_gguf_refs.py),
//! tests/fixtures/tokenize/smollm2.json (make_tokenize_refs.py), tests/fixtures/smollm2/chat.json
//! (make_smollm2_chat_refs.py). The model file comes from `bushu pull` (in `$BUSHU_HOME`, default
//! ~/.cache/bushu/models); without it these tests are skipped with a message.

mod common;

use bushu::chat::session::template_for;
use bushu::chat::Message;
use bushu::model::llama::Logits;
use bushu::model::{Model, ModelFile};
use bushu::pull::DEFAULT_MODEL;
use common::{fixture, log_softmax, read_json, u32s};
use kernels::Precision;
use serde_json::Value as Json;

fn model_file() -> Option<ModelFile> {
    common::cached_model(DEFAULT_MODEL)
}

fn argmax(lp: &[f64]) -> u32 {
    (0..lp.len()).fold(0, |b, i| if lp[i] > lp[b] { i } else { b }) as u32
}

/// Gap between the best and second-best log-probabilities.
fn top2_gap(lp: &[f64]) -> f64 {
    let mut v: Vec<f64> = lp.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

/// Greedy decoding for `n` steps (EOS ignored, as the references do): tokens and each step's log-probs.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f64>>) {
    let mut st = model.new_state(prompt.len() + n + 1);
    let mut lp = log_softmax(model.forward(&mut st, prompt, Logits::Last).unwrap());
    let (mut toks, mut lps) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = argmax(&lp);
        toks.push(t);
        lps.push(lp);
        lp = log_softmax(model.forward(&mut st, &[t], Logits::Last).unwrap());
    }
    (toks, lps)
}

/// Log-probs of each step along a given path (teacher forcing).
fn forced(model: &Model, prompt: &[u32], path: &[u32]) -> Vec<Vec<f64>> {
    let vocab = model.config.vocab_size;
    let mut st = model.new_state(prompt.len() + path.len() + 1);
    let mut out = vec![log_softmax(model.forward(&mut st, prompt, Logits::Last).unwrap())];
    let all = model.forward(&mut st, &path[..path.len() - 1], Logits::All).unwrap();
    out.extend(all.chunks(vocab).map(log_softmax));
    out
}

/// `[[id, logprob], ...]` per step.
fn top5(v: &Json) -> Vec<Vec<(u32, f64)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                .collect()
        })
        .collect()
}

/// Max and mean |a - ref| over the reference's top-5 ids, per step.
fn errors(reference: &[Vec<(u32, f64)>], ours: &[Vec<f64>]) -> (f64, f64) {
    let d: Vec<f64> = reference
        .iter()
        .zip(ours)
        .flat_map(|(r, o)| r.iter().map(|&(id, lp)| (o[id as usize] - lp).abs()))
        .collect();
    (
        d.iter().fold(0.0, |a: f64, &b| a.max(b)),
        d.iter().sum::<f64>() / d.len() as f64,
    )
}

/// Steps on which two greedy paths agree; the first disagreement must be a near-tie for both deciders.
fn agree_until_near_tie(
    ours: &[u32],
    ours_lp: &[Vec<f64>],
    theirs: &[u32],
    their_gap: &dyn Fn(usize) -> f64,
    tie: f64,
) -> usize {
    let n = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
    if n < ours.len().min(theirs.len()) {
        let (g_ours, g_theirs) = (top2_gap(&ours_lp[n]), their_gap(n));
        assert!(
            g_ours < tie && g_theirs < tie,
            "paths part at step {n} ({} vs {}) where the top-2 gaps are {g_ours:.4} (bushu) and {g_theirs:.4} (reference), \
             not a near-tie (< {tie})",
            ours[n],
            theirs[n]
        );
    }
    n
}

#[test]
fn logprobs_against_exact_model_and_llamacpp() {
    let Some(file) = model_file() else { return };
    let r = read_json(&fixture("gguf/smollm2-135m-q4_1.json"));
    let prompt = u32s(&r["prompt_ids"]);
    let exact_toks = u32s(&r["exact"]["tokens"]);
    let exact_top5 = top5(&r["exact"]["top5"]);
    let lc_toks = u32s(&r["llamacpp"]["tokens"]);
    let lc_top5 = top5(&r["llamacpp"]["top5"]);
    let exact_on_lc = top5(&r["exact_on_llamacpp_path"]["top5"]);
    let n = exact_toks.len();
    let tok = &file.tokenizer;

    // The fixture's prompt is the chat template's rendering, tokenized as bushu does.
    let (template, _, _) = template_for(&file).unwrap();
    let msgs: Vec<Message> = serde_json::from_value(r["chat_messages"].clone()).unwrap();
    let text = template.render(&msgs, true).unwrap();
    assert_eq!(text, r["prompt"].as_str().unwrap());
    assert_eq!(tok.encode_with(&text, false, true).unwrap(), prompt);

    // Exact path: the f32 reference up to f32 rounding, and its greedy tokens.
    let mut exact = Model::new(&file).unwrap();
    exact.precision = Precision::Exact;
    let (ex_err_max, ex_err_mean) = errors(&exact_top5, &forced(&exact, &prompt, &exact_toks));
    let (ex_toks, ex_lps) = greedy(&exact, &prompt, n);
    let ref_gap = |s: usize| exact_top5[s][0].1 - exact_top5[s][1].1;
    let ex_agree = agree_until_near_tie(&ex_toks, &ex_lps, &exact_toks, &ref_gap, 0.05);

    // Fast path along llama.cpp's greedy path, against the exact model on that path, over the pairs llama.cpp
    // reports too (its top 5 ∩ the exact model's top 5).
    let mut fast = Model::new(&file).unwrap();
    fast.precision = Precision::Fast;
    let fast_on_lc = forced(&fast, &prompt, &lc_toks);
    let (mut d_lc, mut d_us) = (Vec::new(), Vec::new());
    for s in 0..n {
        for &(id, lp) in &exact_on_lc[s] {
            if let Some(&(_, l)) = lc_top5[s].iter().find(|p| p.0 == id) {
                d_lc.push((l - lp).abs());
                d_us.push((fast_on_lc[s][id as usize] - lp).abs());
            }
        }
    }
    // Mean, 95th percentile and maximum of the errors.
    let stats = |d: &[f64]| {
        let mut v = d.to_vec();
        v.sort_by(f64::total_cmp);
        (
            v[v.len() - 1],
            v[(v.len() - 1) * 95 / 100],
            v.iter().sum::<f64>() / v.len() as f64,
        )
    };
    let ((lc_max, lc_p95, lc_mean), (us_max, us_p95, us_mean)) = (stats(&d_lc), stats(&d_us));
    let (fast_toks, fast_lps) = greedy(&fast, &prompt, n);
    let lc_gap = |s: usize| lc_top5[s][0].1 - lc_top5[s][1].1;
    let fast_agree = agree_until_near_tie(&fast_toks, &fast_lps, &lc_toks, &lc_gap, 0.15);

    eprintln!(
        "exact path vs exact model: top-5 logprob err max {ex_err_max:.2e} mean {ex_err_mean:.2e}; greedy agrees {ex_agree}/{n}\n\
         on llama.cpp's path, vs the exact model ({} pairs): llama.cpp err max {lc_max:.4} p95 {lc_p95:.4} \
         mean {lc_mean:.4}; bushu fast max {us_max:.4} p95 {us_p95:.4} mean {us_mean:.4}; bushu fast greedy = llama.cpp greedy for {fast_agree}/{n} tokens",
        d_us.len()
    );
    assert!(
        ex_err_max < 2e-3,
        "exact path differs from the exact model by {ex_err_max}"
    );
    assert!(
        ex_agree >= 16,
        "the exact path follows the exact model for only {ex_agree} tokens"
    );
    // The bulk of the errors: no farther from the exact model than llama.cpp's. The single largest error is
    // on one hypersensitive pair, the same for both engines (llama.cpp 1.44): f32 rounding alone moves
    // bushu's error there between 0.82 and 1.53 (measured: summing the softmax in two lanes instead of
    // one, fused multiply-adds in the score dot product, an 8-lane exp), so the maximum is held to
    // llama.cpp's within a margin rather than below it.
    assert!(
        us_mean <= lc_mean && us_p95 <= lc_p95 && us_max <= 1.25 * lc_max,
        "bushu's fast path is farther from the exact model than llama.cpp \
         (mean {us_mean:.4} vs {lc_mean:.4}, p95 {us_p95:.4} vs {lc_p95:.4}, max {us_max:.4} vs {lc_max:.4})"
    );
    assert!(
        fast_agree >= 4,
        "bushu's fast path follows llama.cpp for only {fast_agree} tokens"
    );

    // The France prompt, both paths: the first token is a near-tie that the activation rounding flips.
    let (the, l) = (504u32, 60u32);
    assert_eq!(tok.decode(&[the]), "The");
    assert_eq!(tok.decode(&[l]), "L");
    assert_eq!(
        (ex_toks[0], fast_toks[0]),
        (the, l),
        "exact answers \"The\", the fast path (like llama.cpp) \"L\""
    );
    let (e0, f0) = (&ex_lps[0], &fast_lps[0]);
    eprintln!(
        "France, first token: exact \"The\" {:.3} \"L\" {:.3} (reference {:.3} / {:.3}); fast \"L\" {:.3} \"The\" {:.3} \
         (llama.cpp {:.3} / {:.3})",
        e0[the as usize], e0[l as usize], exact_top5[0][0].1, exact_top5[0][1].1,
        f0[l as usize], f0[the as usize], lc_top5[0][0].1, lc_top5[0][1].1
    );
    let eos = file.eos_ids.clone();
    let upto_eos = |t: &[u32]| tok.decode(&t[..t.iter().position(|x| eos.contains(x)).unwrap_or(t.len())]);
    assert_eq!(upto_eos(&ex_toks), "The capital of France is Paris.");
    assert!(
        upto_eos(&fast_toks).starts_with("L'Étoile, la"),
        "{}",
        upto_eos(&fast_toks)
    );
    eprintln!(
        "exact: {:?}\nfast:  {:?}",
        upto_eos(&ex_toks),
        upto_eos(&fast_toks[..24])
    );
}

#[test]
fn tokenization_equals_llama_tokenize() {
    let Some(file) = model_file() else { return };
    let r = read_json(&fixture("tokenize/smollm2.json"));
    let tok = &file.tokenizer;
    let cases = r["cases"].as_array().unwrap();
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = u32s(&c["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}:\n  bushu     {got:?}\n  llama.cpp {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} texts tokenize differently:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    eprintln!("{} texts tokenize as llama-tokenize does", cases.len());
}

#[test]
fn chat_rendering_equals_transformers_token_for_token() {
    let Some(file) = model_file() else { return };
    let r = read_json(&fixture("smollm2/chat.json"));
    let (template, stops, own) = template_for(&file).unwrap();
    assert!(own, "the file carries its chat template");
    assert_eq!(template.bos_token(), r["bos_token"].as_str().unwrap());
    assert_eq!(template.eos_token(), r["eos_token"].as_str().unwrap());
    assert!(
        stops.contains(&file.tokenizer.token_to_id("<|im_end|>").unwrap()),
        "stops on <|im_end|>"
    );
    for c in r["conversations"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let msgs: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let text = template
            .render(&msgs, c["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(text, c["text"].as_str().unwrap(), "{name}: rendering");
        let ids = file.tokenizer.encode_with(&text, false, true).unwrap();
        assert_eq!(ids, u32s(&c["ids"]), "{name}: token ids");
    }
}

/// Greedy tokens of a chat answer (to the first end-of-turn token, at most `n`).
fn answer(model: &Model, prompt: &[u32], n: usize, stops: &[u32]) -> Vec<u32> {
    let mut st = model.new_state(prompt.len() + n + 1);
    let mut lp = log_softmax(model.forward(&mut st, prompt, Logits::Last).unwrap());
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&lp);
        out.push(t);
        if stops.contains(&t) {
            break;
        }
        lp = log_softmax(model.forward(&mut st, &[t], Logits::Last).unwrap());
    }
    out
}

/// The default precision answers as the exact model does (issue 22), on the prompts of the measured set
/// (bench/prompts/chat-prompts.txt, docs/PRECISION.md) where the 8-bit path's greedy answer parts from the
/// exact model's within its first 8 tokens: the default's first 8 tokens equal the exact model's on every
/// one, while the 8-bit path's differ on most (the check can fail).
#[test]
fn default_precision_answers_as_the_exact_model() {
    let Some(file) = model_file() else { return };
    // Line numbers (from 0) in the prompt set.
    let picked = [
        0usize, 3, 4, 10, 13, 14, 31, 38, 40, 43, 44, 65, 71, 74, 80, 82, 94, 97, 105, 109, 118, 120, 125, 132, 140,
        143, 145,
    ];
    let set = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/prompts/chat-prompts.txt"
    ))
    .unwrap();
    let lines: Vec<&str> = set.lines().collect();
    assert!(lines.len() >= 200, "the prompt set has {} prompts", lines.len());
    let (template, stops, _) = template_for(&file).unwrap();
    let build = |p: Option<Precision>| {
        let mut o = bushu::model::ModelOptions::default();
        if let Some(p) = p {
            o.precision = p;
        }
        o.background_packing = false;
        o.build(&file).unwrap()
    };
    let (default, exact, fast) = (build(None), build(Some(Precision::Exact)), build(Some(Precision::Fast)));
    assert_ne!(default.precision, Precision::Fast, "the default is not the 8-bit path");
    let (mut same, mut fast_differs) = (0, 0);
    for &i in &picked {
        let msgs = [Message::new("user", lines[i])];
        let ids = file
            .tokenizer
            .encode_with(&template.render(&msgs, true).unwrap(), false, true)
            .unwrap();
        let want = answer(&exact, &ids, 8, &stops);
        let got = answer(&default, &ids, 8, &stops);
        assert_eq!(
            got,
            want,
            "prompt {i} {:?}: default {:?}, exact {:?}",
            lines[i],
            file.tokenizer.decode(&got),
            file.tokenizer.decode(&want)
        );
        same += 1;
        fast_differs += usize::from(answer(&fast, &ids, 8, &stops) != want);
    }
    eprintln!(
        "default = exact on {same}/{} prompts; the 8-bit path differs on {fast_differs}",
        picked.len()
    );
    assert!(
        fast_differs * 2 >= picked.len(),
        "the 8-bit path differs on only {fast_differs} of these prompts"
    );
}
