//! `bushu list`: the models in the cache and the known ones not pulled yet, with sizes and where each comes
//! from.

use crate::pull::{list as list_cache, models_dir, progress::human};
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ListArgs {}

pub fn list(_a: ListArgs) -> Result<()> {
    let dir = models_dir();
    println!("model cache: {}", dir.display());
    let rows = list_cache(&dir)?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let swidth = rows.iter().map(|r| r.source.len()).max().unwrap_or(6).max(6);
    println!("{:width$}  {:>10}  {:swidth$}  STATUS", "NAME", "SIZE", "SOURCE");
    for r in rows {
        // The size on disk, else the size a pull fetches.
        let size = match (r.size, r.full_size) {
            (0, Some(n)) => format!("({})", human(n)),
            (0, None) => "-".into(),
            (n, _) => human(n),
        };
        println!("{:width$}  {:>10}  {:swidth$}  {}", r.name, size, r.source, r.status);
    }
    Ok(())
}
