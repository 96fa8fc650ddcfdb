//! The processors on exact numbers: the lecture's next-token table (top-k, top-p), the temperature,
//! presence and frequency formulas, the CTRL repetition penalty, the penalty window, min-p, logit
//! bias, n-gram blocking (as a property), and a chi-square test that seeded sampling draws from the
//! processed distribution.

use bushu::sampling::frequency_penalty::FrequencyPenalty;
use bushu::sampling::min_p::MinP;
use bushu::sampling::no_repeat_ngram::{banned_tokens, NoRepeatNgram};
use bushu::sampling::presence_penalty::PresencePenalty;
use bushu::sampling::repetition_penalty::RepetitionPenalty;
use bushu::sampling::rng::Rng;
use bushu::sampling::temperature::Temperature;
use bushu::sampling::top_k::TopK;
use bushu::sampling::top_p::TopP;
use bushu::sampling::{Candidates, Context, LogitProcessor, PenaltyWindow, Sampler, SamplingParams};
use std::collections::BTreeSet;

/// The lecture's table: the next token after "I am sleepy. I start a pot of".
const TABLE: [(&str, f32); 13] = [
    ("coffee", 0.681),
    ("water", 0.119),
    ("tea", 0.057),
    ("rice", 0.017),
    ("chai", 0.012),
    ("strong", 0.008),
    ("black", 0.008),
    ("hot", 0.007),
    ("oat", 0.006),
    ("beans", 0.006),
    ("soup", 0.005),
    ("happy", 4.3e-6),
    ("Boh", 4.3e-6),
];

fn cands(logits: &[f32]) -> Candidates {
    let mut c = Candidates::default();
    c.fill(logits);
    c
}

const NO_CTX: Context = Context {
    tokens: &[],
    prompt_len: 0,
};

fn kept_words(c: &Candidates) -> BTreeSet<&'static str> {
    c.items.iter().map(|x| TABLE[x.0 as usize].0).collect()
}

fn table_logits(with_rest: bool) -> Vec<f32> {
    let mut l: Vec<f32> = TABLE.iter().map(|t| t.1.ln()).collect();
    if with_rest {
        // The table does not sum to 1: the rest of the vocabulary as one more token.
        let rest = 1.0 - TABLE.iter().map(|t| t.1 as f64).sum::<f64>();
        l.push((rest as f32).ln());
    }
    l
}

#[test]
fn lecture_top_k_3_keeps_coffee_water_tea() {
    let mut c = cands(&table_logits(false));
    TopK(3).process(&mut c, &NO_CTX);
    assert_eq!(kept_words(&c), ["coffee", "water", "tea"].into_iter().collect());
}

#[test]
fn lecture_top_p_08_keeps_coffee_water() {
    // Renormalized over the table (coffee + water = 0.857) and with the remaining mass as one more
    // token (coffee + water = 0.800 exactly, the lecture's arithmetic).
    for rest in [false, true] {
        let mut c = cands(&table_logits(rest));
        TopP(0.8).process(&mut c, &NO_CTX);
        assert_eq!(
            kept_words(&c),
            ["coffee", "water"].into_iter().collect(),
            "rest: {rest}"
        );
    }
    // Renormalized, coffee + water = 0.857 < 0.9: tea joins.
    let mut c = cands(&table_logits(false));
    TopP(0.9).process(&mut c, &NO_CTX);
    assert_eq!(kept_words(&c), ["coffee", "water", "tea"].into_iter().collect());
}

#[test]
fn temperature_formula() {
    // P(u_j) = exp(l_j / t) / Σ exp(l_j' / t): logits [2, 1, 0] at t = 0.5 → e^4, e^2, e^0 over their sum.
    let mut c = cands(&[2.0, 1.0, 0.0]);
    Temperature(0.5).process(&mut c, &NO_CTX);
    let p = c.probs();
    let s = 54.59815 + 7.389056 + 1.0;
    for (got, want) in p.iter().zip([54.59815 / s, 7.389056 / s, 1.0 / s]) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert!((p[0] - 0.866813).abs() < 1e-5);
}

