//! Several tokens per step (issue 17's foundation for speculative decoding): KV rewind, logits of
//! chosen rows and token trees — each bit for bit against running the same tokens the plain way, with
//! the f32 and the int8 KV cache, on the single-sequence forward pass and on the paged cache — and
//! drafts verified in the serving engine's step loop.

mod common;
use bushu::engine::model_runner::{ModelRunner, SeqInput};
use bushu::engine::{Engine, EngineConfig, Request};
use bushu::model::llama::State;
use bushu::model::{load, KvType, Logits, Model, ModelFile, Pass};
use bushu::sampling::SamplingParams;
use common::shared;

const MODELS: [&str; 2] = [
    "models/tiny-llama-f16.gguf",
    "models/shakespeare/shakespeare-expert-f16.gguf",
];

fn models() -> Vec<(String, Model)> {
    let mut out = Vec::new();
    for path in MODELS {
        let file = load(&shared(path)).unwrap();
        for kv in [KvType::F32, KvType::Int8] {
            let mut m = Model::new(&file).unwrap();
            m.kv_type = kv;
            out.push((format!("{path} ({})", kv.name()), m));
        }
    }
    out
}

fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            3 + ((s >> 33) as usize % (vocab - 3)) as u32
        })
        .collect()
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The logits of `n` greedy decode steps from `state`, starting with token `t`.
fn decode(model: &Model, state: &mut State, mut t: u32, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let l = model.forward(state, &[t], Logits::Last).unwrap().to_vec();
            t = kernels::ops::argmax(&l) as u32;
            l
        })
        .collect()
}

/// Rejected drafts, rewound and overwritten, leave no trace: the logits then equal those of a cache
/// that never saw them.
#[test]
fn rewound_and_refed_equals_never_rewound() {
    for (name, model) in models() {
        let vocab = model.config.vocab_size;
        let prompt = tokens(1, 21, vocab);
        let next = tokens(2, 3, vocab);
        let mut plain = model.new_state(64);
        model.forward(&mut plain, &prompt, Logits::None).unwrap();
        let want = model.forward(&mut plain, &next, Logits::All).unwrap().to_vec();
        let want_more = decode(&model, &mut plain, 5, 4);

        let mut rewound = model.new_state(64);
        model.forward(&mut rewound, &prompt, Logits::Last).unwrap();
        // Five rejected drafts, then three more, each batch rewound.
        for (seed, n) in [(3, 5), (4, 3)] {
            model
                .forward(&mut rewound, &tokens(seed, n, vocab), Logits::All)
                .unwrap();
            assert_eq!(rewound.pos(), prompt.len() + n);
            rewound.rewind(prompt.len());
            assert_eq!(rewound.pos(), prompt.len());
        }
        let got = model.forward(&mut rewound, &next, Logits::All).unwrap().to_vec();
        assert!(same(&got, &want), "{name}: after rewind");
        assert!(
            decode(&model, &mut rewound, 5, 4) == want_more,
            "{name}: decoding after rewind"
        );
        // Rewinding past the end changes nothing.
        rewound.rewind(1000);
        assert_eq!(rewound.pos(), prompt.len() + 3 + 4);
    }
}

/// Logits of chosen rows of one pass, several per sequence, equal those of feeding the tokens one at a
/// time; no logits at all is allowed, rows outside the pass are an error.
#[test]
fn chosen_rows_equal_one_at_a_time() {
    for (name, model) in models() {
        let vocab = model.config.vocab_size;
        let prompt = tokens(5, 17, vocab);
        let run = tokens(6, 6, vocab);
        let mut one = model.new_state(64);
        model.forward(&mut one, &prompt, Logits::None).unwrap();
        let singles: Vec<Vec<f32>> = run
            .iter()
            .map(|&t| model.forward(&mut one, &[t], Logits::Last).unwrap().to_vec())
            .collect();

        let mut many = model.new_state(64);
        assert!(model.forward(&mut many, &prompt, Logits::None).unwrap().is_empty());
        let rows = [5, 0, 3, 4];
        let got = model.forward(&mut many, &run, Logits::Rows(&rows)).unwrap().to_vec();
        for (i, &r) in rows.iter().enumerate() {
            assert!(same(&got[i * vocab..(i + 1) * vocab], &singles[r]), "{name}: row {r}");
        }
        assert_eq!(many.hidden().len(), rows.len() * model.config.dim);
        let e = model.forward(&mut many, &run[..2], Logits::Rows(&[2])).unwrap_err();
        assert!(e.to_string().contains("row 2 of a pass of 2"), "{e}");
    }
}

