//! `bushu tradeoff`: the quality/compute curve of an adaptive-computation method (lecture §6), one
//! point per setting of its knob, against the full model on held-out text.
//!
//! A method ([`Method`]; one file each: [`early_exit`], [`mixture_of_depths`], [`semi_ar`]) does two things at a setting: scores a text
//! teacher-forced (its next-token logits at each position) and continues a prompt greedily, each time
//! saying what it computed ([`Compute`]). [`measure`] turns those into a [`Point`]:
//! - **compute**: the weights' multiply-adds per token as a fraction of the full model's (and, for
//!   methods that skip layers, mean layers per token), and the measured decode speed (tokens/s);
//! - **KL**: `KL(p_full || p_method)` per position of the held-out windows, teacher-forced, averaged;
//! - **greedy agreement**: the fraction of positions of greedy continuations of held-out prompts where
//!   the method's token equals full-depth decoding's (position by position, over the full model's length);
//! - **own perplexity**: the full model's perplexity of the method's own continuations.
//!
//! [`table`] writes the markdown table, [`plot`] the SVG chart (KL and agreement against compute).
//!
//! [`cascade`] is cascade decoding's threshold sweep (`bushu tradeoff --method cascade`, also `bushu
//! cascade-report`): per request rather than per token (fraction answered by each stage, speedup,
//! agreement with the largest model), with its own table and chart.

pub mod cascade;
pub mod early_exit;
pub mod mixture_of_depths;
pub mod semi_ar;

use crate::model::llama::Logits;
use crate::model::Model;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What a method computed while scoring or generating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Compute {
    /// Tokens computed by the method's own steps (decode steps, not a full-depth prefill).
    pub tokens: usize,
    /// The weights' multiply-adds of those steps, and what the full model would have spent on them (a
    /// method whose cost is another unit, [`Method::compute_header`], counts that instead: semi-AR
    /// counts forward passes).
    pub macs: f64,
    pub full_macs: f64,
    /// Layers run, summed over the steps (0 for methods that do not skip layers).
    pub layers: f64,
    /// Wall-clock seconds of those steps.
    pub seconds: f64,
}

impl Compute {
    pub fn add(&mut self, o: &Compute) {
        self.tokens += o.tokens;
        self.macs += o.macs;
        self.full_macs += o.full_macs;
        self.layers += o.layers;
        self.seconds += o.seconds;
    }
}

/// A method whose knob trades quality for compute.
pub trait Method {
    /// Its `--method` name.
    fn name(&self) -> &'static str;
    /// What the knob is, for the table ("entropy threshold H (nats)").
    fn knob(&self) -> &'static str;
    /// The table's compute column: what [`Compute::macs`] / [`Compute::full_macs`] count for this method
    /// (default: the weights' multiply-adds, as a fraction of the full model's).
    fn compute_header(&self) -> &'static str {
        "compute (fraction of full)"
    }
    /// The chart's compute axis (the same quantity as [`Method::compute_header`]).
    fn compute_axis(&self) -> &'static str {
        COMPUTE_AXIS
    }
    /// The settings swept when `--points` is not given (at least 5, the neutral one first).
    fn default_points(&self) -> Vec<f64>;
    /// An error for a setting out of range.
    fn check_point(&self, v: f64) -> Result<()>;
    /// Whether the method skips layers (the table then has a mean-layers column).
    fn skips_layers(&self) -> bool {
        false
    }
    /// Teacher-forced at setting `v`: runs `tokens[..from]` as a prompt, then feeds `tokens[from..]` one
    /// at a time, calling `row(i, logits)` with the next-token logits after `tokens[..=i]` for each
    /// `i` in `from..tokens.len() - 1`.
    fn score(&mut self, v: f64, tokens: &[u32], from: usize, row: &mut dyn FnMut(usize, &[f32])) -> Result<Compute>;
    /// `n` greedy tokens after `prompt` at setting `v` (no stop condition: a measurement).
    fn generate(&mut self, v: f64, prompt: &[u32], n: usize) -> Result<(Vec<u32>, Compute)>;
    /// A markdown section the report adds after the table (e.g. early exit's per-layer profile).
    fn notes(&mut self, _held: &Heldout) -> Result<String> {
        Ok(String::new())
    }
}

