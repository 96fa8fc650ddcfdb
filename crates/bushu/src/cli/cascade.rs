//! Cascade decoding on the command line: the `--cascade` flags of `run` and `serve`, `bushu run
//! --cascade` itself, `bushu cascade-train` (fit the reliability classifier) and `bushu cascade-report`
//! (the threshold sweep of [`crate::tradeoff::cascade`], run by [`sweep_prompts`], which `bushu tradeoff
//! --method cascade` runs too).

use super::run::RunArgs;
use super::sampling::flag_error;
use super::ModelArgs;
use crate::cascade::classifier::{Classifier, Labels, Logistic, StageClassifier, KIND};
use crate::cascade::features::{agreement, NAMES, TOP_K};
use crate::cascade::{answer, check_threshold, collect, read_prompts, Answer, Judge, Stages};
use crate::generate::GenerateOptions;
use crate::model::{GenerationDefaults, Model};
use crate::sampling::SamplingParams;
use crate::tradeoff::cascade::{markdown, pick, sweep, Row, DEFAULT_THRESHOLDS};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The cascade flags of `run` and `serve`.
#[derive(Args, Clone, Debug, Default)]
pub struct CascadeArgs {
    /// Cascade decoding: these models (one vocabulary), smallest first, answer in turn; a classifier
    /// judges each answer but the last, and a reliable one is kept (no larger model runs).
    #[arg(long, value_name = "M1,M2[,M3]", value_delimiter = ',', conflicts_with = "model")]
    pub cascade: Vec<PathBuf>,
    /// With --cascade: keep an answer whose reliability is at least P (default 0.5); 0 always keeps the
    /// smallest model's answer, 1 always defers to the largest model.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub cascade_threshold: Option<f64>,
    /// With --cascade: the reliability classifier (`bushu cascade-train`); without it, the answer's
    /// geometric-mean token probability is the reliability.
    #[arg(long, value_name = "FILE")]
    pub cascade_classifier: Option<PathBuf>,
}

impl CascadeArgs {
    /// Whether `--cascade` was given.
    pub fn on(&self) -> bool {
        !self.cascade.is_empty()
    }

    /// The threshold, checked; the cascade flags without `--cascade` are refused.
    pub fn threshold(&self) -> Result<f64> {
        if !self.on() {
            if self.cascade_threshold.is_some() {
                bail!("--cascade-threshold needs --cascade M1,M2");
            }
            if self.cascade_classifier.is_some() {
                bail!("--cascade-classifier needs --cascade M1,M2");
            }
        }
        check_threshold(self.cascade_threshold.unwrap_or(0.5))
    }

    /// Opens the cascade's model files (checked: two or more, one vocabulary) and its judge.
    pub fn open(&self, margs: &ModelArgs) -> Result<(Stages, Judge)> {
        crate::cascade::check_models(&self.cascade)?;
        self.threshold()?;
        margs.gpu_note();
        super::init_threads(margs.threads)?;
        let asked = margs.check_tensors_asked();
        let stages = Stages::open(&self.cascade, |f| {
            if crate::model::check::wanted(asked, f) {
                crate::model::check::check_tensors(f)?;
            }
            Ok(())
        })?;
        let judge = Judge::load(self.cascade_classifier.as_deref(), &stages.ids)?;
        Ok((stages, judge))
    }
}

