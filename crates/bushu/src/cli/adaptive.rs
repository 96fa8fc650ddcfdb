//! The adaptive-computation flags of `run` and `chat`: early exit by entropy (`--early-exit-entropy H
//! [--exit-layers l1,l2,...]`, lossy; docs/ADAPTIVE.md), checked before the model is loaded as far as
//! they can be, then against its layer count.

use crate::model::early_exit::{parse_layers, EarlyExit};
use anyhow::{bail, Result};
use clap::Args;

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
}

impl AdaptiveArgs {
    /// Whether early exit is asked for.
    pub fn enabled(&self) -> bool {
        self.early_exit_entropy.is_some()
    }

    /// The checks that need no model; `other`: a decoding method on the same command line that early
    /// exit cannot be combined with (its flag), if any.
    pub fn check(&self, other: Option<&str>) -> Result<()> {
        match self.early_exit_entropy {
            None if self.exit_layers.is_some() => {
                bail!("--exit-layers chooses where --early-exit-entropy exits: give --early-exit-entropy H too")
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

    /// The rule for a model of `n_layers` (`None` without `--early-exit-entropy`).
    pub fn early_exit(&self, n_layers: usize) -> Result<Option<EarlyExit>> {
        let Some(h) = self.early_exit_entropy else {
            return Ok(None);
        };
        let layers = self.exit_layers.as_deref().map(parse_layers).transpose()?;
        EarlyExit::new(h, layers.as_deref(), n_layers).map(Some)
    }
}
