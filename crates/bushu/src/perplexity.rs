//! Perplexity and KL divergence, computed exactly as `llama-perplexity` does so the numbers compare.
//!
//! The method (llama.cpp `tools/perplexity/perplexity.cpp`, `perplexity()`):
//! - the text is read whole, one trailing `\n` removed, and tokenized with the file's special tokens
//!   added (BOS when the vocabulary says so) but control tokens in the text not parsed;
//! - it is cut into `n_chunk = len / ctx` chunks of `ctx` tokens (the tail is dropped); at least
//!   `2 * ctx` tokens are required;
//! - each chunk is evaluated from an empty cache with its first token replaced by BOS (when the
//!   vocabulary adds BOS);
//! - the logits at positions `ctx/2 .. ctx-1` predict tokens `ctx/2 + 1 .. ctx`: `ctx - 1 - ctx/2` scored
//!   tokens per chunk (the second half, which always has at least half a window of context);
//! - perplexity is `exp(mean nll)`, its uncertainty `ppl * sqrt(var(nll) / (count - 1))`.
//!
//! With a base model (`--kl-base`) the same positions also give `KL(p_base || p_model)` and whether the
//! two models' most likely tokens agree (llama.cpp's `--kl-divergence`, computed here without its
//! 16-bit compression of the base log-probabilities).

use crate::model::llama::Logits;
use crate::model::Model;
use crate::sampling::InvalidParam;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};

/// How to cut and evaluate the text.
#[derive(Clone, Copy, Debug)]
pub struct PplOptions {
    /// Tokens per chunk (llama-perplexity `-c`).
    pub ctx: usize,
    /// Tokens per forward pass within a chunk (at most `ctx`).
    pub batch: usize,
    /// Evaluate only the first N chunks.
    pub max_chunks: Option<usize>,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            ctx: 512,
            batch: 512,
            max_chunks: None,
        }
    }
}

/// Divergence from a base model over the scored positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KlStats {
    /// Mean `KL(p_base || p_model)` in nats.
    pub kl_mean: f64,
    /// Its standard error.
    pub kl_err: f64,
    /// Largest KL seen at one position.
    pub kl_max: f64,
    /// Fraction of positions where both models' argmax agree.
    pub top1_agreement: f64,
    /// The base model's perplexity on the same positions.
    pub base_perplexity: f64,
}

/// The outcome of an evaluation.
#[derive(Clone, Debug, Default)]
pub struct PplResult {
    pub perplexity: f64,
    /// `ppl * sqrt(var(nll) / (count - 1))`, as llama-perplexity prints after `+/-`.
    pub uncertainty: f64,
    /// Mean negative log-likelihood (nats).
    pub nll_mean: f64,
    /// Scored tokens.
    pub count: usize,
    pub chunks: usize,
    /// Tokens in the whole text (BOS included).
    pub tokens: usize,
    /// Running perplexity after each chunk (llama-perplexity's `[i]ppl` line).
    pub running: Vec<f64>,
    pub kl: Option<KlStats>,
}

/// Tokenizes a text file's contents as llama-perplexity does (trailing newline dropped, BOS added,
/// control tokens in the text treated as text).
pub fn tokenize_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    tok.encode_with(text, true, false)
}

/// `-log p(tok)` from one row of logits, and the row's log-sum-exp and argmax (llama.cpp's
/// `log_softmax`: max-subtracted, `expf` summed in double).
fn row_stats(logits: &[f32], tok: usize) -> (f64, f64, usize) {
    let (mut imax, mut max) = (0usize, logits[0]);
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if v > max {
            max = v;
            imax = i;
        }
    }
    let sum: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = max as f64 + sum.ln();
    (lse - logits[tok] as f64, lse, imax)
}

/// `KL(p || q)` from two logit rows with their log-sum-exps.
fn kl_row(base: &[f32], base_lse: f64, model: &[f32], model_lse: f64) -> f64 {
    base.iter()
        .zip(model)
        .map(|(&b, &m)| {
            let lp = b as f64 - base_lse;
            let lq = m as f64 - model_lse;
            lp.exp() * (lp - lq)
        })
        .sum::<f64>()
        .max(0.0)
}

/// Logits of positions `first..ctx` of one chunk (`(ctx - first) x vocab`), evaluated in passes of
/// `batch` tokens from an empty cache.
fn chunk_logits(model: &Model, chunk: &[u32], first: usize, batch: usize, out: &mut Vec<f32>) -> Result<()> {
    let vocab = model.config.vocab_size;
    let mut state = model.new_state(chunk.len());
    out.clear();
    let mut pos = 0;
    while pos < chunk.len() {
        let end = (pos + batch).min(chunk.len());
        let logits = model.forward(&mut state, &chunk[pos..end], Logits::All)?;
        for p in pos.max(first)..end {
            out.extend_from_slice(&logits[(p - pos) * vocab..(p - pos + 1) * vocab]);
        }
        pos = end;
    }
    Ok(())
}