fn logits_after(p: &mut dyn LogitProcessor, logits: &[f32], tokens: &[u32], prompt_len: usize) -> Vec<f32> {
    let mut c = cands(logits);
    p.process(&mut c, &Context { tokens, prompt_len });
    let mut out = vec![0.0; logits.len()];
    c.to_dense(&mut out);
    out
}

#[test]
fn presence_and_frequency_formulas() {
    let logits = [1.0, 2.0, 3.0, 4.0];
    let seen = [1, 1, 3]; // token 1 twice, token 3 once
                          // logit - α·[seen]
    let got = logits_after(
        &mut PresencePenalty::new(0.5, PenaltyWindow::default()),
        &logits,
        &seen,
        0,
    );
    assert_eq!(got, vec![1.0, 1.5, 3.0, 3.5]);
    // logit - α·count
    let got = logits_after(
        &mut FrequencyPenalty::new(0.5, PenaltyWindow::default()),
        &logits,
        &seen,
        0,
    );
    assert_eq!(got, vec![1.0, 1.0, 3.0, 3.5]);
    let got = logits_after(
        &mut FrequencyPenalty::new(0.25, PenaltyWindow::default()),
        &logits,
        &[2, 2, 2, 2],
        0,
    );
    assert_eq!(got, vec![1.0, 2.0, 2.0, 4.0]);
}

#[test]
fn repetition_penalty_is_ctrl() {
    // Positive logits divided by θ, negative multiplied; each seen token once however often it occurs.
    let logits = [-1.0, 2.0, 3.0, -4.0];
    let got = logits_after(
        &mut RepetitionPenalty::new(2.0, PenaltyWindow::default()),
        &logits,
        &[0, 1, 1, 0],
        0,
    );
    assert_eq!(got, vec![-2.0, 1.0, 3.0, -4.0]);
}

#[test]
fn penalty_window() {
    let logits = [1.0, 2.0, 3.0, 4.0];
    let seq = [1, 1, 3];
    // Last 1 token only: just token 3.
    let w = PenaltyWindow {
        last_n: 1,
        include_prompt: true,
    };
    assert_eq!(
        logits_after(&mut PresencePenalty::new(1.0, w), &logits, &seq, 0),
        vec![1.0, 2.0, 3.0, 3.0]
    );
    // The first two tokens are the prompt and do not count.
    let w = PenaltyWindow {
        last_n: 0,
        include_prompt: false,
    };
    assert_eq!(
        logits_after(&mut FrequencyPenalty::new(1.0, w), &logits, &seq, 2),
        vec![1.0, 2.0, 3.0, 3.0]
    );
    // Prompt included (default): all three.
    let w = PenaltyWindow::default();
    assert_eq!(
        logits_after(&mut FrequencyPenalty::new(1.0, w), &logits, &seq, 2),
        vec![1.0, 0.0, 3.0, 3.0]
    );
}

#[test]
fn min_p_and_logit_bias() {
    // p = [0.5, 0.3, 0.15, 0.05], min-p 0.2 → keep p ≥ 0.1.
    let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let mut c = cands(&logits);
    MinP(0.2).process(&mut c, &NO_CTX);
    assert_eq!(c.items.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2]);

    let p = SamplingParams {
        logit_bias: vec![(0, f32::NEG_INFINITY), (3, 10.0)],
        ..SamplingParams::greedy()
    };
    let mut s = Sampler::new(&p).unwrap();
    assert_eq!(s.sample(&[5.0, 4.0, 3.0, -4.0]), 3);
    let p = SamplingParams {
        logit_bias: vec![(0, f32::NEG_INFINITY)],
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&p).unwrap().sample(&[5.0, 4.0, 3.0, -4.0]), 1);
}

/// Whether some n-gram occurs twice in `s`.
fn repeats_ngram(s: &[u32], n: usize) -> bool {
    let mut seen = BTreeSet::new();
    s.windows(n).any(|w| !seen.insert(w.to_vec()))
}