/// One setting's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// The setting (`None`: the full model, the reference row).
    pub knob: Option<f64>,
    /// Weights' multiply-adds per token, as a fraction of the full model's.
    pub compute_fraction: f64,
    /// Mean layers per token (methods that skip layers).
    pub mean_layers: Option<f64>,
    /// Measured decode speed of the greedy continuations.
    pub tokens_per_s: f64,
    /// Mean `KL(p_full || p_method)` (nats) over the teacher-forced positions.
    pub kl: f64,
    /// Fraction of continuation positions whose greedy token equals the full model's.
    pub agreement: f64,
    /// The full model's perplexity of the method's continuations.
    pub own_ppl: f64,
}

/// A window of held-out text: tokens, the first `from` of them the prompt.
#[derive(Clone, Debug)]
pub struct Window {
    pub tokens: Vec<u32>,
    pub from: usize,
}

/// Held-out data and the full model's answers on it, computed once for every point.
pub struct Heldout {
    pub windows: Vec<Window>,
    /// Per window, the full model's logits at positions `from..len - 1` (`vocab` each).
    pub full_rows: Vec<Vec<f32>>,
    pub prompts: Vec<Vec<u32>>,
    /// The full model's greedy continuations of the prompts.
    pub continuations: Vec<Vec<u32>>,
    /// Tokens per continuation.
    pub n: usize,
    /// The reference row: the full model's own speed and perplexity.
    pub full: Point,
}

/// How much held-out data to take from the text.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Teacher-forced windows, tokens each, prompt tokens each.
    pub windows: usize,
    pub window: usize,
    pub prefix: usize,
    /// Prompts for greedy continuations, tokens each, tokens generated each.
    pub prompts: usize,
    pub prompt: usize,
    pub n: usize,
}

impl Default for Sizes {
    fn default() -> Sizes {
        Sizes {
            windows: 2,
            window: 160,
            prefix: 32,
            prompts: 4,
            prompt: 32,
            n: 32,
        }
    }
}

/// Index of the largest value (the first of ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `log Σ exp(x)` in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// `KL(softmax(p) || softmax(q))` in nats from two logit rows.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            match la.exp() {
                0.0 => 0.0,
                pa => pa * (la - (b as f64 - lq)),
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Fraction of the positions of `reference` where `other` has the same token (a position `other`
/// lacks counts as a disagreement).
pub fn agreement(reference: &[u32], other: &[u32]) -> f64 {
    if reference.is_empty() {
        return 1.0;
    }
    let same = reference.iter().zip(other).filter(|(a, b)| a == b).count();
    same as f64 / reference.len() as f64
}

/// The full model's summed negative log-likelihood of `cont` after `prompt` (nats) and the number of
/// tokens scored.
pub fn nll_under(model: &Model, prompt: &[u32], cont: &[u32]) -> Result<(f64, usize)> {
    if cont.is_empty() {
        return Ok((0.0, 0));
    }
    let all: Vec<u32> = prompt.iter().chain(cont).copied().collect();
    let vocab = model.config.vocab_size;
    let mut state = model.new_state(all.len());
    let logits = model.forward(&mut state, &all[..all.len() - 1], Logits::All)?;
    let mut nll = 0.0;
    for (j, &t) in cont.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + j) * vocab..(prompt.len() + j) * vocab];
        nll += log_sum_exp(row) - row[t as usize] as f64;
    }
    Ok((nll, cont.len()))
}

/// Greedy continuation of `prompt` by the full model, and the seconds its decode steps took.
pub fn full_greedy(model: &Model, prompt: &[u32], n: usize) -> Result<(Vec<u32>, f64)> {
    let mut state = model.new_state(prompt.len() + n);
    let mut t = argmax(model.forward(&mut state, prompt, Logits::Last)?) as u32;
    let mut out = vec![t];
    let t0 = Instant::now();
    while out.len() < n {
        t = argmax(model.forward(&mut state, &[t], Logits::Last)?) as u32;
        out.push(t);
    }
    Ok((out, t0.elapsed().as_secs_f64()))
}