/// Three draft branches under one root token, verified in one tree pass: every token gets the logits
/// of its branch run alone. Keeping the accepted branch leaves the cache as that branch alone would.
#[test]
fn tree_equals_each_branch_alone() {
    for (name, model) in models() {
        let vocab = model.config.vocab_size;
        let prompt = tokens(7, 19, vocab);
        let d = tokens(8, 8, vocab);
        // Root r; branches r-a0-a1-a2, r-b0-b1-b2, r-c0 (a sibling of a0 and b0).
        let tree = [d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]];
        let parent = [None, Some(0), Some(1), Some(2), Some(0), Some(4), Some(5), Some(0)];
        let branches: [&[usize]; 3] = [&[0, 1, 2, 3], &[0, 4, 5, 6], &[0, 7]];

        let mut state = model.new_state(64);
        model.forward(&mut state, &prompt, Logits::None).unwrap();
        let pos0 = state.pos();
        let all = model
            .forward_pass(&mut state, Pass::tree(&tree, &parent, Logits::All))
            .unwrap()
            .to_vec();
        assert_eq!(state.pos(), pos0 + tree.len());
        assert_eq!(state.tree().path(6), [0, 4, 5, 6]);

        let mut alone_states = Vec::new();
        for rows in branches {
            let mut alone = model.new_state(64);
            model.forward(&mut alone, &prompt, Logits::None).unwrap();
            let toks: Vec<u32> = rows.iter().map(|&i| tree[i]).collect();
            let want = model.forward(&mut alone, &toks, Logits::All).unwrap().to_vec();
            for (j, &i) in rows.iter().enumerate() {
                let got = &all[i * vocab..(i + 1) * vocab];
                assert!(same(got, &want[j * vocab..(j + 1) * vocab]), "{name}: tree token {i}");
            }
            alone_states.push(alone);
        }

        // The mask matters: run causally, the same tokens give other logits from the first token
        // whose view differs (b0 sees a0..a2 before it).
        let mut causal = model.new_state(64);
        model.forward(&mut causal, &prompt, Logits::None).unwrap();
        let c = model.forward(&mut causal, &tree, Logits::All).unwrap();
        assert!(same(&c[..2 * vocab], &all[..2 * vocab]), "{name}: r, a0 see the same");
        assert!(
            !same(&c[4 * vocab..5 * vocab], &all[4 * vocab..5 * vocab]),
            "{name}: mask ignored"
        );

        // Accept branch b (the drafts r, b0, b1), keep its rows, decode on: as the branch alone.
        let path = state.tree().path(5).to_vec();
        state.cache.keep_rows(pos0, &path).unwrap();
        assert_eq!(state.pos(), pos0 + 3);
        let mut alone = model.new_state(64);
        model.forward(&mut alone, &prompt, Logits::None).unwrap();
        model
            .forward(&mut alone, &[tree[0], tree[4], tree[5]], Logits::None)
            .unwrap();
        assert!(
            decode(&model, &mut state, 9, 5) == decode(&model, &mut alone, 9, 5),
            "{name}: decoding after keeping branch b"
        );
    }
}

