//! `bushu bench --batch B`: llama-batched-bench's test on the serving engine's batched runner.
//!
//! B sequences, each with its own blocks of the paged KV cache. `pp`: the B prompts of P tokens go
//! through one batched step (S_PP = B·P / time); `tg`: G steps of one token per sequence, attending to
//! the prompt and the tokens before (S_TG = B·G / time). Logits are computed for every sequence's last
//! token, as batched-bench asks for them; the tokens fed are fixed pseudo-random ids, not samples.

use super::tokens;
use crate::engine::model_runner::{ModelRunner, SeqInput};
use crate::model::{Logits, Model};
use anyhow::Result;
use std::time::Instant;

const BLOCK: usize = 16;

/// A runner with room for `batch` sequences of `ctx` positions.
pub fn runner(model: Model, batch: usize, ctx: usize) -> ModelRunner {
    ModelRunner::new(model, BLOCK, batch * ctx.div_ceil(BLOCK))
}

/// Tokens/s over all sequences of `reps` runs (after a warm-up) of the prompt step (`pp`) or of the
/// generation steps that follow it.
pub fn samples(
    r: &mut ModelRunner,
    batch: usize,
    n_prompt: usize,
    n_gen: usize,
    pp: bool,
    reps: usize,
) -> Result<Vec<f64>> {
    let per_seq = r.cache.num_blocks / batch;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| (s * per_seq..(s + 1) * per_seq).map(|b| b as u32).collect())
        .collect();
    let ids = tokens((n_prompt + n_gen) * batch, r.model.config.vocab_size);
    let (prompts, gen) = ids.split_at(n_prompt * batch);
    let mut run = || -> Result<f64> {
        let t = Instant::now();
        if n_prompt > 0 {
            let step: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &prompts[s * n_prompt..(s + 1) * n_prompt],
                    pos0: 0,
                    block_table: &tables[s],
                    logits: Logits::Last,
                    tree: None,
                })
                .collect();
            r.forward(&step)?;
        }
        if pp {
            return Ok((batch * n_prompt) as f64 / t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        for g in 0..n_gen {
            let step: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &gen[g * batch + s..][..1],
                    pos0: n_prompt + g,
                    block_table: &tables[s],
                    logits: Logits::Last,
                    tree: None,
                })
                .collect();
            r.forward(&step)?;
        }
        Ok((batch * n_gen) as f64 / t.elapsed().as_secs_f64())
    };
    run()?; // warm-up
    (0..reps).map(|_| run()).collect()
}