/// Cuts the held-out data out of `tokens` (a text tokenized as [`crate::perplexity::tokenize_text`]
/// does: windows from the start, prompts after them, each prompt starting with `bos` when given) and
/// computes the full model's answers.
pub fn heldout(model: &Model, tokens: &[u32], bos: Option<u32>, sizes: Sizes) -> Result<Heldout> {
    let Sizes {
        windows,
        window,
        prefix,
        prompts,
        prompt,
        n,
    } = sizes;
    if windows == 0 || prompts == 0 || n == 0 {
        bail!("the tradeoff needs at least one window, one prompt and one generated token");
    }
    if prefix == 0 || prefix + 2 > window || prompt == 0 {
        bail!("a window of {window} tokens cannot hold a prompt of {prefix} and two scored tokens");
    }
    let need = windows * window + prompts * prompt;
    if tokens.len() < need {
        bail!(
            "the text has {} tokens; the tradeoff takes {windows} windows of {window} and {prompts} prompts of {prompt} ({need} tokens)",
            tokens.len()
        );
    }
    if window.max(prompt + n) > model.config.max_ctx {
        bail!(
            "windows and prompts must fit the model's context of {}",
            model.config.max_ctx
        );
    }
    let vocab = model.config.vocab_size;
    let mut ws = Vec::new();
    let mut full_rows = Vec::new();
    for w in 0..windows {
        let mut toks = tokens[w * window..(w + 1) * window].to_vec();
        if let Some(b) = bos {
            toks[0] = b;
        }
        let mut state = model.new_state(window);
        let logits = model.forward(&mut state, &toks[..window - 1], Logits::All)?;
        full_rows.push(logits[prefix * vocab..].to_vec());
        ws.push(Window {
            tokens: toks,
            from: prefix,
        });
    }
    let base = windows * window;
    let (mut ps, mut conts) = (Vec::new(), Vec::new());
    let (mut secs, mut steps, mut nll, mut count) = (0.0, 0, 0.0, 0);
    for p in 0..prompts {
        let mut pr = tokens[base + p * prompt..base + (p + 1) * prompt].to_vec();
        if let Some(b) = bos {
            pr.insert(0, b);
            pr.pop();
        }
        let (cont, s) = full_greedy(model, &pr, n)?;
        let (l, c) = nll_under(model, &pr, &cont)?;
        secs += s;
        steps += n - 1;
        nll += l;
        count += c;
        ps.push(pr);
        conts.push(cont);
    }
    let full = Point {
        knob: None,
        compute_fraction: 1.0,
        mean_layers: Some(model.config.n_layers as f64),
        tokens_per_s: steps as f64 / secs.max(1e-9),
        kl: 0.0,
        agreement: 1.0,
        own_ppl: (nll / count.max(1) as f64).exp(),
    };
    Ok(Heldout {
        windows: ws,
        full_rows,
        prompts: ps,
        continuations: conts,
        n,
        full,
    })
}

/// Measures `method` at setting `v` against the full model's answers `held` (`model`: the full model,
/// which scores the method's continuations).
pub fn measure(method: &mut dyn Method, model: &Model, held: &Heldout, v: f64) -> Result<Point> {
    method.check_point(v)?;
    let vocab = model.config.vocab_size;
    let mut compute = Compute::default();
    let (mut kl_sum, mut kl_n) = (0.0, 0usize);
    for (w, full) in held.windows.iter().zip(&held.full_rows) {
        let c = method.score(v, &w.tokens, w.from, &mut |i, row| {
            let j = i - w.from;
            kl_sum += kl(&full[j * vocab..(j + 1) * vocab], row);
            kl_n += 1;
        })?;
        compute.add(&c);
    }
    let mut gen = Compute::default();
    let (mut agree, mut nll, mut count) = (0.0, 0.0, 0);
    for (p, reference) in held.prompts.iter().zip(&held.continuations) {
        let (cont, c) = method.generate(v, p, held.n)?;
        agree += agreement(reference, &cont);
        let (l, k) = nll_under(model, p, &cont)?;
        nll += l;
        count += k;
        gen.add(&c);
    }
    compute.add(&gen);
    Ok(Point {
        knob: Some(v),
        compute_fraction: compute.macs / compute.full_macs.max(1e-9),
        mean_layers: method
            .skips_layers()
            .then(|| compute.layers / compute.tokens.max(1) as f64),
        tokens_per_s: gen.tokens as f64 / gen.seconds.max(1e-9),
        kl: kl_sum / kl_n.max(1) as f64,
        agreement: agree / held.prompts.len() as f64,
        own_ppl: (nll / count.max(1) as f64).exp(),
    })
}