/// Malformed trees and row lists are errors, not panics.
#[test]
fn bad_passes_are_errors() {
    let (_, model) = models().remove(0);
    let mut state = model.new_state(16);
    let bad_parent = model.forward_pass(&mut state, Pass::tree(&[5, 6], &[None, Some(1)], Logits::All));
    assert!(bad_parent.unwrap_err().to_string().contains("not an earlier one"));
    let short = model.forward_pass(&mut state, Pass::tree(&[5, 6], &[None], Logits::All));
    assert!(short.unwrap_err().to_string().contains("1 parents over 2 tokens"));
    assert_eq!(state.pos(), 0);
    model.forward(&mut state, &[5, 6, 7], Logits::None).unwrap();
    assert!(state.cache.keep_rows(1, &[1, 0]).is_err());
    assert!(state.cache.keep_rows(1, &[0, 2]).is_err());
    state.cache.keep_rows(0, &[0, 2]).unwrap();
    assert_eq!(state.pos(), 2);
}

// The serving engine: paged cache, drafts verified in the step loop.

/// Early exit: a pass through the first `k` layers gives the logits of the model cut to `k` layers, bit
/// for bit; the residual stream kept after the last layer, RMS-normalized, is the classifier's input;
/// and a full pass over the same positions after a rewind leaves no trace of the exit pass.
#[test]
fn exit_and_hidden_states() {
    let file = load(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
    let full = Model::new(&file).unwrap();
    let n_layers = full.config.n_layers;
    assert!(n_layers >= 2);
    let toks = tokens(11, 12, full.config.vocab_size);
    for k in 1..=n_layers {
        let mut cut_file = load(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
        cut_file.config.n_layers = k;
        let cut = Model::new(&cut_file).unwrap();
        let mut a = full.new_state(32);
        let mut b = cut.new_state(32);
        let ea = full
            .forward_pass(&mut a, Pass::causal(&toks, Logits::All).exit_after(k))
            .unwrap()
            .to_vec();
        let eb = cut.forward(&mut b, &toks, Logits::All).unwrap().to_vec();
        assert!(same(&ea, &eb), "exit after {k} layers differs from the {k}-layer model");
    }
    // Hidden states: after the last layer, normed, they are the classifier's input.
    let last = n_layers - 1;
    let layers = [0, last];
    let mut st = full.new_state(32);
    let rows = [3, 7, 11];
    full.forward_pass(&mut st, Pass::causal(&toks, Logits::Rows(&rows)).keep_hidden(&layers))
        .unwrap();
    let dim = full.config.dim;
    let h = st.hidden_at(last).unwrap().to_vec();
    assert_eq!(h.len(), rows.len() * dim);
    assert_eq!(st.hidden_at(0).unwrap().len(), rows.len() * dim);
    if last != 1 {
        assert!(st.hidden_at(1).is_none(), "a layer not asked for");
    }
    let mut normed = vec![0.0; h.len()];
    for (o, x) in normed.chunks_exact_mut(dim).zip(h.chunks_exact(dim)) {
        kernels::ops::rmsnorm(o, x, &full.weights.output_norm, full.config.rms_eps);
    }
    assert!(
        same(&normed, st.hidden()),
        "kept residual, normed, is not the classifier's input"
    );
    // Layer 0's rows differ from the last layer's (the test would not see a wrong layer otherwise).
    assert!(!same(st.hidden_at(0).unwrap(), &h));

    // An exit pass, rewound, then the full pass: as if the exit pass never ran.
    let mut plain = full.new_state(32);
    let want = full.forward(&mut plain, &toks, Logits::All).unwrap().to_vec();
    let mut st = full.new_state(32);
    full.forward(&mut st, &toks[..4], Logits::None).unwrap();
    full.forward_pass(&mut st, Pass::causal(&toks[4..], Logits::Last).exit_after(1))
        .unwrap();
    st.rewind(4);
    let got = full.forward(&mut st, &toks[4..], Logits::All).unwrap().to_vec();
    assert!(same(&got, &want[4 * full.config.vocab_size..]));

    // Bad requests are errors.
    let mut st = full.new_state(32);
    for bad in [
        Pass::causal(&toks, Logits::Last).exit_after(0),
        Pass::causal(&toks, Logits::Last).exit_after(n_layers + 1),
        Pass::causal(&toks, Logits::Last).exit_after(1).keep_hidden(&[1]),
    ] {
        assert!(full.forward_pass(&mut st, bad).is_err());
    }
}

fn engine_models() -> Vec<(String, ModelFile)> {
    [
        "models/tiny-llama-q8_0.gguf",
        "models/shakespeare/shakespeare-expert-f16.gguf",
    ]
    .iter()
    .map(|p| (p.to_string(), load(&shared(p)).unwrap()))
    .collect()
}

fn with_kv(file: &ModelFile, kv: KvType) -> Model {
    let mut m = Model::new(file).unwrap();
    m.kv_type = kv;
    m
}

/// On the paged cache through block tables, batched with another sequence: rows overwritten after a
/// rewind, chosen rows, a token tree and its kept branch all give the contiguous cache's logits.
#[test]
fn paged_runner_matches_contiguous() {
    for (name, file) in engine_models() {
        for kv in [KvType::F32, KvType::Int8] {
            let model = with_kv(&file, kv);
            let vocab = model.config.vocab_size;
            let mut runner = ModelRunner::new(with_kv(&file, kv), 4, 32);
            let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..12).rev().collect(), (12..24).collect());
            let (prompt, other) = (tokens(11, 19, vocab), tokens(12, 40, vocab));
            let step = |runner: &mut ModelRunner, mine: SeqInput, at: usize| -> Vec<f32> {
                let o = SeqInput::causal(&other[at..at + 1], at, &tb, Logits::Last);
                let n_other = vocab;
                let out = runner.forward(&[o, mine]).unwrap();
                out[n_other..].to_vec()
            };
            let mut state = model.new_state(64);
            model.forward(&mut state, &prompt, Logits::None).unwrap();
            runner
                .forward(&[
                    SeqInput::causal(&other[..19], 0, &tb, Logits::None),
                    SeqInput::causal(&prompt, 0, &ta, Logits::None),
                ])
                .unwrap();
            // Rejected drafts at 19..24 (crossing a block), then the real tokens over them.
            step(
                &mut runner,
                SeqInput::causal(&tokens(13, 5, vocab), 19, &ta, Logits::All),
                19,
            );
            let real = tokens(14, 3, vocab);
            let got = step(&mut runner, SeqInput::causal(&real, 19, &ta, Logits::Rows(&[2, 0])), 20);
            let want = model.forward(&mut state, &real, Logits::All).unwrap().to_vec();
            assert!(
                same(&got[..vocab], &want[2 * vocab..]),
                "{name} {kv:?}: row 2 after rewind"
            );
            assert!(same(&got[vocab..], &want[..vocab]), "{name} {kv:?}: row 0 after rewind");

            // A tree from 22: two branches under a root.
            let tree = tokens(15, 6, vocab);
            let parent = [None, Some(0), Some(1), Some(0), Some(3), Some(4)];
            let pos0 = state.pos();
            let want = model
                .forward_pass(&mut state, Pass::tree(&tree, &parent, Logits::All))
                .unwrap()
                .to_vec();
            let mine = SeqInput {
                tree: Some(&parent),
                ..SeqInput::causal(&tree, pos0, &ta, Logits::All)
            };
            let got = step(&mut runner, mine, 21);
            assert!(same(&got, &want), "{name} {kv:?}: tree");
            // Keep the second branch's first two drafts (rows 0, 3, 4), then decode on.
            let path = state.tree().path(4).to_vec();
            state.cache.keep_rows(pos0, &path).unwrap();
            runner.cache.keep_rows(&ta, pos0, &path).unwrap();
            let want = model.forward(&mut state, &[7], Logits::Last).unwrap().to_vec();
            let got = step(&mut runner, SeqInput::causal(&[7], pos0 + 3, &ta, Logits::Last), 22);
            assert!(same(&got, &want), "{name} {kv:?}: decode after keeping a branch");
        }
    }
}

