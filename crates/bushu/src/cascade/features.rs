//! The reliability features of one model's answer, the cascade classifier's input: computed from each
//! generated token's own log-probability and the top-[`TOP_K`] log-probabilities of its step (the raw
//! logits' `log_softmax`, as `bushu run --logprobs` and the server's `logprobs` report them), so `run`
//! and `serve` compute the same numbers from what their decoders already give.

/// How many of a step's most likely tokens the entropy feature sees (the server's `logprobs` limit).
pub const TOP_K: usize = 20;

/// The features' names, in the order of [`features`]' output (and of a classifier's weights).
pub const NAMES: [&str; 5] = [
    "mean_logprob",
    "min_logprob",
    "mean_entropy_top20",
    "low_confidence_fraction",
    "length_fraction",
];

/// One generated token: its log-probability and its step's top-k log-probabilities (most likely first).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub logprob: f32,
    pub top: Vec<f32>,
}

/// The entropy (nats) of a step as seen through its top-k log-probabilities: the k tokens plus the
/// rest of the vocabulary lumped into one outcome of probability `1 − Σ p`. A lower bound on the full
/// distribution's entropy, equal to it when the k tokens hold all the mass.
pub fn top_k_entropy(top: &[f32]) -> f64 {
    let mut h = 0.0;
    let mut mass = 0.0;
    for &lp in top {
        let p = (lp as f64).exp();
        mass += p;
        if p > 0.0 {
            h -= p * lp as f64;
        }
    }
    let rest = (1.0 - mass).max(0.0);
    if rest > 0.0 {
        h -= rest * rest.ln();
    }
    h
}

/// The features of an answer of `steps` generated with a budget of `max_tokens`, in [`NAMES`]' order:
/// the mean and the minimum token log-probability, the mean top-k entropy, the fraction of steps whose
/// most likely token has probability below 0.5, and the answer's length over the budget. An empty
/// answer has all zeros.
pub fn features(steps: &[Step], max_tokens: usize) -> [f64; 5] {
    if steps.is_empty() {
        return [0.0; 5];
    }
    let n = steps.len() as f64;
    let mean_lp = steps.iter().map(|s| s.logprob as f64).sum::<f64>() / n;
    let min_lp = steps.iter().map(|s| s.logprob as f64).fold(f64::INFINITY, f64::min);
    let mean_h = steps.iter().map(|s| top_k_entropy(&s.top)).sum::<f64>() / n;
    let low = steps
        .iter()
        .filter(|s| s.top.first().is_none_or(|&t| (t as f64).exp() < 0.5))
        .count() as f64
        / n;
    let len = n / max_tokens.max(1) as f64;
    [mean_lp, min_lp, mean_h, low, len]
}

/// Positional token agreement of an answer `a` with a reference `b`: the positions where both have the
/// same token over the longer one's length (1 when both are empty). Greedy answers that part keep
/// apart, so this is about the shared prefix's share of the answer.
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 1.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / longer as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_a_full_top_k_is_the_entropy() {
        // Uniform over 4 tokens, all in the top-k: ln 4.
        let lp = (0.25f32).ln();
        assert!((top_k_entropy(&[lp; 4]) - 4f64.ln()).abs() < 1e-6);
        // One token at 1/2, the remaining half lumped: ln 2.
        assert!((top_k_entropy(&[(0.5f32).ln()]) - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn features_by_hand() {
        let s = |lp: f32, top: &[f32]| Step {
            logprob: lp.ln(),
            top: top.iter().map(|p| p.ln()).collect(),
        };
        let steps = [s(0.9, &[0.9, 0.1]), s(0.4, &[0.4, 0.3, 0.3])];
        let f = features(&steps, 8);
        assert!((f[0] - ((0.9f64).ln() + (0.4f64).ln()) / 2.0).abs() < 1e-6);
        assert!((f[1] - (0.4f64).ln()).abs() < 1e-6);
        let h1 = -(0.9f64 * 0.9f64.ln() + 0.1 * 0.1f64.ln());
        let h2 = -(0.4f64 * 0.4f64.ln() + 2.0 * 0.3 * 0.3f64.ln());
        assert!((f[2] - (h1 + h2) / 2.0).abs() < 1e-5);
        assert_eq!(f[3], 0.5);
        assert_eq!(f[4], 0.25);
        assert_eq!(features(&[], 8), [0.0; 5]);
    }

    #[test]
    fn agreement_by_hand() {
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 2, 5, 4]), 0.75);
        assert_eq!(agreement(&[1, 2], &[1, 2, 3, 4]), 0.5);
        assert_eq!(agreement(&[], &[]), 1.0);
        assert_eq!(agreement(&[7], &[]), 0.0);
    }
}
