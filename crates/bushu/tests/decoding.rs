//! Decoding strategies on toy distributions, against independent computations: beam search against an
//! exhaustive search, contrastive decoding and contrastive search on hand-computed cases, stop strings
//! split across pieces.

use bushu::generate::stop::{truncate_at_stop, StopMatcher};
use bushu::sampling::beam::{beam_search, BeamParams, EarlyStopping, Hypothesis};
use bushu::sampling::contrastive::{contrastive_decoding_scores, contrastive_search_pick, cosine};
use bushu::sampling::log_softmax;

/// A toy "model": log-probabilities over `v` tokens that depend on the whole sequence.
fn toy_logprobs(seq: &[u32], v: usize) -> Vec<f32> {
    let mut h: u64 = 1469598103934665603;
    for &t in seq {
        h = (h ^ (t as u64 + 1)).wrapping_mul(1099511628211);
    }
    let mut l: Vec<f32> = (0..v)
        .map(|i| {
            let x = (h ^ (i as u64 * 0x9E3779B97F4A7C15)).wrapping_mul(0xBF58476D1CE4E5B9);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0
        })
        .collect();
    log_softmax(&mut l);
    l
}

/// Every sequence that ends with EOS or reaches `max_len`, with its score `Σ log p / len^lp`.
fn exhaustive(v: usize, eos: Option<u32>, max_len: usize, lp: f32) -> Vec<(Vec<u32>, f32)> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::<u32>::new(), 0f32)];
    while let Some((seq, s)) = stack.pop() {
        let lps = toy_logprobs(&seq, v);
        for t in 0..v as u32 {
            let mut s2 = seq.clone();
            s2.push(t);
            let sum = s + lps[t as usize];
            if Some(t) == eos || s2.len() == max_len {
                out.push((s2.clone(), sum / (s2.len() as f32).powf(lp)));
            } else {
                stack.push((s2, sum));
            }
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

fn run_beam(v: usize, eos: Option<u32>, max_len: usize, p: &BeamParams) -> Vec<Hypothesis> {
    let eos_ids: Vec<u32> = eos.into_iter().collect();
    beam_search(p, &eos_ids, max_len, ((), toy_logprobs(&[], v)), |_, tokens| {
        Ok(((), toy_logprobs(tokens, v)))
    })
    .unwrap()
}

#[test]
fn beam_search_with_enough_beams_is_exhaustive() {
    // With at least as many beams as live continuations, nothing is pruned: the returned hypotheses are
    // exactly the best sequences of an exhaustive search. `Never` keeps the bound exact.
    for (v, eos, max_len) in [(3, None, 4), (3, Some(2), 5), (4, Some(0), 4)] {
        for lp in [0.0, 1.0, 2.0, -0.5] {
            let all = exhaustive(v, eos, max_len, lp);
            let n = v.pow(max_len as u32);
            let p = BeamParams {
                num_beams: n,
                num_return: 5,
                length_penalty: lp,
                early_stopping: EarlyStopping::Never,
            };
            let got = run_beam(v, eos, max_len, &p);
            for (i, (seq, score)) in all.iter().take(5).enumerate() {
                assert!(
                    (got[i].score - score).abs() < 1e-5,
                    "v {v} eos {eos:?} lp {lp} rank {i}: {} vs {score}",
                    got[i].score
                );
                // Equal scores may come in either order; otherwise the same sequence.
                if i + 1 < all.len()
                    && (all[i + 1].1 - score).abs() > 1e-5
                    && (i == 0 || (all[i - 1].1 - score).abs() > 1e-5)
                {
                    assert_eq!(&got[i].tokens, seq, "v {v} eos {eos:?} lp {lp} rank {i}");
                }
            }
        }
    }
}

#[test]
fn one_beam_is_greedy_and_small_beams_are_no_worse() {
    let (v, max_len) = (5, 6);
    let mut greedy = Vec::new();
    let mut sum = 0.0;
    for _ in 0..max_len {
        let l = toy_logprobs(&greedy, v);
        let t = (0..v).max_by(|a, b| l[*a].total_cmp(&l[*b]).then(b.cmp(a))).unwrap();
        sum += l[t];
        greedy.push(t as u32);
    }
    let p1 = BeamParams {
        num_beams: 1,
        num_return: 1,
        length_penalty: 0.0,
        early_stopping: EarlyStopping::False,
    };
    let b1 = run_beam(v, None, max_len, &p1);
    assert_eq!(b1[0].tokens, greedy);
    assert!((b1[0].score - sum).abs() < 1e-5);
    let mut prev = b1[0].score;
    for n in [2, 4, 8] {
        let p = BeamParams {
            num_beams: n,
            num_return: 1,
            length_penalty: 0.0,
            early_stopping: EarlyStopping::False,
        };
        let s = run_beam(v, None, max_len, &p)[0].score;
        // Beam search is not monotone in the beam count in general; on this fixed toy it is.
        assert!(s >= prev - 1e-6, "{n} beams: {s} < {prev}");
        prev = s;
    }
    assert!((prev - exhaustive(v, None, max_len, 0.0)[0].1).abs() < 0.5);
}

#[test]
fn contrastive_decoding_hand_computed() {
    // p_expert = [0.5, 0.3, 0.15, 0.05], p_amateur = [0.6, 0.1, 0.2, 0.1], α = 0.25: plausible tokens
    // have p_e ≥ 0.125 = {0, 1, 2}; scores ln(0.5/0.6), ln(0.3/0.1), ln(0.15/0.2), -inf.
    let pe = [0.5f32, 0.3, 0.15, 0.05];
    let pa = [0.6f32, 0.1, 0.2, 0.1];
    let le: Vec<f32> = pe.iter().map(|p| p.ln() + 7.0).collect(); // logits: any shift
    let la: Vec<f32> = pa.iter().map(|p| p.ln() - 3.0).collect();
    let s = contrastive_decoding_scores(&le, &la, 0.25, 1.0);
    let want = [(0.5f32 / 0.6).ln(), 3f32.ln(), 0.75f32.ln()];
    for i in 0..3 {
        assert!((s[i] - want[i]).abs() < 1e-5, "{i}: {} vs {}", s[i], want[i]);
    }
    assert_eq!(s[3], f32::NEG_INFINITY);
    // Greedy on the expert picks token 0; contrastive decoding picks 1 — the token the expert knows
    // better than the amateur.
    let best = (0..4).max_by(|a, b| s[*a].total_cmp(&s[*b])).unwrap();
    assert_eq!(best, 1);
    // Amateur temperature 0.5 squares its probabilities: p_a ∝ [0.36, 0.01, 0.04, 0.01] / 0.42.
    let s = contrastive_decoding_scores(&le, &la, 0.25, 0.5);
    let z = 0.42f32;
    let want = [
        (0.5 * z / 0.36f32).ln(),
        (0.3 * z / 0.01f32).ln(),
        (0.15 * z / 0.04f32).ln(),
    ];
    for i in 0..3 {
        assert!((s[i] - want[i]).abs() < 1e-4, "τ 0.5, {i}: {} vs {}", s[i], want[i]);
    }
    // α = 1 keeps only the expert's argmax.
    let s = contrastive_decoding_scores(&le, &la, 1.0, 1.0);
    assert_eq!(s.iter().filter(|x| x.is_finite()).count(), 1);
    assert!(s[0].is_finite());
}

#[test]
fn contrastive_search_hand_computed() {
    // Context hidden states e1, e2; candidate A (p 0.6) repeats e1 exactly, B (p 0.3) is orthogonal to
    // both, C (p 0.1) is at 45° from e2.
    let context = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
    let c = vec![
        (0.6, vec![2.0, 0.0, 0.0]),
        (0.3, vec![0.0, 0.0, 1.0]),
        (0.1, vec![0.0, 1.0, 1.0]),
    ];
    assert!((cosine(&c[2].1, &context[1]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    // α = 0: the most probable (greedy). α = 0.5: A 0.5·0.6 − 0.5·1 = −0.2, B 0.15 − 0 = 0.15,
    // C 0.05 − 0.354 → B.
    assert_eq!(contrastive_search_pick(&c, &context, 0.0), 0);
    assert_eq!(contrastive_search_pick(&c, &context, 0.5), 1);
    // α = 0.1: A 0.54 − 0.1 = 0.44 beats B 0.27.
    assert_eq!(contrastive_search_pick(&c, &context, 0.1), 0);
}

#[test]
fn stop_strings_across_pieces() {
    let stops = vec!["o w".to_string(), "END".to_string()];
    let mut m = StopMatcher::new(&stops);
    let mut out = String::new();
    let mut hit = false;
    for piece in ["Hel", "lo", " wo", "rld"] {
        let (t, h) = m.push(piece);
        out.push_str(&t);
        if h {
            hit = true;
            break;
        }
    }
    assert!(hit);
    assert_eq!(out, "Hell");
    // A held prefix that turns out not to be a stop string is released.
    let mut m = StopMatcher::new(&stops);
    assert_eq!(m.push("aE"), ("a".to_string(), false));
    assert_eq!(m.push("N"), (String::new(), false));
    assert_eq!(m.push("x"), ("ENx".to_string(), false));
    assert_eq!(m.push("EN"), (String::new(), false));
    assert_eq!(m.finish(), "EN");
    // Multi-byte text around the stop string.
    let mut m = StopMatcher::new(&["ё!".to_string()]);
    assert_eq!(m.push("жё"), ("ж".to_string(), false));
    assert_eq!(m.push("!z"), (String::new(), true));
    assert_eq!(truncate_at_stop("abc END def o w", &stops), ("abc ".to_string(), true));
}
