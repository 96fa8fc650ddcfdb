//! Mixture of depths (issue 20): capacity 1 is plain decoding, logits bit for bit; routers whose scores
//! are known by hand skip exactly the predicted layers, and a skipped layer is the same as a layer that
//! adds nothing to the residual stream (a reference model with those layers' output and down projections
//! zeroed: same logits, same keys and values); with data-dependent routers a layer leaves a token's
//! residual stream unchanged exactly when the router's score of its input is below the threshold, and a
//! pass over many tokens decides as token-by-token decoding does; the routers file names its model; the
//! tradeoff at capacity 1 measures the full model; bad flags get one clear line.

mod common;
use bushu::formats::Tensor;
use bushu::generate::{generate, GenerateOptions};
use bushu::model::mixture_of_depths::{Routers, RoutersBase, Routing, QUANTILES};
use bushu::model::{load, Logits, Model, ModelFile, Pass, Probe};
use bushu::sampling::SamplingParams;
use bushu::tradeoff::mixture_of_depths::ModMethod;
use bushu::tradeoff::{argmax, measure};
use common::{chat_cli as chat, shared, small_heldout};
use std::process::Command;

const EXPERT: &str = "models/shakespeare/shakespeare-expert-q8_0.gguf";
const EXPERT_F16: &str = "models/shakespeare/shakespeare-expert-f16.gguf";
const TINY: &str = "models/tiny-llama-q8_0.gguf";
const PROMPT: &str = "KING HENRY: Once more unto the breach, dear friends,";
const N: usize = 24;

fn open(rel: &str) -> (ModelFile, Model) {
    let f = load(&shared(rel)).unwrap();
    let m = Model::new(&f).unwrap();
    (f, m)
}

/// Deterministic pseudo-random values in [-0.5, 0.5).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = bushu::sampling::rng::Rng::new(seed);
    (0..n).map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5).collect()
}

/// Routers with weights `w`, biases `b` and a quantile table that ascends (unused by explicit thresholds).
fn routers(m: &Model, w: Vec<f32>, b: Vec<f32>) -> Routers {
    let layers = m.config.n_layers;
    let q: Vec<f32> = (0..layers).flat_map(|_| (0..QUANTILES).map(|i| i as f32)).collect();
    Routers::new(m.config.dim, w, b, q, 0.5).unwrap()
}

/// Routers with random weights whose quantiles are the scores' own on `tokens` in the plain model.
fn calibrated(f: &ModelFile, m: &Model, seed: u64) -> Routers {
    let (layers, dim) = (m.config.n_layers, m.config.dim);
    let w: Vec<f32> = noise(seed, layers * dim).iter().map(|v| v * 0.5).collect();
    let r = routers(m, w, vec![0.0; layers]);
    let text = std::fs::read_to_string(shared("testdata/shakespeare/train.txt")).unwrap();
    let text: String = text.chars().take(4000).collect();
    let tokens = f.tokenizer.encode(&text, true).unwrap();
    let tokens = &tokens[..tokens.len().min(200)];
    let mut st = m.new_state(tokens.len());
    let all: Vec<usize> = (0..layers).collect();
    m.forward_pass(&mut st, Pass::causal(tokens, Logits::All).keep_hidden(&all))
        .unwrap();
    let mut q = Vec::new();
    for l in 0..layers {
        let rows: Vec<f32> = match l {
            0 => embeddings(m, tokens),
            _ => st.hidden_at(l - 1).unwrap().to_vec(),
        };
        let mut s: Vec<f32> = rows
            .chunks_exact(dim)
            .map(|x| r.score(l, x, m.config.rms_eps))
            .collect();
        s.sort_by(|a, b| a.total_cmp(b));
        q.extend((0..QUANTILES).map(|i| s[i * (s.len() - 1) / (QUANTILES - 1)]));
    }
    Routers::new(dim, r.w, r.b, q, 0.5).unwrap()
}

