//! `bushu distill`, `bushu train-medusa`, `bushu train-routers` and `bushu train-exit-adapters`: training lives in its own crate and executable (`bushu-train`, crates/train: candle
//! for autograd, apart from the inference crates), which this subcommand runs with the same arguments —
//! the `bushu-train` built next to this `bushu` first, else one on the PATH — and whose exit status it
//! returns.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args)]
pub struct TrainArgs {
    /// Arguments of `bushu-train SUBCOMMAND` (`--help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The `bushu-train` program: beside the running executable, else on the PATH.
fn program() -> PathBuf {
    let name = format!("bushu-train{}", std::env::consts::EXE_SUFFIX);
    match std::env::current_exe() {
        Ok(exe) => match exe.parent().map(|d| d.join(&name)) {
            Some(p) if p.is_file() => p,
            _ => PathBuf::from(name),
        },
        Err(_) => PathBuf::from(name),
    }
}

/// Runs `bushu-train sub args...`; a failure exits with its status (it printed its own error line).
pub fn forward(sub: &str, a: TrainArgs) -> Result<()> {
    let prog = program();
    let status = Command::new(&prog).arg(sub).args(&a.args).status().with_context(|| {
        format!(
            "cannot run {} (bushu {sub} needs the training program: `cargo build --release -p bushu-train`)",
            prog.display()
        )
    })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => std::process::exit(c),
        None => bail!("bushu-train {sub} was killed by a signal"),
    }
}
