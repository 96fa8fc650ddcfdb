//! The three losses of distillation and their mix.
//!
//! - Hard labels: cross-entropy of the student's next-token distribution against the text's next token.
//! - Response-based KD (Hinton et al. 2015): τ²·KL(p_T^τ ‖ p_S^τ), the teacher's and the student's
//!   distributions at temperature τ; τ² keeps the gradients' scale independent of τ. The teacher is
//!   known on its top-k tokens (the cache keeps their logits) and through the log-partition of its
//!   full distribution at τ, so its mass outside the top-k, p_rest = 1 − Σ_topk p_i, is known too. The
//!   loss is the KL divergence between the two distributions coarsened to k + 1 outcomes — the k
//!   tokens and "any other token": τ²·[Σ_topk p_i (log p_i − log q_i) + p_rest (log p_rest − log q_rest)],
//!   q from the student's full-vocabulary softmax at τ. It is 0 when the student matches the teacher on
//!   the k tokens and on the tail's total mass, never asks the student to push the tail to zero, and is
//!   the full KL when k is the vocabulary size (or the tail is one token).
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

/// Mean over rows of the top-k-plus-tail KL at temperature `tau`, times τ² (see the module doc):
/// `logits` `[n, vocab]` the student's; `top_idx` `[n, k]` (u32) and `top_val` `[n, k]` the teacher's
/// top-k token ids and logits; `teacher_lse` `[n, 1]` the teacher's ln Σ exp(logit / τ) over its vocabulary.
pub fn kd_topk(logits: &Tensor, top_idx: &Tensor, top_val: &Tensor, teacher_lse: &Tensor, tau: f64) -> Result<Tensor> {
    if tau <= 0.0 {
        bail!("KD temperature must be positive, got {tau}");
    }
    let n = logits.dim(0)? as f64;
    let log_q = candle_nn::ops::log_softmax(&(logits / tau)?, D::Minus1)?.gather(top_idx, D::Minus1)?;
    let log_p = (top_val / tau)?.broadcast_sub(teacher_lse)?.detach();
    let p = log_p.exp()?;
    let top = (&p * (&log_p - &log_q)?)?.sum_all()?;
    // The tail: p_rest ln p_rest − p_rest ln q_rest, with 0 ln 0 = 0 and q_rest kept above 1e-12.
    let p_rest = (1.0 - p.sum_keepdim(D::Minus1)?)?.clamp(0.0, 1.0)?.detach();
    let q_rest = (1.0 - log_q.exp()?.sum_keepdim(D::Minus1)?)?.clamp(1e-12, 1.0)?;
    let p_rest_ln = p_rest.clamp(1e-30, 1.0)?.log()?;
    let tail = (&p_rest * (p_rest_ln - q_rest.log()?)?)?.sum_all()?;
    Ok(((top + tail)? * (tau * tau / n))?)
}

/// Mean squared error of `student` (after Φ) against `teacher`, over the teacher's mean square.
pub fn feature_mse(projected: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let teacher = teacher.detach();
    let scale = teacher.sqr()?.mean_all()?.to_scalar::<f32>()?.max(1e-12) as f64;
    Ok(((projected - &teacher)?.sqr()?.mean_all()? / scale)?)
}

/// The same KD loss on plain numbers, one row, in f64: the reference the tests hold [`kd_topk`] to.
/// `top` the teacher's top-k (id, logit), `teacher_lse` its ln Σ exp(logit / τ).
pub fn kd_topk_reference(student_logits: &[f32], top: &[(u32, f32)], teacher_lse: f64, tau: f64) -> f64 {
    let m = student_logits
        .iter()
        .map(|&x| x as f64 / tau)
        .fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = student_logits.iter().map(|&x| (x as f64 / tau - m).exp()).sum();
    let log_q = |i: u32| student_logits[i as usize] as f64 / tau - m - z.ln();
    let (mut kl, mut p_sum, mut q_sum) = (0.0, 0.0, 0.0);
    for &(i, v) in top {
        let log_p = v as f64 / tau - teacher_lse;
        kl += log_p.exp() * (log_p - log_q(i));
        p_sum += log_p.exp();
        q_sum += log_q(i).exp();
    }
    let p_rest = (1.0 - p_sum).max(0.0);
    if p_rest > 0.0 {
        kl += p_rest * (p_rest.ln() - (1.0 - q_sum).max(1e-12).ln());
    }
    kl * tau * tau
}
