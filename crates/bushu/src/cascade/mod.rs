//! Cascade decoding (the lecture's §6, adaptive computation): models ordered from the cheapest to the
//! largest answer in turn; after each answer but the last a binary classifier judges whether the answer
//! is reliable, and if it is no larger model runs. `bushu run|serve --cascade M1,M2[,M3]`.
//!
//! - [`features`]: what the classifier sees of an answer (token log-probabilities, entropy, length).
//! - [`classifier`]: logistic regression on those features, fitted by `bushu cascade-train` on labels
//!   of agreement with the largest model's greedy answer, saved as JSON with the models' identities.
//!
//! The decision rule: stage `i`'s answer is kept when its reliability `r` satisfies `r ≥ p` for the
//! threshold `p ∈ [0, 1]`, except that `p = 1` keeps no answer (a reliability is a probability and
//! never reaches certainty): threshold 0 is always the smallest model, threshold 1 always the largest.
//! Without a classifier the reliability is the answer's geometric-mean token probability
//! (`exp(mean_logprob)`), an untrained stand-in.

pub mod classifier;
pub mod features;

use crate::generate::{generate, GenerateOptions, Generation};
use crate::model::{Model, ModelFile};
use crate::spec_decode::draft_model::vocabulary_mismatch;
use anyhow::{bail, Context, Result};
use classifier::{Classifier, ModelIdentity};
use features::{Step, TOP_K};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Checks a `--cascade-threshold`: a number in [0, 1].
pub fn check_threshold(p: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&p) {
        bail!("--cascade-threshold must be a number in [0, 1] (got {p}): 0 keeps every small-model answer, 1 always defers to the largest model");
    }
    Ok(p)
}

/// Whether an answer of reliability `score` is kept at threshold `p` (see the module's doc).
pub fn accepts(score: f64, p: f64) -> bool {
    p < 1.0 && score >= p
}

/// Checks the `--cascade` list: at least two models.
pub fn check_models(models: &[PathBuf]) -> Result<()> {
    match models.len() {
        0 => bail!("--cascade needs at least two models, smallest first (M1,M2[,M3])"),
        1 => bail!(
            "--cascade needs at least two models, smallest first (M1,M2[,M3]); got one: {}",
            models[0].display()
        ),
        _ => Ok(()),
    }
}

/// What judges an answer's reliability.
#[derive(Clone, Debug)]
pub enum Judge {
    /// A fitted classifier (`--cascade-classifier`).
    Classifier(Box<Classifier>),
    /// No classifier: the geometric-mean token probability.
    MeanProbability,
}

impl Judge {
    /// The reliability of stage `stage`'s answer with features `f`.
    pub fn score(&self, stage: usize, f: &[f64; 5]) -> f64 {
        match self {
            Judge::Classifier(c) => c.stages[stage].logistic.score(f),
            Judge::MeanProbability => f[0].exp(),
        }
    }

    /// How the judge is described in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Judge::Classifier(_) => "logistic-regression classifier",
            Judge::MeanProbability => "geometric-mean token probability (no classifier)",
        }
    }

    /// The judge of `--cascade-classifier` (checked against `models`), or the untrained one.
    pub fn load(path: Option<&Path>, models: &[ModelIdentity]) -> Result<Judge> {
        match path {
            None => Ok(Judge::MeanProbability),
            Some(p) => {
                let c = Classifier::load(p)?;
                c.check_models(p, models)?;
                Ok(Judge::Classifier(Box::new(c)))
            }
        }
    }
}

/// A cascade's model files, opened (not yet built): smallest first.
pub struct Stages {
    pub paths: Vec<PathBuf>,
    pub files: Vec<ModelFile>,
    pub ids: Vec<ModelIdentity>,
}

