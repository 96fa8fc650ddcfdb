//! `bushu tradeoff --method early-exit`: the knob is the entropy threshold H (nats) of
//! [`crate::model::early_exit`], at the exit layers given (`--exit-layers`) or the default ones. The
//! report adds the per-layer profile of the shared-head exit at every layer: the mean entropy of its
//! distribution, its top-1 agreement with the last layer's and its KL from it, teacher-forced on the
//! held-out windows — and with trained exit adapters (`--exit-adapters`, [`crate::model::exit_adapters`])
//! the same three numbers through each adapter beside the shared head's, and the curve exits through them.

use super::{argmax, kl, Compute, Heldout, Method};
use crate::generate::early_exit::ExitStats;
use crate::model::early_exit::{entropy, EarlyExit, StepCost};
use crate::model::exit_adapters::ExitAdapters;
use crate::model::llama::{Logits, State};
use crate::model::{Model, Pass};
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;

pub struct EarlyExitMethod<'m> {
    model: &'m Model,
    /// The exit layers (`None`: the default ones).
    layers: Option<Vec<usize>>,
    adapters: Option<Arc<ExitAdapters>>,
    cost: StepCost,
}

impl<'m> EarlyExitMethod<'m> {
    /// Early exit in `model` at `layers` (checked against the model; `None`: the default exit layers,
    /// or the adapters' when given), through trained `adapters` when given.
    pub fn new(
        model: &'m Model,
        layers: Option<Vec<usize>>,
        adapters: Option<Arc<ExitAdapters>>,
    ) -> Result<EarlyExitMethod<'m>> {
        EarlyExit::with_adapters(0.0, layers.as_deref(), model.config.n_layers, adapters.clone())?;
        Ok(EarlyExitMethod {
            model,
            layers,
            adapters,
            cost: StepCost::of(&model.config),
        })
    }

    fn rule(&self, v: f64) -> Result<EarlyExit> {
        EarlyExit::with_adapters(
            v as f32,
            self.layers.as_deref(),
            self.model.config.n_layers,
            self.adapters.clone(),
        )
    }

    /// One early-exit step of `token`, counted in `stats`.
    fn step<'s>(&self, state: &'s mut State, rule: &EarlyExit, token: u32, stats: &mut ExitStats) -> Result<&'s [f32]> {
        self.model
            .forward_pass(state, Pass::causal(&[token], Logits::Last).exit_by_entropy(rule.rule()))?;
        stats.record(state.layers_run(), rule, &self.cost);
        // The pass's logits, borrowed again now that the layer count is read.
        Ok(state.last_logits(self.model.config.vocab_size))
    }

    fn compute(stats: &ExitStats, seconds: f64) -> Compute {
        Compute {
            tokens: stats.steps,
            macs: stats.macs,
            full_macs: stats.full_macs,
            layers: stats.layers as f64,
            seconds,
        }
    }
}

