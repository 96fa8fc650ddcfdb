//! Beam search, as Hugging Face `generate(num_beams=N)` does it (transformers ≥ 4.50's vectorized
//! `_beam_search`, itself equivalent to the older `BeamSearchScorer`):
//!
//! - every step, each running beam's processed log-probabilities are added to its cumulative score and
//!   the best `2N` continuations over all beams are kept (`(1 + #EOS)·N`, at least `2N`);
//! - a continuation that ends (an EOS token, or the length limit) becomes a finished hypothesis when it
//!   ranks among the first `N`, scored `sum_logprobs / generated_len^length_penalty` (EOS counted);
//!   the best `N` finished hypotheses are kept;
//! - the best `N` continuations that did not end are the next running beams;
//! - the search stops when no running beam remains, or — `early_stopping` — as soon as `N` hypotheses
//!   are finished (`True`), or when the best running beam cannot beat the worst finished one any more
//!   (`False`, HF's default heuristic: its score over the current length), or never before the limit
//!   (`Never`, with `max_length` in the bound when the length penalty is positive).
//!
//! The search is generic over the per-beam state `S` (the model's KV cache of that beam, in
//! `crate::generate::beam`) and over the scores, so the same code runs on log-probabilities, on the
//! contrastive-decoding objective, and on the toy distributions of the tests.

use super::InvalidParam;
use anyhow::Result;

/// When the search may end before the length limit (HF `early_stopping`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop as soon as `N` hypotheses are finished.
    True,
    /// Stop when the best running beam, normalized by the current length, cannot beat the worst
    /// finished hypothesis (HF default).
    #[default]
    False,
    /// Only the canonical bound (with the maximum length when the length penalty is positive).
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "true" => Ok(EarlyStopping::True),
            "false" => Ok(EarlyStopping::False),
            "never" => Ok(EarlyStopping::Never),
            _ => anyhow::bail!("early stopping must be true, false or never (got {s:?})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BeamParams {
    pub num_beams: usize,
    /// How many of the best finished sequences to return (≤ `num_beams`).
    pub num_return: usize,
    /// Exponent of the generated length dividing a finished hypothesis' score (HF default 1.0; > 0
    /// favours longer sequences, < 0 shorter).
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
}

impl Default for BeamParams {
    fn default() -> Self {
        BeamParams {
            num_beams: 4,
            num_return: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
        }
    }
}

impl BeamParams {
    pub fn validate(&self) -> Result<()> {
        if self.num_beams == 0 {
            return Err(InvalidParam::error("num_beams", "must be at least 1"));
        }
        if self.num_return == 0 || self.num_return > self.num_beams {
            let (beams, got) = (self.num_beams, self.num_return);
            return Err(InvalidParam::error(
                "num_return",
                format!("must be between 1 and num_beams ({beams}), got {got}"),
            ));
        }
        if !self.length_penalty.is_finite() {
            let got = self.length_penalty;
            return Err(InvalidParam::error(
                "length_penalty",
                format!("must be a finite number (got {got})"),
            ));
        }
        Ok(())
    }
}

/// A finished sequence: the generated tokens (EOS included when it ended with one) and its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    /// `sum_logprobs / len^length_penalty`.
    pub score: f32,
    /// Sum of the step scores (unnormalized).
    pub sum_score: f32,
    /// Ended with an EOS token (else the length limit).
    pub eos: bool,
}

struct Running<S> {
    tokens: Vec<u32>,
    score: f32,
    state: S,
    /// This beam's scores for its next token.
    next: Vec<f32>,
}

/// One continuation: (cumulative score, running beam index, token).
type Cand = (f32, usize, u32);

