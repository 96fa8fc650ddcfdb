//! `bushu quantize IN OUT --type TYPE`: writes a quantized GGUF.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Input model: GGUF file or Hugging Face directory.
    pub input: PathBuf,
    /// Output GGUF file.
    pub output: PathBuf,
    /// Target type: q8_0, q4_0, q4_k, q6_k, int8-sym-channel, int4-asym-g128, gptq-int4-g128, ...
    #[arg(long = "type", short = 'T')]
    pub ty: String,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    bail!("quantization to {} is not implemented yet", a.ty)
}