impl Method for EarlyExitMethod<'_> {
    fn name(&self) -> &'static str {
        "early-exit"
    }

    fn knob(&self) -> &'static str {
        "entropy threshold H (nats)"
    }

    fn default_points(&self) -> Vec<f64> {
        vec![0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0]
    }

    fn check_point(&self, v: f64) -> Result<()> {
        if !v.is_finite() || v < 0.0 {
            anyhow::bail!("--points: an entropy threshold is a finite number of nats >= 0, got {v}");
        }
        self.rule(v).map(|_| ())
    }

    fn skips_layers(&self) -> bool {
        true
    }

    fn score(&mut self, v: f64, tokens: &[u32], from: usize, row: &mut dyn FnMut(usize, &[f32])) -> Result<Compute> {
        let rule = self.rule(v)?;
        let mut state = self.model.new_state(tokens.len());
        self.model.forward(&mut state, &tokens[..from], Logits::None)?;
        let mut stats = ExitStats::default();
        let t0 = Instant::now();
        for (i, &t) in tokens.iter().enumerate().take(tokens.len() - 1).skip(from) {
            let logits = self.step(&mut state, &rule, t, &mut stats)?;
            row(i, logits);
        }
        Ok(Self::compute(&stats, t0.elapsed().as_secs_f64()))
    }

    fn generate(&mut self, v: f64, prompt: &[u32], n: usize) -> Result<(Vec<u32>, Compute)> {
        let rule = self.rule(v)?;
        let mut state = self.model.new_state(prompt.len() + n);
        let mut t = argmax(self.model.forward(&mut state, prompt, Logits::Last)?) as u32;
        let mut out = vec![t];
        let mut stats = ExitStats::default();
        let t0 = Instant::now();
        while out.len() < n {
            t = argmax(self.step(&mut state, &rule, t, &mut stats)?) as u32;
            out.push(t);
        }
        Ok((out, Self::compute(&stats, t0.elapsed().as_secs_f64())))
    }

    fn notes(&mut self, held: &Heldout) -> Result<String> {
        let profile = layer_profile(self.model, held, self.adapters.as_deref())?;
        let mut s = String::from(
            "Shared-head exit at every layer (teacher-forced on the held-out windows): the final norm and \
             classifier applied to the residual stream after each layer.\n\n",
        );
        match self.adapters {
            None => {
                s += "| layers run | mean entropy (nats) | top-1 agreement with the last layer | KL(last ‖ exit) (nats) |\n\
                      |---|---|---|---|\n";
                for r in &profile {
                    s += &format!("| {} | {:.3} | {:.3} | {:.3} |\n", r.layers, r.entropy, r.top1, r.kl);
                }
            }
            Some(_) => {
                s += "With the trained exit adapters (tuned lens) where the file has one:\n\n\
                      | layers run | mean entropy (nats) | top-1 agreement with the last layer | KL(last ‖ exit) (nats) | adapter: mean entropy | adapter: top-1 agreement | adapter: KL(last ‖ exit) |\n\
                      |---|---|---|---|---|---|---|\n";
                for r in &profile {
                    let a = match r.adapted {
                        Some((e, t, k)) => format!("{e:.3} | {t:.3} | {k:.3}"),
                        None => "- | - | -".into(),
                    };
                    s += &format!(
                        "| {} | {:.3} | {:.3} | {:.3} | {a} |\n",
                        r.layers, r.entropy, r.top1, r.kl
                    );
                }
            }
        }
        Ok(s)
    }
}

/// The shared-head exit after one layer, averaged over positions.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerExit {
    /// Layers run before the exit (1..=n_layers; n_layers is the model's own output).
    pub layers: usize,
    pub entropy: f64,
    /// Fraction of positions whose argmax equals the last layer's.
    pub top1: f64,
    /// Mean `KL(p_last || p_exit)`.
    pub kl: f64,
    /// Through the trained adapter of this exit point, if there is one: entropy, top-1, KL as above.
    pub adapted: Option<(f64, f64, f64)>,
}

/// The shared-head exit after every layer on `held`'s windows (teacher-forced, full-depth passes), and
/// through `adapters` at the exit points they have.
pub fn layer_profile(model: &Model, held: &Heldout, adapters: Option<&ExitAdapters>) -> Result<Vec<LayerExit>> {
    let n_layers = model.config.n_layers;
    let vocab = model.config.vocab_size;
    let all: Vec<usize> = (0..n_layers).collect();
    let mut sums = vec![(0.0f64, 0usize, 0.0f64); n_layers];
    let mut lensed = vec![(0.0f64, 0usize, 0.0f64); n_layers];
    let mut count = 0usize;
    for (w, full) in held.windows.iter().zip(&held.full_rows) {
        let rows: Vec<usize> = (w.from..w.tokens.len() - 1).collect();
        let mut state = model.new_state(w.tokens.len());
        model.forward_pass(
            &mut state,
            Pass::causal(&w.tokens[..w.tokens.len() - 1], Logits::Rows(&rows)).keep_hidden(&all),
        )?;
        let add = |sum: &mut (f64, usize, f64), logits: &[f32]| {
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                let last = &full[j * vocab..(j + 1) * vocab];
                sum.0 += entropy(row);
                sum.1 += usize::from(argmax(row) == argmax(last));
                sum.2 += kl(last, row);
            }
        };
        for l in 0..n_layers {
            let hidden = state.hidden_at(l).expect("kept");
            add(&mut sums[l], &model.exit_logits(hidden, None)?);
            if let Some(lens) = adapters.and_then(|a| a.at(l + 1)) {
                add(&mut lensed[l], &model.exit_logits(hidden, Some(lens))?);
            }
        }
        count += rows.len();
    }
    let n = count.max(1) as f64;
    Ok(sums
        .iter()
        .enumerate()
        .map(|(l, &(e, t, k))| LayerExit {
            layers: l + 1,
            entropy: e / n,
            top1: t as f64 / n,
            kl: k / n,
            adapted: adapters.and_then(|a| a.at(l + 1)).map(|_| {
                let (e, t, k) = lensed[l];
                (e / n, t as f64 / n, k / n)
            }),
        })
        .collect())
}
