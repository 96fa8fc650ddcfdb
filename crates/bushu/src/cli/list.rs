//! `bushu list`: the models in the cache and the known ones not pulled yet.

use crate::pull::{list as list_cache, models_dir};
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ListArgs {}

pub fn list(_a: ListArgs) -> Result<()> {
    let dir = models_dir();
    println!("model cache: {}", dir.display());
    let rows = list_cache(&dir)?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:>9}  {:<}", "NAME", "SIZE", "STATUS");
    for r in rows {
        let size = if r.size > 0 {
            format!("{:.1} MB", r.size as f64 / 1e6)
        } else {
            "-".into()
        };
        println!("{:width$}  {:>9}  {}", r.name, size, r.status);
    }
    Ok(())
}
