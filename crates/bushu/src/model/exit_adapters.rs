//! Trained exit adapters for early exit: the tuned lens (Belrose et al. 2023, "Eliciting Latent
//! Predictions from Transformers with the Tuned Lens"). The shared-head exit
//! ([`crate::model::early_exit`]) reads an intermediate layer's residual stream `h` with the model's own
//! final norm and classifier, which were trained for the last layer's stream only; on SmolLM2-135M that
//! reading is confidently wrong (docs/ADAPTIVE.md). An adapter per exit layer first translates the stream:
//!
//! `h' = h + W_l h + b_l`, then the final norm and classifier on `h'`,
//!
//! an affine map (`dim x dim` and a bias) trained with the model frozen to make the exit's distribution
//! match the model's own final one (`KL(p_last ‖ p_exit)`, `bushu train-exit-adapters`, crates/train).
//! `W = 0, b = 0` is the shared head exactly (`h + 0 = h`), which is where training starts.
//!
//! Cost per exit test: `dim²` multiply-adds (0.33 M for SmolLM2's width 576, against the classifier's
//! 28 M), so an adapter leaves the compute of an exit where it was. The skipped layers' keys and values
//! are still propagated from the untranslated stream `h` (CALM's state propagation): the adapter only
//! changes which distribution the exit reads.
//!
//! The file is a GGUF side file that names the model it was trained for (the identity mixture-of-depths
//! routers use: architecture, width, vocabulary, layer count, norms), so adapters are never applied to
//! another model.

use crate::formats::gguf::Value;
use crate::formats::gguf_writer::GgufWriter;
use crate::formats::side_file;
use crate::model::mixture_of_depths::RoutersBase;
use crate::model::{Model, ModelFile};
use crate::spec_decode::medusa::dot;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// One exit point's adapter: `W` (`dim x dim`, row-major, output by input) and `b`.
#[derive(Clone, Copy, Debug)]
pub struct Lens<'a> {
    pub w: &'a [f32],
    pub b: &'a [f32],
}

impl Lens<'_> {
    /// `h + W h + b` into `out` (`dim` values each).
    pub fn apply(&self, h: &[f32], out: &mut [f32]) {
        let d = self.b.len();
        for (r, o) in out.iter_mut().enumerate().take(d) {
            *o = h[r] + (dot(&self.w[r * d..(r + 1) * d], &h[..d]) + self.b[r]);
        }
    }
}

/// Adapters for some exit points of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitAdapters {
    pub dim: usize,
    /// Layers of the model they were trained for.
    pub n_layers: usize,
    /// The exit points (layers run before the exit, each `1..n_layers`), ascending.
    pub layers: Vec<usize>,
    /// Per exit point, `W` (`dim * dim`) and `b` (`dim`).
    pub w: Vec<Vec<f32>>,
    pub b: Vec<Vec<f32>>,
}

impl ExitAdapters {
    /// Adapters from their weights: one per exit point, ascending distinct points in `1..n_layers`.
    pub fn new(
        dim: usize,
        n_layers: usize,
        layers: Vec<usize>,
        w: Vec<Vec<f32>>,
        b: Vec<Vec<f32>>,
    ) -> Result<ExitAdapters> {
        if layers.is_empty() || layers.len() != w.len() || layers.len() != b.len() {
            bail!(
                "exit adapters: {} exit layers, {} matrices and {} biases (one of each per layer, at least one)",
                layers.len(),
                w.len(),
                b.len()
            );
        }
        if layers.windows(2).any(|p| p[0] >= p[1]) {
            bail!("exit adapters: the exit layers {layers:?} are not ascending and distinct");
        }
        if let Some(&l) = layers.iter().find(|&&l| l == 0 || l >= n_layers) {
            bail!(
                "exit adapters: exit layer {l} is not between 1 and {} (the model has {n_layers} layers)",
                n_layers.saturating_sub(1)
            );
        }
        if w.iter().any(|m| m.len() != dim * dim) || b.iter().any(|v| v.len() != dim) {
            bail!("exit adapters: every matrix must hold {dim} x {dim} values and every bias {dim}");
        }
        Ok(ExitAdapters {
            dim,
            n_layers,
            layers,
            w,
            b,
        })
    }

    /// Zero adapters (the shared head) at `layers`.
    pub fn zeros(dim: usize, n_layers: usize, layers: Vec<usize>) -> Result<ExitAdapters> {
        let k = layers.len();
        ExitAdapters::new(
            dim,
            n_layers,
            layers,
            vec![vec![0.0; dim * dim]; k],
            vec![vec![0.0; dim]; k],
        )
    }

    /// The adapter of exit point `layers_run`, if there is one.
    pub fn at(&self, layers_run: usize) -> Option<Lens<'_>> {
        let i = self.layers.iter().position(|&l| l == layers_run)?;
        Some(Lens {
            w: &self.w[i],
            b: &self.b[i],
        })
    }

    /// The GGUF image of the adapters, naming `base` as their model.
    pub fn to_gguf(&self, base: &RoutersBase) -> GgufWriter {
        let mut g = GgufWriter::new();
        g.set("general.architecture", Value::String("exit-adapters".into()));
        g.set("exit.layer_count", Value::U32(self.layers.len() as u32));
        base.write_keys(&mut g, "exit.base");
        for (i, &l) in self.layers.iter().enumerate() {
            g.add_f32(&format!("exit.{l}.weight"), vec![self.dim, self.dim], &self.w[i]);
            g.add_f32(&format!("exit.{l}.bias"), vec![self.dim], &self.b[i]);
        }
        g
    }

    /// Reads the adapters file at `path` for `model` (opened from `file`); one clear error when it is not
    /// an adapters file or was trained for another model.
    pub fn load(path: &Path, file: &ModelFile, model: &Model) -> Result<ExitAdapters> {
        let g = side_file::open(
            path,
            "the exit adapters file",
            "--exit-adapters takes the file bushu train-exit-adapters writes",
        )?;
        if g.get_str("general.architecture") != Some("exit-adapters") {
            bail!(
                "{} is not an exit adapters file (bushu train-exit-adapters writes them)",
                path.display()
            );
        }
        let theirs = RoutersBase::read_keys(&g, "exit.base");
        let ours = RoutersBase::of(file, model);
        if theirs != ours {
            bail!(
                "the exit adapters in {} were trained for another model ({}), not this one ({})",
                path.display(),
                theirs.describe(),
                ours.describe()
            );
        }
        let (dim, n_layers) = (model.config.dim, model.config.n_layers);
        let tensor = |name: &str, numel: usize| side_file::f32_tensor(&g, path, name, numel);
        let mut layers: Vec<usize> = (1..n_layers)
            .filter(|l| g.tensor(&format!("exit.{l}.weight")).is_some())
            .collect();
        layers.sort_unstable();
        let count = g.get_i64("exit.layer_count").unwrap_or(-1);
        if count != layers.len() as i64 {
            bail!(
                "{}: exit.layer_count says {count} adapters, the file holds {} (exit.L.weight for L in 1..{n_layers})",
                path.display(),
                layers.len()
            );
        }
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for &l in &layers {
            w.push(tensor(&format!("exit.{l}.weight"), dim * dim)?);
            b.push(tensor(&format!("exit.{l}.bias"), dim)?);
        }
        ExitAdapters::new(dim, n_layers, layers, w, b)
            .with_context(|| format!("the exit adapters file {}", path.display()))
    }
}