fn embeddings(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let dim = m.config.dim;
    let mut out = vec![0.0; tokens.len() * dim];
    let e = m.weights.token_embd.matrix();
    for (row, &t) in out.chunks_exact_mut(dim).zip(tokens) {
        e.dequantize_row(t as usize, row);
    }
    out
}

/// `f`'s model with layers `silent` adding nothing to the residual stream (output and down projections
/// zero): what skipping them for every token computes.
fn silenced(f: &ModelFile, silent: &[usize]) -> Model {
    let mut m = Model::new(f).unwrap();
    for &l in silent {
        let lw = &mut m.weights.layers[l];
        for t in [&mut lw.wo, &mut lw.w_down] {
            *t = Tensor::from_f32(&t.name.clone(), t.shape.clone(), &vec![0.0; t.numel()]);
        }
    }
    m
}

fn greedy() -> GenerateOptions {
    GenerateOptions::new(N, SamplingParams::greedy(), Vec::new())
}

/// Greedy decoding step by step: every step's logits.
fn decode_logits(m: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut st = m.new_state(prompt.len() + N);
    let mut l = m.forward(&mut st, prompt, Logits::Last).unwrap().to_vec();
    let mut out = vec![l.clone()];
    for _ in 1..N {
        let t = argmax(&l) as u32;
        l = m.forward(&mut st, &[t], Logits::Last).unwrap().to_vec();
        out.push(l.clone());
    }
    out
}

#[test]
fn capacity_one_is_plain_decoding_bit_for_bit() {
    for rel in [EXPERT, TINY] {
        let (f, plain) = open(rel);
        let mut routed = Model::new(&f).unwrap();
        let r = calibrated(&f, &routed, 3);
        routed.routing = Some(Routing::new(r, 1.0, &routed.config).unwrap());
        let prompt = f.tokenizer.encode(PROMPT, true).unwrap();
        assert_eq!(decode_logits(&routed, &prompt), decode_logits(&plain, &prompt), "{rel}");
        let (mut a, mut b) = (plain.new_state(256), routed.new_state(256));
        let ga = generate(&plain, &f.tokenizer, &mut a, &prompt, &greedy(), &mut |_| {}).unwrap();
        let gb = generate(&routed, &f.tokenizer, &mut b, &prompt, &greedy(), &mut |_| {}).unwrap();
        assert_eq!(ga.tokens, gb.tokens, "{rel}");
        let (run, slots) = b.layer_pairs();
        assert_eq!(run, slots);
        assert_eq!(slots, b.pos() * routed.config.n_layers);
    }
}

