//! AdamW with its state in the open, so that a checkpoint can save and restore it (candle-nn's AdamW
//! keeps its moments and step count private). The update is candle-nn's, operation for operation —
//! decoupled weight decay, bias-corrected moments — and a test holds the two equal.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use candle_nn::ParamsAdamW;

pub struct AdamW {
    pub params: ParamsAdamW,
    /// Steps taken (the bias correction's t).
    pub step: usize,
    pub vars: Vec<Var>,
    /// First and second moments, one per variable.
    pub m: Vec<Var>,
    pub v: Vec<Var>,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<AdamW> {
        let zeros = |x: &Var| Var::zeros(x.shape(), x.dtype(), x.device());
        let m = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            step: 0,
            vars,
            m,
            v,
        })
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One update from `grads` (variables without a gradient are left alone).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        let (b1, b2) = (p.beta1, p.beta2);
        let scale_m = 1f64 / (1f64 - b1.powi(self.step as i32));
        let scale_v = 1f64 / (1f64 - b2.powi(self.step as i32));
        for ((theta, m), v) in self.vars.iter().zip(&self.m).zip(&self.v) {
            if let Some(g) = grads.get(theta) {
                let next_m = ((m.as_tensor() * b1)? + (g * (1.0 - b1))?)?;
                let next_v = ((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&next_m * scale_m)?;
                let v_hat = (&next_v * scale_v)?;
                let next_theta = (theta.as_tensor() * (1f64 - p.lr * p.weight_decay))?;
                let adjusted: Tensor = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
                let next_theta = (next_theta - (adjusted * p.lr)?)?;
                m.set(&next_m)?;
                v.set(&next_v)?;
                theta.set(&next_theta)?;
            }
        }
        Ok(())
    }
}
