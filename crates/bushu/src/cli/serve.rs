//! `bushu serve`: the OpenAI-compatible HTTP server.

use super::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn serve(_a: ServeArgs) -> Result<()> {
    bail!("bushu serve is not built yet")
}
