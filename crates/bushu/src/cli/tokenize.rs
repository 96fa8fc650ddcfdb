//! `bushu tokenize` and `bushu detokenize`. Both read only the model's tokenizer
//! ([`crate::model::loader::load_tokenizer`]), as `llama-tokenize` does: a vocabulary-only GGUF file or a model
//! family bushu cannot run is fine.

use super::ModelArgs;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use clap::Args;

/// The tokenizer of `--model` (a path or a cache name), without the weights.
fn open_tokenizer(m: &ModelArgs) -> Result<Tokenizer> {
    let path = crate::pull::resolve(m.model.as_deref())?;
    crate::model::loader::load_tokenizer(&path)
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Do not add the BOS token.
    #[arg(long)]
    pub no_bos: bool,
    /// Print a JSON object with ids and pieces.
    #[arg(long)]
    pub json: bool,
    /// The text to tokenize.
    pub text: String,
}

#[derive(Args)]
pub struct DetokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids.
    #[arg(required = true, num_args = 1..)]
    pub ids: Vec<String>,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = &open_tokenizer(&a.model)?;
    let ids = tok.encode(&a.text, !a.no_bos)?;
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| String::from_utf8_lossy(tok.token_to_piece(i)).into_owned())
            .collect();
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        let s: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", s.join(" "));
    }
    Ok(())
}

pub fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = &open_tokenizer(&a.model)?;
    let ids = a
        .ids
        .iter()
        .flat_map(|s| s.split([',', ' ']).filter(|p| !p.is_empty()))
        .map(|p| {
            let id: u32 = p
                .trim_matches(['[', ']'])
                .parse()
                .with_context(|| format!("'{p}' is not a token id"))?;
            if id as usize >= tok.vocab_size() {
                anyhow::bail!("token id {id} is outside the vocabulary of {} tokens", tok.vocab_size());
            }
            Ok(id)
        })
        .collect::<Result<Vec<u32>>>()?;
    println!("{}", tok.decode(&ids));
    Ok(())
}
