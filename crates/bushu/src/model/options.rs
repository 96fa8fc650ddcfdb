//! How a model file becomes a runnable [`Model`]: one builder used by every command, the server and
//! any second model (a draft, an amateur, a teacher), so that they all apply the same options the same
//! way.

use super::kv_cache::KvType;
use super::llama::Model;
use super::loader::ModelFile;
use crate::quant::llm_int8::check_threshold;
use anyhow::{Context, Result};
use kernels::Precision;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelOptions {
    /// How activations meet quantized weights: int16 blocks where a kernel exists, else f32 (`Wide`,
    /// the default), int8 blocks (`Fast`, as llama.cpp; `Bf16` also rounds F16 weights to bf16 where the
    /// CPU has AVX512_BF16) or f32 (`Exact`).
    pub precision: Precision,
    /// LLM.int8() for the layer projections, with this outlier threshold (`inf`: no outliers).
    pub int8_outlier_threshold: Option<f32>,
    /// How the KV cache stores keys and values.
    pub kv_type: KvType,
    /// Large models pack their weights for the fast kernels on a background thread from the start
    /// (`Weights::prepare_packing`); without it every matrix packs on its first product, in the
    /// caller's thread (measurements that must not share the cores with a packer).
    pub background_packing: bool,
}

impl Default for ModelOptions {
    fn default() -> ModelOptions {
        ModelOptions {
            precision: Precision::default(),
            int8_outlier_threshold: None,
            kv_type: KvType::default(),
            background_packing: true,
        }
    }
}

impl ModelOptions {
    /// The exact model: f32 activations, f32 KV cache (references, calibration).
    pub fn exact() -> ModelOptions {
        ModelOptions {
            precision: Precision::Exact,
            ..ModelOptions::default()
        }
    }

    /// llama.cpp's method: int8 activation blocks (a 16-bit classifier).
    pub fn fast() -> ModelOptions {
        ModelOptions {
            precision: Precision::Fast,
            ..ModelOptions::default()
        }
    }

    /// Only the activation precision of these options: a reference to compare them against.
    pub fn base(&self) -> ModelOptions {
        ModelOptions {
            precision: self.precision,
            ..ModelOptions::default()
        }
    }

    /// Builds the model of `file` with these options.
    pub fn build(&self, file: &ModelFile) -> Result<Model> {
        let threshold = self.int8_outlier_threshold.map(check_threshold).transpose()?;
        let mut model = Model::new(file).context("cannot build the model")?;
        model.precision = self.precision;
        if let Some(t) = threshold {
            model.enable_llm_int8(t)?;
        }
        model.kv_type = self.kv_type;
        if self.background_packing && model.precision.int8_activations() && model.int8.is_none() {
            model.weights.prepare_packing(model.precision);
        }
        Ok(model)
    }
}
