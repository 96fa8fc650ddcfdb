//! The acceptance rule of one draft position: speculative sampling (Leviathan et al. 2023, Chen et al.
//! 2023), which keeps the output distribution exactly the target's.
//!
//! With `p` the target's processed distribution at the position (everything [`crate::sampling::Sampler`]
//! would draw from: temperature, top-k/p, min-p, penalties) and `q` the distribution the proposer drew
//! the draft `x` from:
//!
//! - accept `x` with probability `min(1, p(x) / q(x))`;
//! - on rejection, draw the token from the residual `normalize(max(0, p − q))`.
//!
//! Then `P(token = y) = q(y)·min(1, p(y)/q(y)) + (1 − β)·max(0, p(y) − q(y)) / (1 − β)`, with
//! `β = Σ min(p, q)` the acceptance probability: `min(q(y), p(y)) + max(0, p(y) − q(y)) = p(y)`.
//!
//! A deterministic proposer (prompt lookup, a greedy draft) has `q` = the one-hot of `x`: `x` is
//! accepted with probability `p(x)`, and the residual is `p` without `x`. Greedy decoding has `p` = the
//! one-hot of the target's choice, so the rule becomes "accept while the draft is the target's argmax,
//! then take the target's token" — without any draw.

use crate::sampling::rng::Rng;

/// What verification decided at one position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The draft stands.
    Accept,
    /// The draft is replaced by this token (drawn from the residual).
    Reject(u32),
}

/// The probability of accepting a draft the target gives `p_x` and the proposer gave `q_x`:
/// `min(1, p_x / q_x)`.
pub fn acceptance(p_x: f32, q_x: f32) -> f32 {
    if p_x >= q_x {
        1.0
    } else {
        p_x / q_x
    }
}

/// The residual `max(0, p − q)` (unnormalized; [`Rng::categorical`] draws from it as it is), `q` the
/// one-hot of `x` when `None`.
pub fn residual(p: &[f32], q: Option<&[f32]>, x: u32) -> Vec<f32> {
    match q {
        Some(q) => p.iter().zip(q).map(|(&p, &q)| (p - q).max(0.0)).collect(),
        None => {
            let mut r = p.to_vec();
            r[x as usize] = (r[x as usize] - 1.0).max(0.0);
            r
        }
    }
}

/// Verifies draft `x` against the target's distribution `p` (and the proposer's `q`, one-hot when
/// `None`), drawing from `rng` when chance decides. Sure outcomes draw nothing.
pub fn verify_one(p: &[f32], q: Option<&[f32]>, x: u32, rng: &mut Rng) -> Verdict {
    let p_x = p[x as usize];
    let q_x = q.map_or(1.0, |q| q[x as usize]);
    let a = acceptance(p_x, q_x);
    if a >= 1.0 || (a > 0.0 && rng.next_f32() < a) {
        return Verdict::Accept;
    }
    let r = residual(p, q, x);
    let mut positive = r.iter().enumerate().filter(|(_, &v)| v > 0.0);
    match (positive.next(), positive.next()) {
        // One possible token (greedy: the target's choice): no draw.
        (Some((t, _)), None) => Verdict::Reject(t as u32),
        (Some(_), Some(_)) => Verdict::Reject(rng.categorical(&r) as u32),
        // Only reachable through rounding (p ≤ q everywhere yet x rejected): p itself.
        (None, _) => Verdict::Reject(rng.categorical(p) as u32),
    }
}
