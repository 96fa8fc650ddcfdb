//! Decoding with real models: contrastive decoding on the trained Shakespeare expert/amateur against a
//! reference computed by transformers from both models' full next-token distributions
//! (tests/fixtures/decoding/contrastive_decoding.json, scripts/refs/make_decoding_refs.py); refusal of
//! mismatched tokenizers; beam search memory on a 1k-token prompt; stop strings and finish reasons.

mod common;

use bushu::generate::beam::generate_beam_measured;
use bushu::generate::contrastive::{check_same_tokenizer, generate_contrastive, CdParams};
use bushu::generate::{generate, FinishReason, GenerateOptions, Strategy};
use bushu::model::{load, Model};
use bushu::sampling::beam::BeamParams;
use bushu::sampling::SamplingParams;
use common::{fixture, read_json, shared, u32s};

#[test]
fn contrastive_decoding_matches_reference_on_shakespeare() {
    let r = read_json(&fixture("decoding/contrastive_decoding.json"));
    let fe = load(&shared("models/shakespeare/shakespeare-expert-hf")).unwrap();
    let fa = load(&shared("models/shakespeare/shakespeare-amateur-hf")).unwrap();
    let (me, ma) = (Model::new(&fe).unwrap(), Model::new(&fa).unwrap());
    let mut checked = 0;
    for run in r["runs"].as_array().unwrap() {
        let prompt = u32s(&run["prompt_ids"]);
        // Our tokenizer agrees with the reference's.
        assert_eq!(
            fe.tokenizer.encode(run["prompt"].as_str().unwrap(), true).unwrap(),
            prompt
        );
        let greedy = u32s(&run["greedy"]);
        let opts = GenerateOptions::new(greedy.len(), SamplingParams::greedy(), Vec::new());
        let g = generate(&me, &fe.tokenizer, &mut me.new_state(128), &prompt, &opts, &mut |_| {}).unwrap();
        assert_eq!(g.tokens, greedy, "greedy after {:?}", run["prompt"]);
        for cd in run["cd"].as_array().unwrap() {
            let want = u32s(&cd["tokens"]);
            let params = CdParams {
                alpha: cd["alpha"].as_f64().unwrap() as f32,
                amateur_temperature: cd["amateur_temperature"].as_f64().unwrap() as f32,
            };
            let opts = GenerateOptions::new(want.len(), SamplingParams::greedy(), Vec::new());
            let (mut se, mut sa) = (me.new_state(128), ma.new_state(128));
            let g = generate_contrastive(
                (&me, &fe.tokenizer, &mut se),
                (&ma, &fa.tokenizer, &mut sa),
                &prompt,
                &opts,
                params,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(g.tokens, want, "{:?} {params:?}", run["prompt"]);
            // HF's decode drops the leading space SentencePiece puts on a first token; ours continues
            // the prompt, so keeps it.
            assert_eq!(g.text.trim_start(), cd["text"].as_str().unwrap().trim_start());
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn contrastive_decoding_refuses_different_tokenizers() {
    let fe = load(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
    let fa = load(&shared("models/shakespeare/shakespeare-amateur-q8_0.gguf")).unwrap();
    check_same_tokenizer(&fe.tokenizer, &fa.tokenizer).unwrap();
    let other = load(&shared("models/tiny-llama-q8_0.gguf")).unwrap();
    let e = check_same_tokenizer(&fe.tokenizer, &other.tokenizer)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer differs"), "{e}");
    let (me, mo) = (Model::new(&fe).unwrap(), Model::new(&other).unwrap());
    let opts = GenerateOptions::new(4, SamplingParams::greedy(), Vec::new());
    let e = generate_contrastive(
        (&me, &fe.tokenizer, &mut me.new_state(32)),
        (&mo, &other.tokenizer, &mut mo.new_state(32)),
        &[1, 50, 60],
        &opts,
        CdParams::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("tokenizer differs"));
}

#[test]
fn beams_share_the_prompt_kv() {
    // 4 beams after a 1,024-token prompt: the per-beam KV rows are a small fraction of one prompt's KV.
    let f = load(&shared("models/tiny-llama-q8_0.gguf")).unwrap();
    let m = Model::new(&f).unwrap();
    let prompt: Vec<u32> = (0..1024u32).map(|i| 1 + (i * 7919) % 31999).collect();
    let mut state = m.new_state(1100);
    let (n_beams, n_new) = (4, 8);
    let mut opts = GenerateOptions::new(n_new, SamplingParams::greedy(), Vec::new());
    let beam = BeamParams {
        num_beams: n_beams,
        num_return: n_beams,
        ..Default::default()
    };
    opts.strategy = Strategy::Beam(beam.clone());
    let (g, peak) = generate_beam_measured(&m, None, &f.tokenizer, &mut state, &prompt, &opts, &beam).unwrap();
    assert_eq!(g.sequences.len(), n_beams);
    let c = &m.config;
    let row = 2 * c.n_layers * c.kv_dim() * 4; // bytes of K and V of one position, all layers
    let prompt_kv = prompt.len() * row;
    // At most the running beams and their children: 2N beams × n_new rows each.
    assert!(
        peak <= 2 * n_beams * n_new * row,
        "peak {peak} > {}",
        2 * n_beams * n_new * row
    );
    assert!(
        peak * 10 < prompt_kv,
        "beams hold {peak} bytes of KV, the prompt's is {prompt_kv}"
    );
    // The one state was left holding the prompt only.
    assert_eq!(state.pos(), prompt.len());
    eprintln!("beam KV: {peak} bytes peak for {n_beams} beams vs {prompt_kv} bytes of prompt KV (held once)");
}

#[test]
fn stop_strings_and_finish_reasons() {
    let f = load(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
    let m = Model::new(&f).unwrap();
    let prompt = f.tokenizer.encode("ROMEO: What light through yonder", true).unwrap();
    let opts = GenerateOptions::new(30, SamplingParams::greedy(), f.eos_ids.clone());
    let full = generate(&m, &f.tokenizer, &mut m.new_state(256), &prompt, &opts, &mut |_| {}).unwrap();
    assert_eq!(full.finish_reason, FinishReason::Length);
    // A stop string spanning tokens: cut before it, whatever the token boundaries.
    let text = &full.text;
    let at = text.len() / 2;
    let at = (at..text.len())
        .find(|&i| text.is_char_boundary(i) && text.is_char_boundary(i + 3))
        .unwrap();
    let stop = text[at..at + 3].to_string();
    let mut o = opts.clone();
    o.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let g = generate(&m, &f.tokenizer, &mut m.new_state(256), &prompt, &o, &mut |s| {
        streamed.push_str(s)
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::StopString);
    assert_eq!(g.text, text[..text.find(&stop).unwrap()]);
    assert_eq!(streamed, g.text);
    assert!(!g.text.contains(&stop));
    // The context fills up.
    let g = generate(
        &m,
        &f.tokenizer,
        &mut m.new_state(prompt.len() + 5),
        &prompt,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::ContextFull);
    assert_eq!(g.tokens.len(), 6);
    // EOS: make a greedy token the end of sequence (the first at or after index 2 not seen before).
    let t = &full.tokens;
    let i = (2..t.len()).find(|&i| !t[..i].contains(&t[i])).unwrap();
    let o = GenerateOptions::new(30, SamplingParams::greedy(), vec![t[i]]);
    let g = generate(&m, &f.tokenizer, &mut m.new_state(256), &prompt, &o, &mut |_| {}).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.tokens, t[..=i]);
}
