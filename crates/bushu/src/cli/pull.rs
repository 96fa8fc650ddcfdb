//! `bushu pull [NAME]`: fetch a known model into the cache (see [`crate::pull`]).

use crate::pull::{find_model, known_models, models_dir, pull as pull_model, Pulled, DEFAULT_MODEL};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct PullArgs {
    /// The model to fetch (default: smollm2-135m).
    #[arg(default_value = DEFAULT_MODEL)]
    pub name: String,
}

pub fn pull(a: PullArgs) -> Result<()> {
    let Some(spec) = find_model(&a.name) else {
        let names: Vec<String> = known_models().into_iter().map(|m| m.name).collect();
        bail!("unknown model '{}': bushu can pull {}", a.name, names.join(", "));
    };
    let dir = models_dir();
    match pull_model(&spec, &dir, &mut |line| eprintln!("{line}"))? {
        Pulled::AlreadyThere(p) => println!("{} is already pulled and verified: {}", spec.name, p.display()),
        Pulled::Downloaded(p) => {
            println!(
                "pulled {} ({:.1} MB, SHA-256 verified): {}",
                spec.name,
                spec.size as f64 / 1e6,
                p.display()
            )
        }
    }
    Ok(())
}
