//! Cascade decoding's trade-off curve: sweep `--cascade-threshold` over prompts whose every stage's
//! greedy answer was generated once ([`crate::cascade::collect`]), and for each threshold replay the
//! cascade's decisions ([`crate::cascade::decide`], the rule `bushu run --cascade` applies): the
//! fraction of prompts each stage answers, the cascade's time (each stage it ran, as measured) against
//! always running the largest model, and the greedy agreement of its answers with the largest model's.
//! Self-contained: [`sweep`] gives the rows, [`markdown`] the table, [`plot`] the chart, [`pick`] the
//! threshold that keeps agreement within a budget. `bushu tradeoff --method cascade` and `bushu
//! cascade-report` both run it (`cli/cascade.rs`, `sweep_prompts`).

use crate::cascade::features::agreement;
use crate::cascade::{decide, Judge, PromptRun};
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;

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
    /// The largest model's perplexity of the cascade's answers (over all their tokens; NaN when no
    /// answer was scored, [`crate::cascade::Answer::largest_nll`]).
    pub own_ppl: f64,
    /// Mean `KL(p_largest ‖ p_answering stage)` per token of the cascade's answers, teacher-forced (0
    /// where the largest model answers; NaN when no answer was scored).
    pub kl: f64,
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
            let (mut nll, mut scored, mut kl) = (0.0, 0usize, 0.0);
            for r in runs {
                let last = r.answers.len() - 1;
                let (stage, _) = decide(judge, r, p);
                answered[stage] += 1;
                cascade_ms += r.answers[..=stage].iter().map(|a| a.ms).sum::<f64>();
                largest_ms += r.answers[last].ms;
                let (mine, theirs) = (&r.answers[stage].generation.tokens, &r.answers[last].generation.tokens);
                agree += agreement(mine, theirs);
                exact += (mine == theirs) as usize;
                nll += r.answers[stage].largest_nll.0;
                scored += r.answers[stage].largest_nll.1;
                kl += r.answers[stage].largest_kl;
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
                own_ppl: if scored > 0 {
                    (nll / scored as f64).exp()
                } else {
                    f64::NAN
                },
                kl: if scored > 0 { kl / scored as f64 } else { f64::NAN },
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
        " cascade time (s) | largest alone (s) | speedup | agreement with largest (%) | identical answers (%) | own-output perplexity (largest model) | KL(largest ‖ cascade) per token |\n|---|";
    s += &"---|".repeat(names.len() + 7);
    s += "\n";
    for r in rows {
        s += &format!("| {:.2} |", r.threshold);
        for a in &r.answered {
            s += &format!(" {:.1} % |", 100.0 * a);
        }
        s += &format!(
            " {:.2} | {:.2} | {:.2}x | {:.1} | {:.1} | {:.2} | {:.4} |\n",
            r.cascade_ms / 1e3,
            r.largest_ms / 1e3,
            r.speedup,
            r.agreement,
            r.exact,
            r.own_ppl,
            r.kl
        );
    }
    s
}

/// A row's value on the chart's right panel.
type Measure<'a> = dyn Fn(&Row) -> f64 + 'a;

/// The chart of a sweep: left, agreement with the largest model (%) against the cascade's time as a
/// fraction of the largest model's alone (quality vs compute, each point labelled with its threshold);
/// right, against the threshold: the share of prompts the smallest model answers, the agreement, and
/// the time fraction, all in %. `path` must end in `.svg`.
pub fn plot(path: &Path, title: &str, rows: &[Row], smallest: &str) -> Result<()> {
    super::check_svg(path)?;
    if rows.is_empty() {
        bail!("no thresholds to plot");
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(550);
    let time = |r: &Row| r.cascade_ms / r.largest_ms.max(1e-9);
    let xmax = rows.iter().map(time).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax + 0.05, 0.0..105.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("cascade time (fraction of the largest model alone)")
        .y_desc("agreement with the largest model (%)")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    let mut pts: Vec<(f64, f64)> = rows.iter().map(|r| (time(r), r.agreement)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    for r in rows {
        let at = (time(r), r.agreement);
        chart
            .draw_series(std::iter::once(Circle::new(at, 4, BLUE.filled())))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(
                EmptyElement::at(at) + Text::new(format!("{}", r.threshold), (6, -16), ("sans-serif", 12).into_font()),
            ))
            .map_err(|e| err(&e))?;
    }
    let tmin = rows.iter().map(|r| r.threshold).fold(f64::INFINITY, f64::min);
    let tmax = rows.iter().map(|r| r.threshold).fold(f64::NEG_INFINITY, f64::max);
    let ymax = rows.iter().map(|r| 100.0 * time(r)).fold(105.0, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(tmin - 0.02..tmax + 0.02, 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("cascade threshold")
        .y_desc("%")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    let answered = format!("answered by {smallest}");
    let series: [(&str, RGBColor, &Measure); 3] = [
        (&answered, RED, &|r| 100.0 * r.answered.first().copied().unwrap_or(0.0)),
        ("agreement with the largest", BLUE, &|r| r.agreement),
        ("cascade time / largest alone", GREEN, &|r| 100.0 * time(r)),
    ];
    for (name, color, y) in series {
        let mut pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.threshold, y(r))).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