fn engine(file: &ModelFile, kv: KvType, prefix: bool) -> Engine {
    let model = with_kv(file, kv);
    let mut cfg = EngineConfig::for_model(&model, 8, Some(256), None);
    // Small blocks: drafts and their rewinds cross block boundaries.
    cfg.block_size = 4;
    cfg.num_blocks = 160;
    cfg.max_batched_tokens = 256;
    cfg.max_model_len = 256;
    cfg.prefix_caching = prefix;
    Engine::new(model, file.eos_ids.clone(), cfg)
}

/// Drafts guessed from `want` (the output without drafts) after `g` generated tokens, by sequence:
/// a chain right for 4 tokens, a chain wrong from its second token, a chain wrong from its first,
/// and a tree whose right branch of 3 is the second of its roots, among wrong siblings (so keeping it
/// moves rows).
fn draft(want: &[u32], g: usize, i: usize) -> (Vec<u32>, Vec<Option<usize>>) {
    let mut d = want[g.min(want.len())..(g + 4).min(want.len())].to_vec();
    let wrong = |t: u32| if t > 3 { t - 1 } else { t + 1 };
    match i % 4 {
        1 if d.len() > 1 => d[1] = wrong(d[1]),
        2 if !d.is_empty() => d[0] = wrong(d[0]),
        3 if d.len() >= 3 => {
            let tokens = vec![wrong(d[0]), d[0], wrong(d[1]), 5, d[1], d[2]];
            return (tokens, vec![None, None, Some(1), Some(0), Some(1), Some(4)]);
        }
        _ => {}
    }
    (d, Vec::new())
}

