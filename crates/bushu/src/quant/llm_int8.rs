//! LLM.int8() mixed-precision inference for a whole model (`--int8-outlier-threshold`): every projection
//! of every layer gets an int8 copy of its weights (per output channel, made once at load from whatever
//! type the file stores), and [`Int8Weights::linear`] multiplies with int8 activations per token, keeping
//! the outlier feature dimensions in f32 against the original (memory-mapped) tensor. The kernel is
//! [`kernels::int8_mixed`]; the classifier keeps its f32 path.

use crate::model::weights::{LayerWeights, Proj, Weights};
use anyhow::Result;
use kernels::int8_mixed::{matmul_int8, ActInt8, Int8Matrix};

/// The default outlier threshold of the paper (and of bitsandbytes).
pub const DEFAULT_THRESHOLD: f32 = 6.0;

/// Checks an outlier threshold: positive, not NaN (`inf` = no outliers).
pub fn check_threshold(t: f32) -> Result<f32> {
    if t.is_nan() || t <= 0.0 {
        return Err(crate::sampling::InvalidParam::error(
            "int8_outlier_threshold",
            format!("must be a positive number, got {t}"),
        ));
    }
    Ok(t)
}

/// The int8 copies of every layer's projections and how activations are quantized.
pub struct Int8Weights {
    /// Per layer, in the order of [`Proj::ALL`].
    layers: Vec<Vec<Int8Matrix>>,
    pub mode: ActInt8,
}

impl Int8Weights {
    /// Quantizes every projection of `w` per output channel.
    pub fn new(w: &Weights, mode: ActInt8) -> Result<Int8Weights> {
        if let ActInt8::Mixed { threshold } = mode {
            check_threshold(threshold)?;
        }
        let layers = w
            .layers
            .iter()
            .map(|lw| {
                Proj::ALL
                    .iter()
                    .map(|p| Int8Matrix::quantize(&p.tensor(lw).matrix()))
                    .collect()
            })
            .collect();
        Ok(Int8Weights { layers, mode })
    }

    /// LLM.int8() with outlier threshold `threshold`.
    pub fn llm_int8(w: &Weights, threshold: f32) -> Result<Int8Weights> {
        Int8Weights::new(w, ActInt8::Mixed { threshold })
    }

    /// `y = W x` for projection `p` of layer `layer` (`lw` holds that layer's stored weights).
    pub fn linear(&self, layer: usize, p: Proj, lw: &LayerWeights, x: &[f32], y: &mut [f32]) {
        let w8 = &self.layers[layer][p as usize];
        matmul_int8(w8, &p.tensor(lw).matrix(), x, y, self.mode);
    }

    /// Bytes of the int8 copies (held in addition to the stored weights).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(Int8Matrix::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(check_threshold(6.0).unwrap(), 6.0);
        assert!(check_threshold(f32::INFINITY).is_ok());
        for bad in [0.0, -1.0, f32::NAN] {
            let e = check_threshold(bad).unwrap_err().to_string();
            assert!(e.contains("int8_outlier_threshold") && !e.contains('\n'), "{e}");
        }
    }
}