#[test]
fn no_repeat_ngram_property() {
    let mut rng = Rng::new(7);
    for n in 1..=4 {
        for _ in 0..300 {
            // A sequence without repeated n-grams, grown one random allowed token at a time.
            let mut s: Vec<u32> = Vec::new();
            for _ in 0..20 {
                let banned = banned_tokens(&s, n);
                for t in 0..6u32 {
                    let mut s2 = s.clone();
                    s2.push(t);
                    // Banned exactly when appending it repeats an n-gram.
                    assert_eq!(banned.contains(&t), repeats_ngram(&s2, n), "n {n} seq {s:?} token {t}");
                }
                let allowed: Vec<u32> = (0..6).filter(|t| !banned.contains(t)).collect();
                if allowed.is_empty() {
                    break;
                }
                s.push(allowed[rng.next_u32() as usize % allowed.len()]);
            }
        }
    }
    // Through the sampler: greedy on logits that always prefer token 0 still never repeats a 3-gram.
    let p = SamplingParams {
        no_repeat_ngram: 3,
        ..SamplingParams::greedy()
    };
    let mut s = Sampler::new(&p).unwrap();
    s.set_prompt(&[0, 0, 1]);
    let logits: Vec<f32> = (0..50).map(|i| -(i as f32)).collect();
    for _ in 0..100 {
        s.sample(&logits);
    }
    assert!(!repeats_ngram(s.history(), 3));
    // And the processor bans with -inf.
    let mut c = cands(&[1.0, 1.0, 1.0]);
    NoRepeatNgram(2).process(
        &mut c,
        &Context {
            tokens: &[2, 1, 2],
            prompt_len: 3,
        },
    );
    assert_eq!(c.items[1].1, f32::NEG_INFINITY);
}

/// The processed distribution, computed here independently: temperature, top-k, top-p, min-p.
fn expected(logits: &[f32], t: f32, k: usize, p: f32, min_p: f32) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|a, b| logits[*b].partial_cmp(&logits[*a]).unwrap());
    idx.truncate(k);
    let w: Vec<f64> = idx.iter().map(|&i| (logits[i] as f64 / t as f64).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut acc = 0.0;
    let mut keep = 0;
    for x in &w {
        acc += x / z;
        keep += 1;
        if acc >= p as f64 {
            break;
        }
    }
    let w = &w[..keep];
    let max = w[0];
    let kept: Vec<(usize, f64)> = idx
        .iter()
        .zip(w)
        .filter(|(_, &x)| x >= min_p as f64 * max)
        .map(|(&i, &x)| (i, x))
        .collect();
    let z: f64 = kept.iter().map(|x| x.1).sum();
    let mut out = vec![0.0; logits.len()];
    for (i, x) in kept {
        out[i] = x / z;
    }
    out
}

