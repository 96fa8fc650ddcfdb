//! `bushu bench --verify 1,2,4,8,16 [--depth D]`: what verifying `k` drafted tokens costs against one
//! token — the number speculative decoding lives on. Each test is one forward pass over `k` tokens
//! after `D` cached positions, with logits for every row (as a verification pass needs them), repeated
//! `-r` times after a warm-up; the report gives the time per pass and `t(k) / t(1)`.

use super::mean_std;
use crate::model::llama::{Logits, State};
use crate::model::Model;
use anyhow::{bail, Result};
use std::time::Instant;

/// Milliseconds per pass (mean, standard deviation) for each `k`, after `depth` cached positions of
/// `prompt`.
pub fn verify_costs(
    model: &Model,
    prompt: &[u32],
    depth: usize,
    ks: &[usize],
    reps: usize,
) -> Result<Vec<(usize, f64, f64)>> {
    let kmax = ks.iter().copied().max().unwrap_or(1);
    if ks.contains(&0) {
        bail!("--verify sizes must be at least 1");
    }
    if depth + kmax > model.config.max_ctx || depth + kmax > prompt.len() {
        bail!(
            "--depth {depth} + {kmax} tokens exceeds the model's context of {}",
            model.config.max_ctx
        );
    }
    let mut st: State = model.new_state(depth + kmax);
    model.forward(&mut st, &prompt[..depth.max(1)], Logits::None)?;
    let base = st.pos();
    let mut out = Vec::new();
    for &k in ks {
        let tokens = &prompt[base..base + k];
        let mut run = || -> Result<f64> {
            st.rewind(base);
            let t = Instant::now();
            model.forward(&mut st, tokens, Logits::All)?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        run()?;
        let ms = (0..reps).map(|_| run()).collect::<Result<Vec<_>>>()?;
        let (mean, std) = mean_std(&ms);
        out.push((k, mean, std));
    }
    Ok(out)
}
