//! `bushu info`: what a model file holds.

use super::ModelArgs;
use anyhow::Result;
use clap::Args;
use std::collections::BTreeMap;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let (file, _) = a.model.open()?;
    let c = &file.config;
    let params: usize = file.tensors.values().map(|t| t.numel()).sum();
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in file.tensors.values() {
        *types.entry(t.dtype.name().to_owned()).or_default() += 1;
    }
    let tied = !file.tensors.contains_key("output.weight");
    let info = serde_json::json!({
        "format": file.format,
        "name": file.name,
        "architecture": c.arch,
        "parameters": params,
        "file_bytes": file.file_bytes,
        "embedding_length": c.dim,
        "layers": c.n_layers,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "feed_forward_length": c.ffn_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_ctx,
        "rms_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "rope_dim": c.rope_dim,
        "rope_scaling": format!("{:?}", c.rope_scaling),
        "rope_style": format!("{:?}", c.rope_style),
        "tied_embeddings": tied,
        "tensor_types": types,
        "tensors": file.tensors.len(),
        "bos_id": file.tokenizer.bos_id(),
        "eos_ids": file.eos_ids,
        "chat_template": file.chat_template.is_some(),
    });
    if a.json {
        println!("{info}");
        return Ok(());
    }
    for (k, v) in info.as_object().unwrap() {
        println!("{k:>20}: {}", v.to_string().trim_matches('"'));
    }
    if let Some(t) = &file.chat_template {
        let first: String = t.chars().take(120).collect();
        println!("{:>20}: {:?}…", "template", first);
    }
    Ok(())
}