#[test]
fn sampling_matches_processed_distribution_chi_square() {
    let logits = [2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, -3.0, 0.9, 1.1];
    // (temperature, top-k, top-p, min-p)
    let settings = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 6, 1.0, 0.0),
        (1.3, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.2),
        (0.8, 7, 0.95, 0.1),
    ];
    for (t, k, p, min_p) in settings {
        let want = expected(&logits, t, if k == 0 { logits.len() } else { k }, p, min_p);
        let params = SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p,
            seed: 1234,
            ..Default::default()
        };
        let mut s = Sampler::new(&params).unwrap();
        let draws = 100_000;
        let mut counts = vec![0u64; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&logits) as usize] += 1;
        }
        let mut chi2 = 0.0;
        let mut df = 0;
        for (c, w) in counts.iter().zip(&want) {
            if *w == 0.0 {
                assert_eq!(*c, 0, "a removed token was drawn ({t}, {k}, {p}, {min_p})");
            } else {
                let e = w * draws as f64;
                chi2 += (*c as f64 - e).powi(2) / e;
                df += 1;
            }
        }
        // 99.9% quantiles of chi-square with df - 1 degrees of freedom (df ≤ 10).
        let crit = [0.0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88][df - 1];
        assert!(
            chi2 < crit,
            "chi2 {chi2:.2} ≥ {crit} with {} dof for ({t}, {k}, {p}, {min_p}): {counts:?}",
            df - 1
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
    let run = |seed| {
        let mut s = Sampler::new(&SamplingParams {
            seed,
            ..Default::default()
        })
        .unwrap();
        (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn invalid_params_are_refused() {
    let bad = [
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            min_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
        SamplingParams {
            presence_penalty: f32::NAN,
            ..Default::default()
        },
        SamplingParams {
            logit_bias: vec![(1, f32::NAN)],
            ..Default::default()
        },
    ];
    for p in bad {
        let e = Sampler::new(&p).err().unwrap_or_else(|| panic!("accepted {p:?}"));
        assert!(!e.to_string().contains('\n'));
    }
    assert!(SamplingParams::default().validate().is_ok());
}

/// Deterministic pseudo-random logits in [-4, 4) (an LCG, so the test needs no crate).
fn random_logits(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
        })
        .collect()
}

/// Pearson's chi-square of `counts` against `probs` (cells expecting fewer than 5 draws pooled) and its
/// 99.9% critical value (Wilson–Hilferty). Tokens with probability 0 must never be drawn.
fn chi_square(counts: &[u64], probs: &[f32]) -> (f64, f64) {
    let draws: u64 = counts.iter().sum();
    let (mut chi2, mut cells) = (0.0, 0usize);
    let (mut pooled_c, mut pooled_e) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        if p == 0.0 {
            assert_eq!(c, 0, "a token of probability 0 was drawn");
            continue;
        }
        let e = p as f64 * draws as f64;
        if e < 5.0 {
            pooled_c += c as f64;
            pooled_e += e;
        } else {
            chi2 += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_e > 0.0 {
        chi2 += (pooled_c - pooled_e).powi(2) / pooled_e;
        cells += 1;
    }
    let df = cells.saturating_sub(1).max(1) as f64;
    let z = 3.09; // the 99.9% normal quantile
    let crit = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (chi2, crit)
}

/// Settings covering every processor of the chain, with a history for the penalties and n-gram
/// blocking to look at.
fn chain_settings() -> Vec<SamplingParams> {
    let base = SamplingParams {
        seed: 99,
        ..Default::default()
    };
    vec![
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.7,
            top_k: 8,
            top_p: 0.9,
            min_p: 0.05,
            ..base.clone()
        },
        SamplingParams {
            temperature: 1.2,
            repetition_penalty: 1.3,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            penalty_window: PenaltyWindow {
                last_n: 6,
                include_prompt: false,
            },
            no_repeat_ngram: 2,
            logit_bias: vec![(3, f32::NEG_INFINITY), (5, 1.5), (7, -0.5)],
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.9,
            top_k: 12,
            top_p: 0.8,
            min_p: 0.1,
            repetition_penalty: 0.8,
            frequency_penalty: -0.2,
            no_repeat_ngram: 3,
            logit_bias: vec![(0, f32::NEG_INFINITY)],
            ..base.clone()
        },
        SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.5,
            logit_bias: vec![(1, f32::NEG_INFINITY)],
            ..base
        },
    ]
}

const PROMPT: [u32; 8] = [4, 9, 2, 4, 9, 11, 2, 4];