/// Runs `reqs` proposing drafts before every step: the tokens of each and the steps that gave it some.
fn run_drafted(e: &mut Engine, reqs: &[Request], want: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let ids: Vec<_> = reqs.iter().map(|r| e.add(r.clone()).unwrap()).collect();
    let mut out = vec![Vec::new(); ids.len()];
    let mut done = vec![false; ids.len()];
    let mut steps = vec![0; ids.len()];
    while e.has_work() {
        for (i, &id) in ids.iter().enumerate() {
            if !done[i] {
                let (d, parent) = draft(&want[i], out[i].len(), i);
                e.propose_tree(id, &d, &parent).unwrap();
            }
        }
        for o in e.step().unwrap() {
            let i = ids.iter().position(|&id| id == o.seq).unwrap();
            if let Some(k) = reqs[i].logprobs {
                assert_eq!(o.logprobs.len(), o.tokens.len());
                assert!(o.logprobs.iter().all(|l| l.top.len() == k));
            }
            out[i].extend_from_slice(&o.tokens);
            steps[i] += usize::from(!o.tokens.is_empty());
            done[i] |= o.finish.is_some();
        }
    }
    (out, steps)
}

/// Drafts, right or wrong, in chains or trees, never change what the engine generates — greedy or
/// sampled, f32 or int8 KV — and right ones save steps. Rejected drafts never reach the prefix cache: prompts that continue
/// the finished sequences then give the outputs of an engine without prefix caching.
#[test]
fn drafts_do_not_change_outputs() {
    for (name, file) in engine_models() {
        let vocab = file.config.vocab_size;
        let mut reqs: Vec<Request> = (0..8)
            .map(|i| Request {
                ignore_eos: true,
                ..Request::greedy(tokens(20 + i, 9 + 5 * i as usize, vocab), 13 + i as usize)
            })
            .collect();
        reqs[4].sampling = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed: 5,
            ..Default::default()
        };
        reqs[5].logprobs = Some(2);
        reqs[5].ignore_eos = false;
        for kv in [KvType::F32, KvType::Int8] {
            let want = engine(&file, kv, true).generate(reqs.clone()).unwrap();
            let mut drafted = engine(&file, kv, true);
            let (got, steps) = run_drafted(&mut drafted, &reqs, &want);
            assert_eq!(got, want, "{name} {kv:?}");
            // After the prefill's token, right drafts give 5 tokens a step; right for one token, 2;
            // wrong, 1 as without drafts; the tree 4 (but fewer near the end, where it is a chain).
            for (i, (&s, w)) in steps.iter().zip(&want).enumerate() {
                let rest = w.len() - 1;
                let most = 1 + [rest.div_ceil(5), rest.div_ceil(2), rest, rest.div_ceil(4) + 1][i % 4];
                assert!(
                    s <= most,
                    "{name} {kv:?}: sequence {i}: {s} steps for {} tokens",
                    w.len()
                );
            }
            assert_eq!(drafted.gauges().kv_blocks_free, 160, "{name} {kv:?}: blocks leaked");

            // Prompts continuing the drafted sequences (through positions that held rejected drafts).
            let next: Vec<Request> = reqs
                .iter()
                .zip(&got)
                .enumerate()
                .map(|(i, (r, g))| {
                    let mut p = r.prompt.clone();
                    p.extend_from_slice(&g[..g.len() - 1]);
                    p.extend(tokens(40 + i as u64, 2, vocab));
                    Request::greedy(p, 6)
                })
                .collect();
            let hits0 = drafted.gauges().prefix_hit_tokens;
            let cached = drafted.generate(next.clone()).unwrap();
            assert!(
                drafted.gauges().prefix_hit_tokens > hits0 + 60,
                "{name}: prefix cache unused"
            );
            assert_eq!(
                cached,
                engine(&file, kv, false).generate(next).unwrap(),
                "{name} {kv:?}: prefix cache"
            );
        }
    }
}