/// Runs beam search for at most `max_new` tokens.
///
/// `first` is the state after the prompt and the scores of the first token; `expand(parent, tokens)`
/// returns the state of the sequence `tokens` (the parent's tokens plus one) and the scores of the
/// token after it, processed (log-probabilities for plain beam search). `-inf` scores are never chosen.
/// Returns the best hypotheses, best first (up to `num_beams`; the caller keeps `num_return`).
pub fn beam_search<S>(
    p: &BeamParams,
    eos_ids: &[u32],
    max_new: usize,
    first: (S, Vec<f32>),
    mut expand: impl FnMut(&S, &[u32]) -> Result<(S, Vec<f32>)>,
) -> Result<Vec<Hypothesis>> {
    let n = p.num_beams;
    let keep = (1 + eos_ids.len()).max(2) * n;
    let mut running = vec![Running {
        tokens: Vec::new(),
        score: 0.0,
        state: first.0,
        next: first.1,
    }];
    let mut finished: Vec<Hypothesis> = Vec::new();
    let mut improvable = true;
    for cur in 0..max_new {
        let len = cur + 1; // generated length once this step's token is appended
        let top = top_continuations(&running, keep);
        if top.is_empty() {
            break;
        }
        let ends = |t: u32| eos_ids.contains(&t) || len == max_new;
        // Finished hypotheses: only continuations ranked among the first N count.
        let full_and_stopping = finished.len() == n && p.early_stopping == EarlyStopping::True;
        if improvable && !full_and_stopping {
            for &(s, b, t) in top.iter().take(n).filter(|c| ends(c.2)) {
                let mut tokens = running[b].tokens.clone();
                tokens.push(t);
                let score = s / (len as f32).powf(p.length_penalty);
                finished.push(Hypothesis {
                    tokens,
                    score,
                    sum_score: s,
                    eos: eos_ids.contains(&t),
                });
            }
            // Stable: earlier hypotheses win ties, as HF's concatenation puts them first.
            finished.sort_by(|a, b| b.score.total_cmp(&a.score));
            finished.truncate(n);
        }
        let next: Vec<Cand> = top.iter().copied().filter(|c| !ends(c.2)).take(n).collect();
        if next.is_empty() {
            break;
        }
        // Can a running beam still beat the worst finished hypothesis?
        if finished.len() == n {
            let best_len = if p.early_stopping == EarlyStopping::Never && p.length_penalty > 0.0 {
                max_new
            } else {
                len
            };
            let best_possible = next[0].0 / (best_len as f32).powf(p.length_penalty);
            let worst = finished.last().map(|h| h.score).unwrap_or(f32::NEG_INFINITY);
            if best_possible <= worst {
                improvable = false;
            }
        }
        if !improvable || (finished.len() == n && p.early_stopping == EarlyStopping::True) {
            break;
        }
        let mut new_running = Vec::with_capacity(next.len());
        for (s, b, t) in next {
            let mut tokens = running[b].tokens.clone();
            tokens.push(t);
            let (state, scores) = expand(&running[b].state, &tokens)?;
            new_running.push(Running {
                tokens,
                score: s,
                state,
                next: scores,
            });
        }
        running = new_running;
    }
    Ok(finished)
}

/// The best `keep` continuations of all running beams, best first (ties: lower beam, lower token).
fn top_continuations<S>(running: &[Running<S>], keep: usize) -> Vec<Cand> {
    let mut all: Vec<Cand> = Vec::new();
    for (b, r) in running.iter().enumerate() {
        // Per beam, only its own best `keep` can make the global top `keep`.
        let mut idx: Vec<u32> = (0..r.next.len() as u32)
            .filter(|&t| r.next[t as usize] > f32::NEG_INFINITY)
            .collect();
        let cmp = |a: &u32, c: &u32| r.next[*c as usize].total_cmp(&r.next[*a as usize]).then(a.cmp(c));
        if idx.len() > keep {
            idx.select_nth_unstable_by(keep - 1, cmp);
            idx.truncate(keep);
        }
        all.extend(idx.into_iter().map(|t| (r.score + r.next[t as usize], b, t)));
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    all.truncate(keep);
    all
}
