//! `bushu ps`: what a running `bushu serve` has loaded and how much of its KV cache is in use (ollama's
//! `ps`), from the server's `GET /api/ps`.

use crate::pull::progress::human;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct PsArgs {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The server's API key, if it has one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Print the server's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

pub fn ps(a: PsArgs) -> Result<()> {
    let url = format!("http://{}:{}/api/ps", a.host, a.port);
    let mut req = ureq::get(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(k) = &a.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let v: Value = match req.call() {
        Ok(r) => r.into_json()?,
        Err(ureq::Error::Status(401, _)) => {
            bail!("the server at {}:{} wants an API key: --api-key KEY", a.host, a.port)
        }
        Err(ureq::Error::Status(code, _)) => {
            bail!("{url} answered {code}: is this a bushu server (bushu serve)?")
        }
        Err(_) => bail!("no bushu server at {}:{} (start one with bushu serve)", a.host, a.port),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let models = v["models"].as_array().cloned().unwrap_or_default();
    let width = models
        .iter()
        .filter_map(|m| m["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:>10}  {:>7}  {:>4}  {:>10}  {:>10}  {:>7}  {:>7}",
        "NAME", "SIZE", "CONTEXT", "KV", "KV USED", "KV TOTAL", "RUNNING", "WAITING"
    );
    for m in &models {
        let kv = &m["kv_cache"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        println!(
            "{:width$}  {:>10}  {:>7}  {:>4}  {:>10}  {:>10}  {:>7}  {:>7}",
            m["name"].as_str().unwrap_or("?"),
            human(n(&m["size"])),
            n(&m["context_length"]),
            kv["type"].as_str().unwrap_or("?"),
            human(n(&kv["bytes_used"])),
            human(n(&kv["bytes_total"])),
            n(&m["running"]),
            n(&m["waiting"]),
        );
    }
    Ok(())
}
