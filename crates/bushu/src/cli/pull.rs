//! `bushu pull [NAME]` (a known model, or `hf:ORG/REPO[:FILE]`) and `bushu rm NAME` (see [`crate::pull`]).

use crate::pull::{
    find_model, hf, known_models, models_dir, pull as pull_model, remove, Pulled, Removed, DEFAULT_MODEL,
};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct PullArgs {
    /// The model to fetch: a known name (`bushu list`) or a Hugging Face file, hf:ORG/REPO[:FILE]
    /// (without FILE: the repository's only .gguf, or its Q4_K_M one). Default: smollm2-135m.
    #[arg(default_value = DEFAULT_MODEL)]
    pub name: String,
}

#[derive(Args)]
pub struct RmArgs {
    /// The model to remove: a known name, hf:ORG/REPO[:FILE], or a file name shown by `bushu list`.
    pub name: String,
}

pub fn pull(a: PullArgs) -> Result<()> {
    let dir = models_dir();
    if let Some(r) = hf::parse(&a.name) {
        let r = r?;
        let (r, path, already) = hf::pull(&dir, &r)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match already {
            true => println!("{r} is already pulled: {}", path.display()),
            false => println!(
                "pulled {r} ({}): {}",
                crate::pull::progress::human(size),
                path.display()
            ),
        }
        return Ok(());
    }
    let Some(spec) = find_model(&a.name) else {
        let names: Vec<String> = known_models().into_iter().map(|m| m.name).collect();
        bail!(
            "unknown model '{}': bushu can pull {}, or hf:ORG/REPO[:FILE]",
            a.name,
            names.join(", ")
        );
    };
    match pull_model(&spec, &dir, &mut |line| eprintln!("{line}"))? {
        Pulled::AlreadyThere(p) => println!("{} is already pulled and verified: {}", spec.name, p.display()),
        Pulled::Downloaded(p) => {
            println!(
                "pulled {} ({}, SHA-256 verified): {}",
                spec.name,
                crate::pull::progress::human(spec.size),
                p.display()
            )
        }
    }
    Ok(())
}

pub fn rm(a: RmArgs) -> Result<()> {
    let dir = models_dir();
    match remove(&a.name, &dir)? {
        Removed::Paths(paths) => {
            for p in paths {
                println!("removed {}", p.display());
            }
            Ok(())
        }
        Removed::Nothing => bail!("'{}' is not in the model cache {}", a.name, dir.display()),
    }
}