impl Stages {
    /// Opens the models of `--cascade` (each a path or a cache name) and checks that they share one
    /// vocabulary; `check` runs the weight check a model file asks for.
    pub fn open(models: &[PathBuf], check: impl Fn(&ModelFile) -> Result<()>) -> Result<Stages> {
        check_models(models)?;
        let mut st = Stages {
            paths: Vec::new(),
            files: Vec::new(),
            ids: Vec::new(),
        };
        for m in models {
            let path = crate::pull::resolve(Some(m))?;
            let f = crate::model::load(&path)
                .with_context(|| format!("cannot open the cascade model {}", path.display()))?;
            check(&f)?;
            st.ids.push(ModelIdentity::of(&path, &f));
            st.paths.push(path);
            st.files.push(f);
        }
        let last = st.files.len() - 1;
        for i in 0..last {
            let (a, b) = (&st.files[i], &st.files[last]);
            if let Some(m) =
                vocabulary_mismatch((a.config.vocab_size, &a.tokenizer), (b.config.vocab_size, &b.tokenizer))
            {
                bail!(
                    "--cascade: {} and {} do not share a vocabulary ({m}); a cascade's models must have one vocabulary",
                    st.ids[i].name,
                    st.ids[last].name
                );
            }
        }
        Ok(st)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// One stage's answer to a prompt.
#[derive(Clone, Debug)]
pub struct Answer {
    pub generation: Generation,
    /// Per token: its log-probability and its step's top-[`TOP_K`].
    pub steps: Vec<Step>,
    /// The classifier's features ([`features::features`]).
    pub features: [f64; 5],
    /// Wall time of the generation (prefill and decode), ms.
    pub ms: f64,
    /// The answer's summed negative log-likelihood under the cascade's largest model (nats) and its
    /// token count, teacher-forced after the prompt: filled by [`collect`] (the report's own-output
    /// perplexity), `(0, 0)` elsewhere.
    pub largest_nll: (f64, usize),
    /// Summed `KL(p_largest ‖ p_stage)` over the answer's tokens, teacher-forced after the prompt (0 for
    /// the largest model's own answer): filled by [`collect`], 0 elsewhere.
    pub largest_kl: f64,
}

/// Generates the answer of `model` to `prompt` with `opts` (its `logprobs` raised to [`TOP_K`] for the
/// features) in a fresh context of `ctx` positions.
pub fn answer(model: &Model, file: &ModelFile, prompt: &[u32], opts: &GenerateOptions, ctx: usize) -> Result<Answer> {
    let mut opts = opts.clone();
    opts.logprobs = Some(opts.logprobs.unwrap_or(0).max(TOP_K));
    let mut state = model.new_state(ctx);
    let t = Instant::now();
    let g = generate(model, &file.tokenizer, &mut state, prompt, &opts, &mut |_| {})?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let steps: Vec<Step> = g
        .chosen_logprobs
        .iter()
        .zip(&g.logprobs)
        .map(|(&logprob, top)| Step {
            logprob,
            top: top.iter().take(TOP_K).map(|t| t.logprob).collect(),
        })
        .collect();
    let features = features::features(&steps, opts.max_tokens);
    Ok(Answer {
        generation: g,
        steps,
        features,
        ms,
        largest_nll: (0.0, 0),
        largest_kl: 0.0,
    })
}

/// Reads a prompt file: one prompt per line, blank lines skipped; a line that starts with `"` is a JSON
/// string (for prompts with newlines: `"def f(x):\n    "`).
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the prompt file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('"') {
            let s: String = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{} line {}: not a JSON string: {e}", path.display(), i + 1))?;
            out.push(s);
        } else {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        bail!("the prompt file {} has no prompts", path.display());
    }
    Ok(out)
}

/// Every stage's greedy answer to one prompt (what training and the report need).
#[derive(Clone, Debug)]
pub struct PromptRun {
    pub answers: Vec<Answer>,
}

/// Runs every prompt through every stage (`models[i]` built from `stages.files[i]`) with `opts`, one
/// untimed warm-up generation per model first (the first pass packs quantized weights), and scores each
/// answer under the largest model ([`Answer::largest_nll`]); `progress` hears each prompt's index.
pub fn collect(
    stages: &Stages,
    models: &[Model],
    prompts: &[Vec<u32>],
    opts: &[GenerateOptions],
    ctx: &[usize],
    mut progress: impl FnMut(usize),
) -> Result<Vec<PromptRun>> {
    if let Some(p) = prompts.first() {
        for (i, m) in models.iter().enumerate() {
            let mut o = opts[i].clone();
            o.max_tokens = o.max_tokens.min(4);
            answer(m, &stages.files[i], p, &o, ctx[i])?;
        }
    }
    let mut out = Vec::new();
    for (k, p) in prompts.iter().enumerate() {
        progress(k);
        let mut answers = models
            .iter()
            .enumerate()
            .map(|(i, m)| answer(m, &stages.files[i], p, &opts[i], ctx[i]))
            .collect::<Result<Vec<_>>>()?;
        let largest = models.last().expect("at least two stages");
        let last = answers.len() - 1;
        for (i, a) in answers.iter_mut().enumerate() {
            a.largest_nll = crate::tradeoff::nll_under(largest, p, &a.generation.tokens)?;
            if i < last {
                a.largest_kl = kl_along(largest, &models[i], p, &a.generation.tokens)?;
            }
        }
        out.push(PromptRun { answers });
    }
    Ok(out)
}

/// `Σ KL(p_large ‖ p_small)` over the positions of `answer` after `prompt`, both models teacher-forced.
fn kl_along(large: &Model, small: &Model, prompt: &[u32], answer: &[u32]) -> Result<f64> {
    if answer.is_empty() {
        return Ok(0.0);
    }
    let all: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let rows: Vec<usize> = (prompt.len() - 1..all.len() - 1).collect();
    let logits = |m: &Model| -> Result<Vec<f32>> {
        let mut state = m.new_state(all.len());
        Ok(
            m.forward(&mut state, &all[..all.len() - 1], crate::model::Logits::Rows(&rows))?
                .to_vec(),
        )
    };
    let (p, q) = (logits(large)?, logits(small)?);
    let vocab = large.config.vocab_size;
    Ok(p.chunks_exact(vocab)
        .zip(q.chunks_exact(vocab))
        .map(|(a, b)| crate::tradeoff::kl(a, b))
        .sum())
}

/// Where the cascade stops for one prompt's answers at threshold `p`: the first stage whose answer is
/// kept, else the last; with each non-final stage's score.
pub fn decide(judge: &Judge, run: &PromptRun, p: f64) -> (usize, Vec<f64>) {
    let last = run.answers.len() - 1;
    let mut scores = Vec::new();
    for (i, a) in run.answers.iter().enumerate().take(last) {
        let s = judge.score(i, &a.features);
        scores.push(s);
        if accepts(s, p) {
            return (i, scores);
        }
    }
    (last, scores)
}
