//! The three losses of distillation and their mix.
//!
//! - Hard labels: cross-entropy of the student's next-token distribution against the text's next token.
//! - Response-based KD (Hinton et al. 2015): KL(p_T^τ ‖ p_S^τ) · τ², the teacher's and the student's
//!   distributions at temperature τ; τ² keeps the gradients' scale independent of τ. The teacher's
//!   distribution is known only on its top-k tokens (that is what the cache keeps): p_T^τ is the
//!   softmax of the teacher's top-k logits / τ, renormalized over those k tokens (the tail is dropped,
//!   not spread); the student's log-probabilities are those of its full-vocabulary softmax at τ, read
//!   at the k tokens. So the loss is Σ_{i∈topk} p_i (log p_i − log q_i) · τ², which is 0 only when the
//!   student puts all its mass on the k tokens in the teacher's proportions, and which equals the full
//!   KL when k is the vocabulary size.
//! - Feature-based KD (FitNets, Romero et al. 2015): the lecture's L_F(Φ(f_t(x)), Φ(f_s(x))) with Φ a
//!   learned linear map from the student's width to the teacher's applied to the student's residual
//!   stream after a chosen layer, and L_F the mean squared error to the teacher's residual stream after
//!   its matching layer, divided by the teacher's mean square there (a scale-free number: 1 is what
//!   Φ = 0 scores, whatever the teacher's activation scale).
//!
//! Mixed: (1 − α)·CE + α·(KD + β·feature), α = `--alpha`, β = `--feature-weight`.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

/// Mean cross-entropy of `logits` `[n, vocab]` against `targets` `[n]` (u32).
pub fn hard_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, targets)?)
}

/// Mean over rows of τ²·Σ_k p_k (log p_k − log q_k): `logits` `[n, vocab]` the student's,
/// `top_idx` `[n, k]` (u32) and `top_val` `[n, k]` (f32) the teacher's top-k token ids and logits.
pub fn kd_topk(logits: &Tensor, top_idx: &Tensor, top_val: &Tensor, tau: f64) -> Result<Tensor> {
    if tau <= 0.0 {
        bail!("KD temperature must be positive, got {tau}");
    }
    let n = logits.dim(0)? as f64;
    let log_q = candle_nn::ops::log_softmax(&(logits / tau)?, D::Minus1)?.gather(top_idx, D::Minus1)?;
    let log_p = candle_nn::ops::log_softmax(&(top_val / tau)?, D::Minus1)?.detach();
    let p = log_p.exp()?;
    let kl = (p * (log_p - log_q)?)?.sum_all()?;
    Ok((kl * (tau * tau / n))?)
}

/// Mean squared error of `student` (after Φ) against `teacher`, over the teacher's mean square.
pub fn feature_mse(projected: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let teacher = teacher.detach();
    let scale = teacher.sqr()?.mean_all()?.to_scalar::<f32>()?.max(1e-12) as f64;
    Ok(((projected - &teacher)?.sqr()?.mean_all()? / scale)?)
}

/// The same KD loss on plain numbers, one row, in f64: the reference the tests hold [`kd_topk`] to.
pub fn kd_topk_reference(student_logits: &[f32], top: &[(u32, f32)], tau: f64) -> f64 {
    let m = student_logits
        .iter()
        .map(|&x| x as f64 / tau)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = student_logits.iter().map(|&x| (x as f64 / tau - m).exp()).sum();
    let log_q = |i: u32| student_logits[i as usize] as f64 / tau - m - z.ln();
    let mt = top
        .iter()
        .map(|&(_, v)| v as f64 / tau)
        .fold(f64::NEG_INFINITY, f64::max);
    let zt: f64 = top.iter().map(|&(_, v)| (v as f64 / tau - mt).exp()).sum();
    top.iter()
        .map(|&(i, v)| {
            let log_p = v as f64 / tau - mt - zt.ln();
            log_p.exp() * (log_p - log_q(i))
        })
        .sum::<f64>()
        * tau
        * tau
}