/// Parses `--points`' comma-separated list.
pub fn parse_points(s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| anyhow!("--points: {p:?} is not a number (give e.g. 0,1,2,3,4)"))
        })
        .collect()
}

/// The markdown table of `points` (the full model's row first when given), for `method`.
pub fn table(method: &dyn Method, points: &[Point]) -> String {
    let layers = method.skips_layers();
    let mut s = format!(
        "| {} | {} |{} tokens/s | KL(full ‖ method) (nats) | greedy agreement | own-output perplexity (full model) |\n",
        method.knob(),
        method.compute_header(),
        if layers { " mean layers / token |" } else { "" }
    );
    s += &format!("|---|---|{}---|---|---|---|\n", if layers { "---|" } else { "" });
    for p in points {
        let knob = p.knob.map_or_else(|| "full model".to_string(), |v| format!("{v}"));
        let ml = match (layers, p.mean_layers) {
            (true, Some(m)) => format!(" {m:.2} |"),
            (true, None) => " |".into(),
            (false, _) => String::new(),
        };
        s += &format!(
            "| {knob} | {:.3} |{ml} {:.1} | {:.4} | {:.3} | {:.2} |\n",
            p.compute_fraction, p.tokens_per_s, p.kl, p.agreement, p.own_ppl
        );
    }
    s
}

/// The default compute axis of the chart.
pub const COMPUTE_AXIS: &str = "compute per token (fraction of the full model's multiply-adds)";

/// Refuses a chart path that does not end in `.svg`.
pub fn check_svg(path: &Path) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!("{}: the tradeoff plot is written as .svg", path.display());
    }
    Ok(())
}

/// The chart: KL (left) and greedy agreement (right) against the compute fraction, each point labelled
/// with its setting. `path` must end in `.svg`.
pub fn plot(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    plot_with(path, title, COMPUTE_AXIS, points)
}

/// [`plot`] with the compute axis described as `x_desc` ([`Method::compute_axis`]).
pub fn plot_with(path: &Path, title: &str, x_desc: &str, points: &[Point]) -> Result<()> {
    check_svg(path)?;
    if points.is_empty() {
        bail!("no points to plot");
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(550);
    let xmin = points.iter().map(|p| p.compute_fraction).fold(1.0, f64::min);
    // Above 1 when what a method adds (exit heads, a second model) outweighs what it skips.
    let xmax = points.iter().map(|p| p.compute_fraction).fold(1.0, f64::max);
    let xr = (xmin - 0.05).max(0.0)..xmax + 0.05;
    // A point whose KL is infinite (a method that gives some token no probability, e.g. Medusa heads over
    // a restricted vocabulary) is left out of the KL panel; its row in the table says `inf`.
    let kl_max = points
        .iter()
        .map(|p| p.kl)
        .filter(|k| k.is_finite())
        .fold(0.0, f64::max);
    let panels = [
        (&left, "KL(full ‖ method), nats", kl_max * 1.15 + 1e-3, false),
        (&right, "greedy agreement with the full model", 1.05, true),
    ];
    for (area, ydesc, ymax, agreement) in panels {
        let y = |p: &Point| if agreement { p.agreement } else { p.kl };
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xr.clone(), 0.0..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(ydesc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err(&e))?;
        let shown = |p: &&Point| y(p).is_finite();
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .filter(shown)
            .map(|p| (p.compute_fraction, y(p)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
            .map_err(|e| err(&e))?;
        for p in points.iter().filter(shown) {
            let at = (p.compute_fraction, y(p));
            let label = p.knob.map_or_else(|| "full".to_string(), |v| format!("{v}"));
            chart
                .draw_series(std::iter::once(Circle::new(at, 4, BLUE.filled())))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at(at) + Text::new(label, (6, -16), ("sans-serif", 12).into_font()),
                ))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_agreement_by_hand() {
        // p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        let p = [0.0f32, 0.0];
        let q = [0.0f32, 3f32.ln()];
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl(&p, &q) - want).abs() < 1e-7);
        assert_eq!(kl(&q, &q), 0.0);
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 9, 3]), 0.5);
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(parse_points("0, 0.5,2").unwrap(), [0.0, 0.5, 2.0]);
        assert!(parse_points("1,a").is_err());
    }
}
