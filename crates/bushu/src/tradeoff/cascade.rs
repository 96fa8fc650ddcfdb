//! Cascade decoding's trade-off curve: sweep `--cascade-threshold` over prompts whose every stage's
//! greedy answer was generated once ([`crate::cascade::collect`]), and for each threshold replay the
//! cascade's decisions ([`crate::cascade::decide`], the rule `bushu run --cascade` applies): the
//! fraction of prompts each stage answers, the cascade's time (each stage it ran, as measured) against
//! always running the largest model, and the greedy agreement of its answers with the largest model's.
//! Self-contained: [`sweep`] gives the rows, [`markdown`] the table, [`pick`] the threshold that keeps
//! agreement within a budget.

use crate::cascade::features::agreement;
use crate::cascade::{decide, Judge, PromptRun};
use serde::Serialize;

/// One threshold's outcome over the prompts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub threshold: f64,
    /// Per stage, the fraction of prompts it answered.
    pub answered: Vec<f64>,
    /// The cascade's total time, ms (every stage it ran on every prompt).
    pub cascade_ms: f64,
    /// The largest model's total time alone, ms.
    pub largest_ms: f64,
    /// `largest_ms / cascade_ms`.
    pub speedup: f64,
    /// Mean positional token agreement of the cascade's answers with the largest model's, in %.
    pub agreement: f64,
    /// Share of prompts whose cascade answer equals the largest model's token for token, in %.
    pub exact: f64,
}

/// The thresholds the report sweeps by default.
pub const DEFAULT_THRESHOLDS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// One row per threshold of `thresholds` over `runs`.
pub fn sweep(judge: &Judge, runs: &[PromptRun], thresholds: &[f64]) -> Vec<Row> {
    thresholds
        .iter()
        .map(|&p| {
            let stages = runs.first().map_or(0, |r| r.answers.len());
            let mut answered = vec![0usize; stages];
            let (mut cascade_ms, mut largest_ms, mut agree, mut exact) = (0.0, 0.0, 0.0, 0usize);
            for r in runs {
                let last = r.answers.len() - 1;
                let (stage, _) = decide(judge, r, p);
                answered[stage] += 1;
                cascade_ms += r.answers[..=stage].iter().map(|a| a.ms).sum::<f64>();
                largest_ms += r.answers[last].ms;
                let (mine, theirs) = (&r.answers[stage].generation.tokens, &r.answers[last].generation.tokens);
                agree += agreement(mine, theirs);
                exact += (mine == theirs) as usize;
            }
            let n = runs.len().max(1) as f64;
            Row {
                threshold: p,
                answered: answered.iter().map(|&a| a as f64 / n).collect(),
                cascade_ms,
                largest_ms,
                speedup: largest_ms / cascade_ms.max(1e-9),
                agreement: 100.0 * agree / n,
                exact: 100.0 * exact as f64 / n,
            }
        })
        .collect()
}

/// The row that answers the most prompts with the smallest model while its agreement with the largest
/// model stays within `points` percentage points of 100 (the largest model agrees with itself), if any.
pub fn pick(rows: &[Row], points: f64) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.agreement >= 100.0 - points - 1e-9)
        .max_by(|a, b| {
            let (x, y) = (a.answered.first().unwrap_or(&0.0), b.answered.first().unwrap_or(&0.0));
            x.total_cmp(y).then(b.threshold.total_cmp(&a.threshold))
        })
}

/// The rows as a markdown table; `names`: the stages' model names, smallest first.
pub fn markdown(rows: &[Row], names: &[String]) -> String {
    let mut s = String::from("| threshold |");
    for n in names {
        s += &format!(" answered by {n} |");
    }
    s +=
        " cascade time (s) | largest alone (s) | speedup | agreement with largest (%) | identical answers (%) |\n|---|";
    s += &"---|".repeat(names.len() + 5);
    s += "\n";
    for r in rows {
        s += &format!("| {:.2} |", r.threshold);
        for a in &r.answered {
            s += &format!(" {:.1} % |", 100.0 * a);
        }
        s += &format!(
            " {:.2} | {:.2} | {:.2}x | {:.1} | {:.1} |\n",
            r.cascade_ms / 1e3,
            r.largest_ms / 1e3,
            r.speedup,
            r.agreement,
            r.exact
        );
    }
    s
}