/// `bushu run --cascade`: each stage answers in turn until one is judged reliable; the answer is printed
/// once decided (an answer is only known to be kept when it is complete, so nothing streams).
pub fn run(a: &RunArgs) -> Result<()> {
    let threshold = a.cascade.threshold()?;
    if let Some(other) = super::run::other_strategy(a) {
        bail!("--cascade and {other} cannot be combined: each stage of a cascade samples or decodes greedily");
    }
    if a.spec.options()?.method != crate::spec_decode::Speculation::Off {
        bail!("--cascade and speculative decoding (--draft-model, --lookup, --self-speculate) cannot be combined");
    }
    if a.structured.constraint()?.is_some() {
        bail!(
            "--cascade and {} (structured output) cannot be combined",
            a.structured.flag()
        );
    }
    super::run::options(a, Vec::new(), &GenerationDefaults::default())?;
    let (stages, judge) = a.cascade.open(&a.model)?;
    let text = super::run::prompt_text(a)?;
    let prompt = stages.files[0].tokenizer.encode(&text, !a.no_bos)?;
    let last = stages.len() - 1;
    let mut report = Vec::new();
    let mut kept: Option<(usize, Answer)> = None;
    for (i, file) in stages.files.iter().enumerate() {
        let opts = super::run::options(a, file.eos_ids.clone(), &file.generation)?;
        let ctx = super::run::context_size(a.ctx, &file.config, a.model.kv_type)?;
        let model = a.model.build(file)?;
        let ans = answer(&model, file, &prompt, &opts, ctx).map_err(|e| flag_error(e, &[]))?;
        let score = (i < last).then(|| judge.score(i, &ans.features));
        let keep = score.is_none_or(|s| crate::cascade::accepts(s, threshold));
        report.push(json!({
            "model": stages.ids[i].name,
            "tokens": ans.generation.tokens.len(),
            "ms": ans.ms,
            "reliability": score,
            "kept": keep,
            "features": NAMES.iter().zip(ans.features).map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }));
        if !a.json {
            match score {
                Some(s) => eprintln!(
                    "[cascade stage {} ({}): reliability {s:.3} {} {threshold}: {}]",
                    i + 1,
                    stages.ids[i].name,
                    if keep { "≥" } else { "<" },
                    if keep { "kept" } else { "deferred to the next model" }
                ),
                None => eprintln!(
                    "[cascade stage {} ({}): the largest model answers]",
                    i + 1,
                    stages.ids[i].name
                ),
            }
        }
        if keep {
            kept = Some((i, ans));
            break;
        }
    }
    let (stage, ans) = kept.expect("the last stage always answers");
    let g = &ans.generation;
    if a.json {
        let mut out = json!({
            "prompt_tokens": prompt,
            "tokens": g.tokens,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "timings": {
                "prefill_ms": g.timings.prefill_ms,
                "decode_ms": g.timings.decode_ms,
                "cascade_ms": report.iter().map(|r| r["ms"].as_f64().unwrap_or(0.0)).sum::<f64>(),
            },
            "cascade": {
                "stage": stage + 1,
                "model": stages.ids[stage].name,
                "threshold": threshold,
                "judge": judge.name(),
                "stages": report,
            },
        });
        if let Some(k) = a.logprobs {
            let lp: Vec<Vec<_>> = g.logprobs.iter().map(|t| t.iter().take(k).cloned().collect()).collect();
            out["logprobs"] = serde_json::to_value(lp)?;
        }
        println!("{out}");
    } else {
        println!("{}", g.text);
        eprintln!(
            "[answered by stage {} of {} ({}); {} tokens, finish: {}]",
            stage + 1,
            stages.len(),
            stages.ids[stage].name,
            g.tokens.len(),
            serde_json::to_value(g.finish_reason)?.as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// The options shared by `cascade-train` and `cascade-report`: the cascade, prompts, budget.
#[derive(Args)]
pub struct CascadeDataArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The cascade's models, smallest first (one vocabulary).
    #[arg(long, value_name = "M1,M2[,M3]", value_delimiter = ',', required = true)]
    pub cascade: Vec<PathBuf>,
    /// Prompts, one per line (a line starting with `"` is a JSON string, for newlines).
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// Tokens each model generates per prompt (greedy).
    #[arg(short = 'n', long = "n-predict", default_value_t = 48)]
    pub n: usize,
    /// Context size in tokens (default: each model's, at most 4096).
    #[arg(short, long)]
    pub ctx: Option<usize>,
    /// Do not add the BOS token to the prompts.
    #[arg(long)]
    pub no_bos: bool,
}

/// The cascade's models built, their greedy options and contexts, and the prompts tokenized.
type Prepared = (Stages, Vec<Model>, Vec<GenerateOptions>, Vec<usize>, Vec<Vec<u32>>);

impl CascadeDataArgs {
    fn prepare(&self) -> Result<Prepared> {
        if self.model.model.is_some() {
            bail!("give the models with --cascade M1,M2 (not --model)");
        }
        if self.n == 0 {
            bail!("-n must be at least 1");
        }
        let prompts = read_prompts(&self.prompts)?;
        let cargs = CascadeArgs {
            cascade: self.cascade.clone(),
            ..Default::default()
        };
        let (stages, _) = cargs.open(&self.model)?;
        let mut models = Vec::new();
        let mut opts = Vec::new();
        let mut ctx = Vec::new();
        for f in &stages.files {
            models.push(self.model.build(f)?);
            let greedy = SamplingParams {
                temperature: 0.0,
                ..Default::default()
            };
            opts.push(GenerateOptions::new(self.n, greedy, f.eos_ids.clone()));
            ctx.push(super::run::context_size(self.ctx, &f.config, self.model.kv_type)?);
        }
        let tok = &stages.files[0].tokenizer;
        let ids = prompts
            .iter()
            .map(|p| tok.encode(p, !self.no_bos))
            .collect::<Result<Vec<_>>>()?;
        Ok((stages, models, opts, ctx, ids))
    }
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: CascadeDataArgs,
    /// Where to write the classifier (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// An answer is labelled reliable when its positional token agreement with the largest model's
    /// greedy answer is at least this (1: identical answers).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub agreement_cut: f64,
    /// L2 penalty on the standardised weights.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub l2: f64,
}

/// `bushu cascade-train`: every stage answers every prompt greedily; each non-final stage's answers are
/// labelled by their agreement with the largest model's and a logistic regression is fitted to them.
pub fn train(a: TrainArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.agreement_cut) {
        bail!("--agreement-cut must be in [0, 1] (got {})", a.agreement_cut);
    }
    if !(a.l2 >= 0.0 && a.l2.is_finite()) {
        bail!("--l2 must be a finite number ≥ 0 (got {})", a.l2);
    }
    let (stages, models, opts, ctx, prompts) = a.data.prepare()?;
    let total = prompts.len();
    let runs = collect(&stages, &models, &prompts, &opts, &ctx, |k| {
        eprint!("\rcascade-train: prompt {}/{total}", k + 1)
    })?;
    eprintln!();
    let last = stages.len() - 1;
    let mut out = Vec::new();
    for i in 0..last {
        let x: Vec<Vec<f64>> = runs.iter().map(|r| r.answers[i].features.to_vec()).collect();
        let y: Vec<bool> = runs
            .iter()
            .map(|r| agreement(&r.answers[i].generation.tokens, &r.answers[last].generation.tokens) >= a.agreement_cut)
            .collect();
        let (logistic, train) = Logistic::fit(&x, &y, a.l2)?;
        eprintln!(
            "cascade-train: {} → {}: {} of {} answers reliable (agreement ≥ {}), training accuracy {:.1} %",
            stages.ids[i].name,
            stages.ids[last].name,
            train.positives,
            train.examples,
            a.agreement_cut,
            100.0 * train.accuracy
        );
        out.push(StageClassifier {
            model: stages.ids[i].name.clone(),
            logistic,
            train,
        });
    }
    let c = Classifier {
        kind: KIND.into(),
        version: 1,
        features: NAMES.iter().map(|s| s.to_string()).collect(),
        top_k: TOP_K,
        models: stages.ids.clone(),
        labels: Labels {
            agreement: "positional token agreement of the stage's greedy answer with the largest model's".into(),
            cut: a.agreement_cut,
            max_tokens: a.data.n,
        },
        l2: a.l2,
        stages: out,
    };
    c.save(&a.out)?;
    eprintln!("cascade-train: wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub data: CascadeDataArgs,
    /// The reliability classifier (without it: the geometric-mean token probability).
    #[arg(long, value_name = "FILE")]
    pub cascade_classifier: Option<PathBuf>,
    /// Thresholds to sweep (default 0, 0.1, ..., 1).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub thresholds: Vec<f64>,
    /// The agreement budget of the pick: the threshold answering the most with the smallest model whose
    /// agreement with the largest model is at least 100 − POINTS %.
    #[arg(long, default_value_t = 1.0)]
    pub points: f64,
    /// Print JSON (rows, pick) instead of the markdown table.
    #[arg(long)]
    pub json: bool,
}

/// A cascade's threshold sweep over prompts: what `bushu cascade-report` and `bushu tradeoff --method
/// cascade` report (one function, [`sweep_prompts`], runs it for both).
pub struct PromptSweep {
    pub models: Vec<crate::cascade::classifier::ModelIdentity>,
    pub judge: String,
    pub prompts: usize,
    pub max_tokens: usize,
    pub rows: Vec<Row>,
}

impl PromptSweep {
    /// The stages' model names, smallest first.
    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|i| i.name.clone()).collect()
    }

    /// The JSON object (`models`, `judge`, `prompts`, `max_tokens`, `rows`, `pick` within `budget`
    /// points of agreement).
    pub fn json(&self, budget: f64) -> serde_json::Value {
        json!({
            "models": self.models,
            "judge": self.judge,
            "prompts": self.prompts,
            "max_tokens": self.max_tokens,
            "rows": self.rows,
            "pick": pick(&self.rows, budget),
        })
    }

    /// The markdown report: a line on the data, the table, the pick within `budget` points of agreement.
    pub fn text(&self, budget: f64) -> String {
        let names = self.names();
        let mut s = format!(
            "{} prompts, {} greedy tokens at most, judge: {}\n\n",
            self.prompts, self.max_tokens, self.judge
        );
        s += &markdown(&self.rows, &names);
        s += &match pick(&self.rows, budget) {
            Some(r) => format!(
                "\nwithin {} point(s) of agreement: threshold {:.2}, {:.1} % answered by {}, speedup {:.2}x, agreement {:.1} %\n",
                budget,
                r.threshold,
                100.0 * r.answered[0],
                names[0],
                r.speedup,
                r.agreement
            ),
            None => format!("\nno threshold keeps agreement within {budget} point(s)\n"),
        };
        s
    }
}

