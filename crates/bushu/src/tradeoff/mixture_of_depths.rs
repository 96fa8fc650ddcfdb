//! `bushu tradeoff --method mod --mod-routers R.gguf`: the knob is the capacity `C` of mixture of depths
//! ([`crate::model::mixture_of_depths`]), the fraction of tokens that run each layer, with one routers
//! file (trained at one capacity; the thresholds of the others come from its stored score quantiles).
//! The report adds, per point, the fraction of tokens that ran each layer on the teacher-forced windows.

use super::{argmax, Compute, Heldout, Method};
use crate::model::early_exit::StepCost;
use crate::model::llama::{Logits, State};
use crate::model::mixture_of_depths::{check_capacity, step_macs, Routers, Routing};
use crate::model::Model;
use anyhow::Result;
use std::time::Instant;

pub struct ModMethod {
    /// The model the routing is set on (its own copy: the runner's full model stays plain).
    model: Model,
    routers: Routers,
    full: f64,
    /// Per point measured: the capacity, per layer the teacher-forced tokens that ran it, and the tokens.
    per_layer: Vec<(f64, Vec<usize>, usize)>,
}

impl ModMethod {
    /// Mixture of depths on `model` (a copy of the measured model) with `routers` (loaded for it).
    pub fn new(model: Model, routers: Routers) -> Result<ModMethod> {
        Routing::new(routers.clone(), 1.0, &model.config)?;
        let full = StepCost::of(&model.config).full();
        Ok(ModMethod {
            model,
            routers,
            full,
            per_layer: Vec::new(),
        })
    }

    fn set(&mut self, v: f64) -> Result<()> {
        self.model.routing = Some(Routing::new(self.routers.clone(), v, &self.model.config)?);
        Ok(())
    }

    /// One token through the routed model: its logits; counts its layers and multiply-adds in `c`.
    fn step<'s>(&self, state: &'s mut State, token: u32, c: &mut Compute) -> Result<&'s [f32]> {
        let (before, _) = state.layer_pairs();
        self.model.forward(state, &[token], Logits::Last)?;
        let run = state.layer_pairs().0 - before;
        let routed = self.model.routing.as_ref().is_some_and(|r| r.capacity < 1.0);
        c.tokens += 1;
        c.layers += run as f64;
        c.macs += step_macs(&self.model.config, run, routed);
        c.full_macs += self.full;
        Ok(state.last_logits(self.model.config.vocab_size))
    }
}

impl Method for ModMethod {
    fn name(&self) -> &'static str {
        "mod"
    }

    fn knob(&self) -> &'static str {
        "capacity C"
    }

    fn default_points(&self) -> Vec<f64> {
        vec![1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]
    }

    fn check_point(&self, v: f64) -> Result<()> {
        check_capacity(v)
    }

    fn skips_layers(&self) -> bool {
        true
    }

    fn score(&mut self, v: f64, tokens: &[u32], from: usize, row: &mut dyn FnMut(usize, &[f32])) -> Result<Compute> {
        self.set(v)?;
        let mut state = self.model.new_state(tokens.len());
        self.model.forward(&mut state, &tokens[..from], Logits::None)?;
        let prompt_runs = state.runs_by_layer().to_vec();
        let mut c = Compute::default();
        let t0 = Instant::now();
        for (i, &t) in tokens.iter().enumerate().take(tokens.len() - 1).skip(from) {
            let logits = self.step(&mut state, t, &mut c)?;
            row(i, logits);
        }
        c.seconds = t0.elapsed().as_secs_f64();
        // Per layer, the tokens that ran it (the prompt's pass taken out).
        let entry = match self.per_layer.iter().position(|(cap, _, _)| *cap == v) {
            Some(i) => &mut self.per_layer[i],
            None => {
                self.per_layer.push((v, vec![0; state.runs_by_layer().len()], 0));
                self.per_layer.last_mut().expect("pushed")
            }
        };
        for ((a, now), then) in entry.1.iter_mut().zip(state.runs_by_layer()).zip(&prompt_runs) {
            *a += now - then;
        }
        entry.2 += c.tokens;
        Ok(c)
    }

    fn generate(&mut self, v: f64, prompt: &[u32], n: usize) -> Result<(Vec<u32>, Compute)> {
        self.set(v)?;
        let mut state = self.model.new_state(prompt.len() + n);
        let mut t = argmax(self.model.forward(&mut state, prompt, Logits::Last)?) as u32;
        let mut out = vec![t];
        let mut c = Compute::default();
        let t0 = Instant::now();
        while out.len() < n {
            t = argmax(self.step(&mut state, t, &mut c)?) as u32;
            out.push(t);
        }
        c.seconds = t0.elapsed().as_secs_f64();
        Ok((out, c))
    }

    fn notes(&mut self, _held: &Heldout) -> Result<String> {
        let n_layers = self.model.config.n_layers;
        let mut s = format!(
            "Routers trained at capacity {}. Fraction of the teacher-forced tokens that ran each layer (layer 0 first):\n\n| capacity C |",
            self.routers.trained_capacity
        );
        for l in 0..n_layers {
            s += &format!(" {l} |");
        }
        s += "\n|---|";
        s += &"---|".repeat(n_layers);
        s += "\n";
        for (cap, runs, tokens) in &self.per_layer {
            s += &format!("| {cap} |");
            for r in runs {
                s += &format!(" {:.2} |", *r as f64 / (*tokens).max(1) as f64);
            }
            s += "\n";
        }
        Ok(s)
    }
}