/// Evaluates `model` on `tokens` (from [`tokenize_text`]); with `base`, also the divergence from it.
/// `bos`: the id that replaces each chunk's first token (`None` when the vocabulary adds no BOS).
/// `progress` is called after each chunk with its index and the running perplexity.
pub fn evaluate(
    model: &Model,
    base: Option<&Model>,
    tokens: &[u32],
    bos: Option<u32>,
    opts: PplOptions,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<PplResult> {
    let ctx = opts.ctx;
    if ctx < 4 {
        return Err(InvalidParam::error("ctx", format!("must be at least 4 (got {ctx})")));
    }
    if opts.batch == 0 {
        return Err(InvalidParam::error("batch", "must be at least 1"));
    }
    if ctx > model.config.max_ctx {
        let max = model.config.max_ctx;
        return Err(InvalidParam::error(
            "ctx",
            format!("({ctx}) exceeds the model's context length {max}"),
        ));
    }
    if tokens.len() < 2 * ctx {
        bail!(
            "the text tokenizes to only {} tokens; perplexity with a context of {ctx} needs at least {}",
            tokens.len(),
            2 * ctx
        );
    }
    let vocab = model.config.vocab_size;
    if let Some(b) = base {
        if b.config.vocab_size != vocab {
            bail!(
                "the base model has a vocabulary of {} tokens, this model {vocab}",
                b.config.vocab_size
            );
        }
    }
    let n_chunk = (tokens.len() / ctx).min(opts.max_chunks.unwrap_or(usize::MAX));
    let first = ctx / 2;
    let batch = opts.batch.min(ctx);

    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let (mut kl, mut kl2, mut kl_max, mut same, mut base_nll) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0.0f64);
    let mut running = Vec::with_capacity(n_chunk);
    let (mut logits, mut base_logits) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u32; ctx];
    for i in 0..n_chunk {
        chunk.copy_from_slice(&tokens[i * ctx..(i + 1) * ctx]);
        if let Some(bos) = bos {
            chunk[0] = bos;
        }
        chunk_logits(model, &chunk, first, batch, &mut logits)?;
        if let Some(b) = base {
            chunk_logits(b, &chunk, first, batch, &mut base_logits)?;
        }
        // Position first + j predicts token first + j + 1; the chunk's last position predicts nothing.
        for j in 0..ctx - 1 - first {
            let target = chunk[first + j + 1] as usize;
            let row = &logits[j * vocab..(j + 1) * vocab];
            let (v, lse, top) = row_stats(row, target);
            nll += v;
            nll2 += v * v;
            if base.is_some() {
                let brow = &base_logits[j * vocab..(j + 1) * vocab];
                let (bv, blse, btop) = row_stats(brow, target);
                let d = kl_row(brow, blse, row, lse);
                kl += d;
                kl2 += d * d;
                kl_max = kl_max.max(d);
                same += (top == btop) as usize;
                base_nll += bv;
            }
        }
        count += ctx - 1 - first;
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        progress(i, n_chunk, ppl);
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let uncertainty = if var > 0.0 {
        ppl * (var / (count as f64 - 1.0)).sqrt()
    } else {
        0.0
    };
    let kl = base.map(|_| {
        let n = count as f64;
        let m = kl / n;
        KlStats {
            kl_mean: m,
            kl_err: ((kl2 / n - m * m).max(0.0) / (n - 1.0)).sqrt(),
            kl_max,
            top1_agreement: same as f64 / n,
            base_perplexity: (base_nll / n).exp(),
        }
    });
    Ok(PplResult {
        perplexity: ppl,
        uncertainty,
        nll_mean: mean,
        count,
        chunks: n_chunk,
        tokens: tokens.len(),
        running,
        kl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_stats_matches_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let (nll, lse, top) = row_stats(&l, 0);
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lse - z.ln()).abs() < 1e-6);
        assert!((nll - (z.ln() - 1.0)).abs() < 1e-6);
        assert_eq!(top, 2);
    }

    #[test]
    fn kl_of_identical_rows_is_zero() {
        let l = [0.5f32, -1.0, 2.0, 0.0];
        let (_, lse, _) = row_stats(&l, 0);
        assert!(kl_row(&l, lse, &l, lse).abs() < 1e-12);
        let m = [0.0f32, 0.0, 0.0, 0.0];
        let (_, mlse, _) = row_stats(&m, 0);
        assert!(kl_row(&l, lse, &m, mlse) > 0.0);
    }
}