#[test]
fn distribution_is_what_sample_draws() {
    let vocab = 24;
    for (i, params) in chain_settings().into_iter().enumerate() {
        for row in 0..3u32 {
            let logits = random_logits(vocab, 17 * i as u32 + row);
            let mut s = Sampler::new(&params).unwrap();
            s.set_prompt(&PROMPT);
            let d = s.distribution(&logits);
            assert_eq!(d.len(), vocab);
            let sum: f64 = d.iter().map(|&p| p as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "setting {i}: sums to {sum}");
            assert!(d.iter().all(|&p| (0.0..=1.0).contains(&p)));
            // The filters' zeros: banned by the logit bias, by n-gram blocking (… 9 → after "4 9" in the
            // prompt comes 2 or 11, so with "… 2 4" last, size 2 bans what followed 4: 9).
            for &(id, b) in &params.logit_bias {
                if b == f32::NEG_INFINITY {
                    assert_eq!(d[id as usize], 0.0, "setting {i}: banned token {id} has mass");
                }
            }
            if params.no_repeat_ngram == 2 {
                assert_eq!(d[9], 0.0, "setting {i}: the n-gram (4, 9) would repeat");
            }
            let support = d.iter().filter(|&&p| p > 0.0).count();
            if params.top_k > 0 {
                assert!(
                    support <= params.top_k,
                    "setting {i}: {support} tokens survive top-{}",
                    params.top_k
                );
            }
            if params.is_greedy() {
                assert_eq!(support, 1, "setting {i}: greedy is a one-hot");
            }
            // The draws: rewinding after each one keeps the history (and so the distribution) fixed.
            let draws = 40_000;
            let mut counts = vec![0u64; vocab];
            for _ in 0..draws {
                counts[s.sample(&logits) as usize] += 1;
                s.rewind(PROMPT.len());
            }
            let (chi2, crit) = chi_square(&counts, &d);
            assert!(
                chi2 < crit,
                "setting {i} row {row}: chi2 {chi2:.1} ≥ {crit:.1}: {counts:?} vs {d:?}"
            );
            // The test has power: 5% of the mass moved from the likeliest token to the least likely one
            // is detected.
            if support > 1 {
                let mut wrong = d.clone();
                let hi = (0..vocab).max_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
                let lo = (0..vocab)
                    .filter(|&t| d[t] > 0.0)
                    .min_by(|&a, &b| d[a].total_cmp(&d[b]))
                    .unwrap();
                let moved = 0.05f32.min(wrong[hi]);
                wrong[hi] -= moved;
                wrong[lo] += moved;
                let (chi2, crit) = chi_square(&counts, &wrong);
                assert!(
                    chi2 > crit,
                    "setting {i} row {row}: a wrong distribution passed ({chi2:.1} < {crit:.1})"
                );
            } else {
                let t = d.iter().position(|&p| p == 1.0).unwrap();
                assert_eq!(counts[t], draws, "setting {i}: greedy drew something else");
            }
        }
    }
}

#[test]
fn the_distribution_matches_an_independent_computation() {
    let logits = [2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, -3.0, 0.9, 1.1];
    for (t, k, p, min_p) in [
        (1.0, 0, 1.0, 0.0),
        (0.7, 6, 1.0, 0.0),
        (1.3, 0, 0.9, 0.0),
        (0.8, 7, 0.95, 0.1),
    ] {
        let want = expected(&logits, t, if k == 0 { logits.len() } else { k }, p, min_p);
        let mut s = Sampler::new(&SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p,
            ..Default::default()
        })
        .unwrap();
        let d = s.distribution(&logits);
        for (a, b) in d.iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() < 1e-6,
                "({t}, {k}, {p}, {min_p}): {d:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn rewinding_is_never_having_pushed() {
    let vocab = 24;
    for (i, params) in chain_settings().into_iter().enumerate() {
        let rows: Vec<Vec<f32>> = (0..6).map(|r| random_logits(vocab, 1000 + 7 * i as u32 + r)).collect();
        // Rewound: two tokens kept, three rejected (pushed by accept and by sample), then others.
        let mut a = Sampler::new(&params).unwrap();
        a.set_prompt(&PROMPT);
        a.accept(4);
        a.accept(9);
        a.accept(2);
        a.sample(&rows[0]);
        a.sample(&rows[1]);
        a.rewind(PROMPT.len() + 2);
        // Never pushed.
        let mut b = Sampler::new(&params).unwrap();
        b.set_prompt(&PROMPT);
        b.accept(4);
        b.accept(9);
        assert_eq!(a.history(), b.history());
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(a.distribution(row), b.distribution(row), "setting {i} row {r}");
            let t = (r * 5 % vocab) as u32;
            a.accept(t);
            b.accept(t);
        }
        // Rewinding into the prompt is having had the shorter prompt (the penalty window of setting 2
        // skips the prompt, so its length matters).
        a.rewind(5);
        let mut c = Sampler::new(&params).unwrap();
        c.set_prompt(&PROMPT[..5]);
        for row in &rows {
            assert_eq!(a.distribution(row), c.distribution(row), "setting {i}, into the prompt");
            a.accept(6);
            c.accept(6);
        }
    }
}
