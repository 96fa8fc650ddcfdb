//! The adaptive-computation flags of `run` and `chat`: early exit by entropy (`--early-exit-entropy H
//! [--exit-layers l1,l2,...] [--exit-adapters A.gguf]`) and mixture of depths (`--mod-routers R.gguf [--mod-capacity C]`), both
//! lossy (docs/ADAPTIVE.md), checked before the model is loaded as far as they can be, then against it.

use crate::model::early_exit::{parse_layers, EarlyExit};
use crate::model::exit_adapters::ExitAdapters;
use crate::model::mixture_of_depths::{check_capacity, Routers, Routing};
use crate::model::{Model, ModelFile};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Clone, Debug, Default)]
pub struct AdaptiveArgs {
    /// Early exit (lossy): after each exit layer the final norm and classifier give a distribution; when
    /// its entropy is below H nats the token is emitted without the remaining layers. 0: never exit.
    #[arg(long, value_name = "H", allow_negative_numbers = true)]
    pub early_exit_entropy: Option<f32>,
    /// With --early-exit-entropy: the exit points, as numbers of layers run (each 1 .. layers-1;
    /// default: a quarter, half and three quarters of the layers).
    #[arg(long, value_name = "L1,L2,...", allow_hyphen_values = true)]
    pub exit_layers: Option<String>,
    /// With --early-exit-entropy: trained exit adapters (tuned lens; the file `bushu train-exit-adapters`
    /// writes for this model) through which each exit reads the residual stream; the exit points default
    /// to the file's.
    #[arg(long, value_name = "A.gguf")]
    pub exit_adapters: Option<PathBuf>,
    /// Mixture of depths (lossy): per-layer routers (the file `bushu train-routers` writes for this model);
    /// a token whose router score is below a layer's threshold skips that layer.
    #[arg(long, value_name = "R.gguf")]
    pub mod_routers: Option<PathBuf>,
    /// With --mod-routers: the fraction of tokens that run each layer, in (0, 1] (1: every layer, plain
    /// decoding; default: the capacity the routers were trained for).
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    pub mod_capacity: Option<f64>,
}

impl AdaptiveArgs {
    /// Whether early exit is asked for.
    pub fn enabled(&self) -> bool {
        self.early_exit_entropy.is_some()
    }

    /// The checks that need no model; `other`: a decoding method on the same command line that early
    /// exit cannot be combined with (its flag), if any.
    pub fn check(&self, other: Option<&str>) -> Result<()> {
        match (&self.mod_routers, self.mod_capacity) {
            (None, Some(_)) => {
                bail!("--mod-capacity sets the capacity of --mod-routers: give --mod-routers R.gguf too")
            }
            (_, Some(c)) => check_capacity(c)?,
            _ => {}
        }
        if self.mod_routers.is_some() {
            if self.early_exit_entropy.is_some() {
                bail!("--mod-routers (mixture of depths) and --early-exit-entropy (early exit) cannot be combined: choose one way of skipping layers");
            }
            if let Some(other) = other {
                bail!("--mod-routers (mixture of depths) and {other} cannot be combined: mixture of depths samples or decodes greedily, one model, one token per step");
            }
        }
        match self.early_exit_entropy {
            None if self.exit_layers.is_some() => {
                bail!("--exit-layers chooses where --early-exit-entropy exits: give --early-exit-entropy H too")
            }
            None if self.exit_adapters.is_some() => {
                bail!("--exit-adapters are read by --early-exit-entropy's exits: give --early-exit-entropy H too")
            }
            None => return Ok(()),
            Some(h) => EarlyExit::check_threshold(h)?,
        }
        if let Some(l) = &self.exit_layers {
            parse_layers(l)?;
        }
        if let Some(other) = other {
            bail!("--early-exit-entropy (early exit) and {other} cannot be combined: early exit samples or decodes greedily, one model, one token per step");
        }
        Ok(())
    }

    /// The rule for `model` (opened from `file`), `None` without `--early-exit-entropy`; reads
    /// `--exit-adapters` (checked to be this model's).
    pub fn early_exit(&self, file: &ModelFile, model: &Model) -> Result<Option<EarlyExit>> {
        let Some(h) = self.early_exit_entropy else {
            return Ok(None);
        };
        let layers = self.exit_layers.as_deref().map(parse_layers).transpose()?;
        let adapters = self
            .exit_adapters
            .as_deref()
            .map(|p| ExitAdapters::load(p, file, model).map(Arc::new))
            .transpose()?;
        EarlyExit::with_adapters(h, layers.as_deref(), model.config.n_layers, adapters).map(Some)
    }

    /// The mixture-of-depths routing for `model` (opened from `file`), `None` without `--mod-routers`.
    pub fn routing(&self, file: &ModelFile, model: &Model) -> Result<Option<Routing>> {
        let Some(path) = &self.mod_routers else {
            return Ok(None);
        };
        let routers = Routers::load(path, file, model)?;
        let c = self.mod_capacity.unwrap_or(routers.trained_capacity as f64);
        Routing::new(routers, c, &model.config).map(Some)
    }
}