/// Routers with zero weights score every token by their bias: with biases +1, -1, +1, ... and thresholds
/// 0, every token skips exactly the odd layers, and the routed model computes what the model with those
/// layers silenced computes — logits and every layer's keys and values, bit for bit.
#[test]
fn bias_routers_skip_exactly_the_predicted_layers() {
    for rel in [EXPERT, TINY] {
        let (f, mut m) = open(rel);
        let (layers, dim) = (m.config.n_layers, m.config.dim);
        let b: Vec<f32> = (0..layers).map(|l| if l % 2 == 1 { -1.0 } else { 1.0 }).collect();
        let r = routers(&m, vec![0.0; layers * dim], b);
        m.routing = Some(Routing::with_thresholds(r, vec![0.0; layers], &m.config).unwrap());
        let odd: Vec<usize> = (1..layers).step_by(2).collect();
        let reference = silenced(&f, &odd);
        let prompt = f.tokenizer.encode(PROMPT, true).unwrap();
        assert_eq!(decode_logits(&m, &prompt), decode_logits(&reference, &prompt), "{rel}");
        // The caches, layer by layer, after the same decoding.
        let (mut a, mut c) = (m.new_state(64), reference.new_state(64));
        m.forward(&mut a, &prompt, Logits::Last).unwrap();
        reference.forward(&mut c, &prompt, Logits::Last).unwrap();
        m.forward(&mut a, &[7], Logits::Last).unwrap();
        reference.forward(&mut c, &[7], Logits::Last).unwrap();
        for l in 0..layers {
            let len = a.pos() * m.config.kv_dim();
            let (mut ka, mut va, mut kc, mut vc) = (vec![0.0; len], vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            a.cache.layers[l].read(0, &mut ka, &mut va);
            c.cache.layers[l].read(0, &mut kc, &mut vc);
            assert!(ka == kc && va == vc, "{rel}: layer {l}'s keys and values differ");
        }
        let n = a.pos();
        assert_eq!(a.layer_pairs(), (n * (layers - odd.len()), n * layers));
        let by_layer: Vec<usize> = (0..layers).map(|l| if l % 2 == 1 { 0 } else { n }).collect();
        assert_eq!(a.runs_by_layer(), by_layer.as_slice());
        // The plain model differs: the skip does something.
        let (_, plain) = open(rel);
        assert_ne!(decode_logits(&plain, &prompt), decode_logits(&m, &prompt), "{rel}");
    }
}

/// The keys and values a skipped layer stores are read: a later token that runs the layer (here the
/// plain model's next step) attends to them, so a skip that stored none — the rows left zero, as a fresh
/// cache holds them — gives other logits.
#[test]
fn missing_keys_and_values_of_skipped_layers_would_differ() {
    let (f, mut m) = open(EXPERT);
    let (_, plain) = open(EXPERT);
    let (layers, dim) = (m.config.n_layers, m.config.dim);
    let b: Vec<f32> = (0..layers).map(|l| if l % 2 == 1 { -1.0 } else { 1.0 }).collect();
    m.routing =
        Some(Routing::with_thresholds(routers(&m, vec![0.0; layers * dim], b), vec![0.0; layers], &m.config).unwrap());
    let prompt = f.tokenizer.encode(PROMPT, true).unwrap();
    let (mut a, mut z) = (m.new_state(64), m.new_state(64));
    m.forward(&mut a, &prompt, Logits::Last).unwrap();
    m.forward(&mut z, &prompt, Logits::Last).unwrap();
    let kv = m.config.kv_dim();
    for l in (1..layers).step_by(2) {
        for p in 0..z.pos() {
            z.cache.store(l, p, &vec![0.0; kv], &vec![0.0; kv]);
        }
    }
    let la = plain.forward(&mut a, &[9], Logits::Last).unwrap().to_vec();
    let lz = plain.forward(&mut z, &[9], Logits::Last).unwrap().to_vec();
    assert_ne!(la, lz);
}

/// Data-dependent routers (random weights, threshold 0): observed layer by layer, a layer leaves a
/// token's residual stream unchanged exactly when the router's score of the stream entering it is below
/// 0 — for token-by-token decoding and for one pass over the whole sequence, which agree bit for bit.
#[test]
fn a_layer_is_skipped_exactly_when_its_score_is_below_the_threshold() {
    for rel in [EXPERT, TINY] {
        let (f, mut m) = open(rel);
        let (layers, dim) = (m.config.n_layers, m.config.dim);
        let r = routers(&m, noise(5, layers * dim), vec![0.0; layers]);
        m.routing = Some(Routing::with_thresholds(r.clone(), vec![0.0; layers], &m.config).unwrap());
        let eps = m.config.rms_eps;
        let tokens = f.tokenizer.encode(PROMPT, true).unwrap();
        let n = tokens.len();
        // One token at a time, watching each layer's input and output.
        let mut st = m.new_state(n);
        let (mut skipped, mut ran) = (0, 0);
        let mut one_by_one = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let mut input = embeddings(&m, &[t]);
            let mut decisions = Vec::new();
            let logits = m
                .forward_observed(&mut st, &[t], Logits::Last, &mut |p, x| {
                    if let Probe::Residual(l) = p {
                        decisions.push((r.score(l, &input, eps) < 0.0, x == input.as_slice()));
                        input = x.to_vec();
                    }
                })
                .unwrap()
                .to_vec();
            for (l, &(predicted_skip, unchanged)) in decisions.iter().enumerate() {
                assert_eq!(predicted_skip, unchanged, "{rel}: token {i} layer {l}");
                skipped += usize::from(predicted_skip);
                ran += usize::from(!predicted_skip);
            }
            one_by_one.push(logits);
        }
        assert!(skipped > 0 && ran > 0, "{rel}: {skipped} skipped, {ran} ran");
        assert_eq!(st.layer_pairs(), (ran, n * layers));
        // One pass over all the tokens: the same logits at every position, the same caches.
        let mut whole = m.new_state(n);
        let all = m.forward(&mut whole, &tokens, Logits::All).unwrap().to_vec();
        let vocab = m.config.vocab_size;
        for (i, row) in one_by_one.iter().enumerate() {
            assert_eq!(&all[i * vocab..(i + 1) * vocab], row.as_slice(), "{rel}: position {i}");
        }
        assert_eq!(whole.layer_pairs(), st.layer_pairs());
        // Some layer decided differently for different tokens within the pass (the mixed path ran).
        assert!(whole.runs_by_layer().iter().any(|&k| k > 0 && k < n), "{rel}");
        for l in 0..layers {
            let len = n * m.config.kv_dim();
            let (mut ka, mut va, mut kb, mut vb) = (vec![0.0; len], vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            st.cache.layers[l].read(0, &mut ka, &mut va);
            whole.cache.layers[l].read(0, &mut kb, &mut vb);
            assert!(ka == kb && va == vb, "{rel}: layer {l}");
        }
    }
}

#[test]
fn routers_file_names_its_model() {
    let (f, m) = open(EXPERT);
    let r = calibrated(&f, &m, 9);
    let dir = std::env::temp_dir().join(format!("bushu-mod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.gguf");
    r.to_gguf(&RoutersBase::of(&f, &m)).write(&path).unwrap();
    assert_eq!(Routers::load(&path, &f, &m).unwrap(), r);
    // The F16 file of the same model: same norms, same tokenizer: accepted.
    let (f16, m16) = open(EXPERT_F16);
    assert_eq!(Routers::load(&path, &f16, &m16).unwrap(), r);
    // Another model (same width and layers, another vocabulary), the amateur (same tokenizer).
    for other in [TINY, "models/shakespeare/shakespeare-amateur-q8_0.gguf"] {
        let (fo, mo) = open(other);
        let e = Routers::load(&path, &fo, &mo).unwrap_err().to_string();
        assert!(e.contains("trained for another model"), "{e}");
    }
    // Not a routers file: a model, a text file.
    let e = Routers::load(&shared(EXPERT), &f, &m).unwrap_err().to_string();
    assert!(e.contains("not a mixture-of-depths routers file"), "{e}");
    let txt = dir.join("x.txt");
    std::fs::write(&txt, "hello").unwrap();
    assert!(Routers::load(&txt, &f, &m)
        .unwrap_err()
        .to_string()
        .contains("not a GGUF file"));
    for bad in [0.0, -1.0, 1.5, f64::NAN] {
        assert!(Routing::new(r.clone(), bad, &m.config).is_err(), "{bad}");
    }

    // The command line: run with the file, and the bad flags, each one line and a non-zero exit.
    let bushu = env!("CARGO_BIN_EXE_bushu");
    let run = |args: &[&str]| Command::new(bushu).args(args).output().unwrap();
    let model = shared(EXPERT);
    let model = model.to_str().unwrap();
    let rp = path.to_str().unwrap();
    let base = [
        "run",
        "--model",
        model,
        "--prompt",
        PROMPT,
        "-n",
        "12",
        "--temperature",
        "0",
        "--json",
    ];
    let plain = run(&base);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let json = |o: &std::process::Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    let mut with = base.to_vec();
    with.extend(["--mod-routers", rp, "--mod-capacity", "1"]);
    let full = run(&with);
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    assert_eq!(json(&full)["tokens"], json(&plain)["tokens"]);
    let md = &json(&full)["mixture_of_depths"];
    assert_eq!(md["layer_pairs_run"], md["layer_pairs"]);
    let mut half = base.to_vec();
    half.extend(["--mod-routers", rp, "--mod-capacity", "0.5"]);
    let h = run(&half);
    assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    let md = &json(&h)["mixture_of_depths"];
    assert!(md["layer_pairs_run"].as_u64().unwrap() < md["layer_pairs"].as_u64().unwrap());
    let tiny = shared(TINY);
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--mod-capacity", "0.5"], "give --mod-routers"),
        (vec!["--mod-routers", rp, "--mod-capacity", "0"], "(0, 1]"),
        (vec!["--mod-routers", rp, "--mod-capacity", "1.5"], "(0, 1]"),
        (
            vec!["--mod-routers", rp, "--early-exit-entropy", "1"],
            "cannot be combined",
        ),
        (vec!["--mod-routers", rp, "--beams", "2"], "cannot be combined"),
        (vec!["--mod-routers", model], "not a mixture-of-depths routers file"),
    ];
    for (extra, want) in bad {
        let mut args = base.to_vec();
        args.extend(extra.iter());
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    }
    let o = run(&[
        "run",
        "--model",
        tiny.to_str().unwrap(),
        "--prompt",
        "x",
        "--mod-routers",
        rp,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("trained for another model"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tradeoff_at_capacity_one_is_the_full_model() {
    let (f, m) = open(EXPERT);
    let held = small_heldout(&f, &m);
    let routed = Model::new(&f).unwrap();
    let r = calibrated(&f, &routed, 4);
    let mut method = ModMethod::new(routed, r).unwrap();
    let neutral = measure(&mut method, &m, &held, 1.0).unwrap();
    assert!(neutral.kl < 1e-9, "{neutral:?}");
    assert_eq!(neutral.agreement, 1.0);
    assert_eq!(neutral.compute_fraction, 1.0);
    assert_eq!(neutral.mean_layers, Some(6.0));
    assert!((neutral.own_ppl - held.full.own_ppl).abs() < 1e-9 * held.full.own_ppl);
    let quarter = measure(&mut method, &m, &held, 0.25).unwrap();
    assert!(
        quarter.mean_layers.unwrap() < 4.0 && quarter.compute_fraction < 0.8,
        "{quarter:?}"
    );
    assert!(quarter.kl > 0.0);
    let notes = bushu::tradeoff::Method::notes(&mut method, &held).unwrap();
    assert!(
        notes.contains("| 1 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |"),
        "{notes}"
    );
    assert!(measure(&mut method, &m, &held, 1.5).is_err());
}

/// `bushu chat --mod-routers`: capacity 1 answers both turns as plain chat does; a capacity below 1 says
/// so and answers otherwise (these routers skip layers 1, 3 and 5 for every token: zero weights, biases
/// below every stored quantile at odd layers and above them at even ones).
#[test]
fn chat_with_mod_routers() {
    let (f, m) = open(EXPERT);
    let (layers, dim) = (m.config.n_layers, m.config.dim);
    let b: Vec<f32> = (0..layers).map(|l| if l % 2 == 1 { -1000.0 } else { 1000.0 }).collect();
    let r = routers(&m, vec![0.0; layers * dim], b);
    let dir = std::env::temp_dir().join(format!("bushu-mod-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.gguf");
    r.to_gguf(&RoutersBase::of(&f, &m)).write(&path).unwrap();
    let model = shared(EXPERT);
    let base = ["-m", model.to_str().unwrap(), "-n", "16", "--temperature", "0"];
    let input = "ROMEO: speak\nJULIET: again\n";
    let (plain, _) = chat(&base, input);
    let rp = path.to_str().unwrap();
    let (full, err) = chat(
        &[&base[..], &["--mod-routers", rp, "--mod-capacity", "1"]].concat(),
        input,
    );
    assert_eq!(full, plain);
    assert!(err.contains("mixture of depths (lossy), capacity 1"), "{err}");
    let (half, err) = chat(
        &[&base[..], &["--mod-routers", rp, "--mod-capacity", "0.5"]].concat(),
        input,
    );
    assert!(err.contains("capacity 0.5"), "{err}");
    assert_ne!(half, plain);
    std::fs::remove_dir_all(&dir).unwrap();
}