/// Bad proposals are errors: malformed trees, tokens outside the vocabulary, finished sequences.
#[test]
fn bad_proposals_are_errors() {
    let (_, file) = engine_models().remove(0);
    let mut e = engine(&file, KvType::F32, true);
    let id = e.add(Request::greedy(tokens(1, 5, 1000), 2)).unwrap();
    assert!(e.propose_tree(id, &[4, 5], &[None, Some(1)]).is_err());
    assert!(e.propose_tree(id, &[4, 5], &[None]).is_err());
    assert!(e.propose(id, &[1 << 30]).is_err());
    assert!(e.propose(id + 1, &[4]).is_err());
    e.propose_tree(id, &[4, 5], &[None, None]).unwrap();
    while e.has_work() {
        e.step().unwrap();
    }
    assert!(e.propose(id, &[4]).is_err());
}

/// Big models pack their matrices on a background thread (`Weights::prepare_packing`): a first pass
/// of at most `ROW_MAJOR_FIRST_PASS` tokens runs on the row-major kernels beside the packer, a longer
/// one packs first (the row-major prefill kernels are several times slower) and runs on the packed
/// ones, as does every pass after the first. Forced on a small int8-activation model: a long first
/// pass and the decode steps after it give the bits of a model that packed every matrix on its first
/// product.
#[test]
fn background_packing_schedule_gives_the_packed_bits() {
    use bushu::model::weights::ROW_MAJOR_FIRST_PASS;
    use bushu::model::ModelOptions;
    use kernels::Precision;
    let file = load(&shared("models/tiny-llama-q4_0.gguf")).unwrap();
    let build = |background: bool| {
        let o = ModelOptions {
            precision: Precision::Fast,
            background_packing: false,
            ..ModelOptions::default()
        };
        let m = o.build(&file).unwrap();
        if background {
            m.weights.pack_in_background(0, m.precision);
        }
        m
    };
    let vocab = file.config.vocab_size;
    for n in [ROW_MAJOR_FIRST_PASS + 1, 40] {
        let prompt = tokens(n as u64, n, vocab);
        let run = |m: &Model| {
            let mut st = m.new_state(n + 8);
            let first = m.forward(&mut st, &prompt, Logits::All).unwrap().to_vec();
            let t = kernels::ops::argmax(&first[(n - 1) * vocab..]) as u32;
            (first, decode(m, &mut st, t, 4))
        };
        let (want_first, want_decode) = run(&build(false));
        let (first, decoded) = run(&build(true));
        assert!(same(&first, &want_first), "first pass of {n} tokens");
        for (i, (a, b)) in decoded.iter().zip(&want_decode).enumerate() {
            assert!(same(a, b), "decode step {i} after {n} tokens");
        }
    }
}