/// Every stage of `data`'s cascade answers every prompt greedily once, then the cascade's decisions are
/// replayed at each of `thresholds` (default [`DEFAULT_THRESHOLDS`]; each checked) with the judge of
/// `classifier` ([`crate::tradeoff::cascade::sweep`]); `tag` names the command in the progress line.
pub fn sweep_prompts(
    data: &CascadeDataArgs,
    classifier: Option<&Path>,
    thresholds: &[f64],
    tag: &str,
) -> Result<PromptSweep> {
    let thresholds = if thresholds.is_empty() {
        DEFAULT_THRESHOLDS.to_vec()
    } else {
        thresholds.to_vec()
    };
    for &t in &thresholds {
        check_threshold(t)?;
    }
    let (stages, models, opts, ctx, prompts) = data.prepare()?;
    let judge = Judge::load(classifier, &stages.ids)?;
    let total = prompts.len();
    let runs = collect(&stages, &models, &prompts, &opts, &ctx, |k| {
        eprint!("\r{tag}: prompt {}/{total}", k + 1)
    })?;
    eprintln!();
    Ok(PromptSweep {
        rows: sweep(&judge, &runs, &thresholds),
        judge: judge.name().to_string(),
        models: stages.ids,
        prompts: total,
        max_tokens: data.n,
    })
}

/// `bushu cascade-report`: the threshold sweep over held-out prompts.
pub fn report(a: ReportArgs) -> Result<()> {
    let s = sweep_prompts(
        &a.data,
        a.cascade_classifier.as_deref(),
        &a.thresholds,
        "cascade-report",
    )?;
    if a.json {
        println!("{}", s.json(a.points));
    } else {
        print!("{}", s.text(a.points));
    }
    Ok(())
}
