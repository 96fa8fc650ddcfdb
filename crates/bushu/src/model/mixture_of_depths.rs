//! Mixture of depths (lecture §6; Raposo et al. 2024, "Mixture-of-Depths: Dynamically allocating compute
//! in transformer-based language models"): a router per layer scores each token's residual stream as it
//! enters the layer, and a token whose score is below the layer's threshold skips the layer — its
//! residual stream passes through unchanged.
//!
//! - **Router** of layer `l`: `r_l(x) = w_l · x / rms(x) + b_l`, a linear scorer (`dim` weights and a
//!   bias) on the residual stream `x`, RMS-normalized without a gain (the residual stream's scale grows
//!   from layer to layer and a few of its dimensions carry huge values; normalizing keeps one learning
//!   rate right for every layer). Trained on a frozen model by `bushu train-routers` (crates/train).
//! - **Threshold** for capacity `C` (the fraction of tokens that run each layer): the router's score
//!   quantile `1 − C` over the training text, read from the table of quantiles the routers file
//!   stores per layer (0, 1, ..., 100 %, measured at the capacity the routers were trained for). That is
//!   Raposo et al.'s causal answer to top-k routing at decode time: top-k over a sequence needs its
//!   future tokens' scores, a calibrated threshold does not. `C = 1` skips nothing and computes no
//!   router: the plain forward pass, bit for bit.
//! - **A skipped token's keys and values at that layer** are the layer's own K and V projections of the
//!   unchanged residual stream (what early exit's state propagation computes): a layer's K and V depend
//!   only on its input, so they are exactly what the layer would store for this input, later tokens
//!   keep attending to every position, and the cost is `2·dim·kv_dim` multiply-adds (6.25 % of a
//!   SmolLM2-135M layer). Masking skipped positions out of later tokens' attention (Raposo et al.'s
//!   choice when training from scratch) would change every later token's attention in a model that was
//!   never trained to see it.
//!
//! A one-token pass that skips a layer computes only those K and V there (the compute saved). A pass
//! over several tokens with a mixed decision at a layer runs the layer for all its rows and restores the
//! skipped rows' residual stream: the same numbers as feeding the tokens one at a time (every kernel
//! computes a row independently), without the saving — a gathered sub-batch would need a sparse causal
//! mask. Prefill saves nothing; decode steps save what they skip.

use crate::formats::gguf::{Gguf, Value};
use crate::formats::gguf_writer::GgufWriter;
use crate::formats::side_file;
use crate::model::{Config, Model, ModelFile};
use crate::spec_decode::medusa::BaseIdentity;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Quantiles stored per layer: 0, 1, ..., 100 %.
pub const QUANTILES: usize = 101;

/// What a routers file says about the model it was trained for: the Medusa heads' identity (architecture,
/// width, vocabulary, token hash), the layer count and a hash of the norm weights (which tell apart two
/// models of one shape and tokenizer; quantizing a model keeps its norms in F32, so the routers of its F16
/// file serve its Q8_0 file too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutersBase {
    pub base: BaseIdentity,
    pub layers: usize,
    pub norms_hash: u64,
}

impl RoutersBase {
    pub fn of(file: &ModelFile, model: &Model) -> RoutersBase {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let w = &model.weights;
        for v in w
            .layers
            .iter()
            .map(|l| &l.attn_norm)
            .chain(std::iter::once(&w.output_norm))
        {
            for x in v {
                for b in x.to_bits().to_le_bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        RoutersBase {
            base: BaseIdentity::of(file),
            layers: model.config.n_layers,
            norms_hash: h,
        }
    }

    /// Writes the identity under `prefix` (`PREFIX.architecture`, `.embedding_length`, `.vocab_size`,
    /// `.tokens_hash`, `.block_count`, `.norms_hash`).
    pub fn write_keys(&self, g: &mut GgufWriter, prefix: &str) {
        let b = &self.base;
        g.set(&format!("{prefix}.architecture"), Value::String(b.architecture.clone()));
        g.set(&format!("{prefix}.embedding_length"), Value::U32(b.n_embd as u32));
        g.set(&format!("{prefix}.vocab_size"), Value::U32(b.vocab_size as u32));
        g.set(
            &format!("{prefix}.tokens_hash"),
            Value::String(format!("{:016x}", b.tokens_hash)),
        );
        g.set(&format!("{prefix}.block_count"), Value::U32(self.layers as u32));
        g.set(
            &format!("{prefix}.norms_hash"),
            Value::String(format!("{:016x}", self.norms_hash)),
        );
    }

    /// The identity [`RoutersBase::write_keys`] wrote under `prefix` (missing keys read as `?` and 0,
    /// which match no model).
    pub fn read_keys(g: &Gguf, prefix: &str) -> RoutersBase {
        let str_of = |key: &str| g.get_str(&format!("{prefix}.{key}")).unwrap_or("?").to_owned();
        let int_of = |key: &str| g.get_i64(&format!("{prefix}.{key}")).unwrap_or(-1).max(0) as usize;
        let hex_of = |key: &str| u64::from_str_radix(&str_of(key), 16).unwrap_or(0);
        RoutersBase {
            base: BaseIdentity {
                architecture: str_of("architecture"),
                n_embd: int_of("embedding_length"),
                vocab_size: int_of("vocab_size"),
                tokens_hash: hex_of("tokens_hash"),
            },
            layers: int_of("block_count"),
            norms_hash: hex_of("norms_hash"),
        }
    }

    pub fn describe(&self) -> String {
        let b = &self.base;
        format!(
            "{}, {} layers, n_embd {}, vocabulary {} tokens, token hash {:016x}, norms hash {:016x}",
            b.architecture, self.layers, b.n_embd, b.vocab_size, b.tokens_hash, self.norms_hash
        )
    }
}

/// Per-layer routers and their score quantiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Routers {
    pub dim: usize,
    pub layers: usize,
    /// `layers x dim`, row `l` layer `l`'s weights.
    pub w: Vec<f32>,
    /// One bias per layer.
    pub b: Vec<f32>,
    /// `layers x QUANTILES`, ascending in each row: the score quantiles over the calibration positions.
    pub quantiles: Vec<f32>,
    /// The capacity the routers were trained (and their quantiles measured) at.
    pub trained_capacity: f32,
}

/// A capacity checked: in (0, 1].
pub fn check_capacity(c: f64) -> Result<()> {
    if !(c > 0.0 && c <= 1.0) {
        bail!("--mod-capacity must be in (0, 1] (the fraction of tokens that run each layer; 1: every layer), got {c}");
    }
    Ok(())
}

impl Routers {
    /// Routers from their parts; an error unless the sizes agree, every value is finite and each row of
    /// quantiles ascends.
    pub fn new(dim: usize, w: Vec<f32>, b: Vec<f32>, quantiles: Vec<f32>, trained_capacity: f32) -> Result<Routers> {
        let layers = b.len();
        if layers == 0 || dim == 0 || w.len() != layers * dim || quantiles.len() != layers * QUANTILES {
            bail!(
                "mixture-of-depths routers: {} weights, {} biases and {} quantiles do not make routers of {dim} for {layers} layers",
                w.len(),
                b.len(),
                quantiles.len()
            );
        }
        if w.iter().chain(&b).chain(&quantiles).any(|v| !v.is_finite()) {
            bail!("mixture-of-depths routers: a weight, bias or quantile is not finite");
        }
        if quantiles
            .chunks_exact(QUANTILES)
            .any(|q| q.windows(2).any(|p| p[0] > p[1]))
        {
            bail!("mixture-of-depths routers: score quantiles must ascend");
        }
        check_capacity(trained_capacity as f64)?;
        Ok(Routers {
            dim,
            layers,
            w,
            b,
            quantiles,
            trained_capacity,
        })
    }

    /// Layer `layer`'s score of the residual row `x`: `w · x / sqrt(mean(x²) + eps) + b`.
    pub fn score(&self, layer: usize, x: &[f32], eps: f32) -> f32 {
        let w = &self.w[layer * self.dim..(layer + 1) * self.dim];
        let (mut dot, mut ss) = (0.0f32, 0.0f32);
        for (&a, &v) in w.iter().zip(x) {
            dot += a * v;
            ss += v * v;
        }
        dot / (ss / self.dim as f32 + eps).sqrt() + self.b[layer]
    }

    /// The threshold of `layer` for capacity `c` (checked): the score quantile `1 − c`, interpolated
    /// linearly in the stored table; `-inf` (nothing skipped) at `c = 1`.
    pub fn threshold(&self, layer: usize, c: f64) -> f32 {
        if c >= 1.0 {
            return f32::NEG_INFINITY;
        }
        let q = &self.quantiles[layer * QUANTILES..(layer + 1) * QUANTILES];
        let at = (1.0 - c) * (QUANTILES - 1) as f64;
        let i = (at.floor() as usize).min(QUANTILES - 2);
        let frac = (at - i as f64) as f32;
        q[i] + frac * (q[i + 1] - q[i])
    }

    /// The GGUF image of the routers, naming `base` as the model they are for.
    pub fn to_gguf(&self, base: &RoutersBase) -> GgufWriter {
        let mut g = GgufWriter::new();
        g.set("general.architecture", Value::String("mod-routers".into()));
        g.set("mod.layer_count", Value::U32(self.layers as u32));
        g.set("mod.trained_capacity", Value::F32(self.trained_capacity));
        base.write_keys(&mut g, "mod.base");
        g.add_f32("mod.router.weight", vec![self.dim, self.layers], &self.w);
        g.add_f32("mod.router.bias", vec![self.layers], &self.b);
        g.add_f32("mod.router.quantiles", vec![QUANTILES, self.layers], &self.quantiles);
        g
    }

    /// Reads the routers file at `path` for `model` (opened from `file`); one clear error when it is not
    /// a routers file or was trained for another model.
    pub fn load(path: &Path, file: &ModelFile, model: &Model) -> Result<Routers> {
        let g = side_file::open(
            path,
            "the routers file",
            "--mod-routers takes the file bushu train-routers writes",
        )?;
        if g.get_str("general.architecture") != Some("mod-routers") {
            bail!(
                "{} is not a mixture-of-depths routers file (bushu train-routers writes them)",
                path.display()
            );
        }
        let theirs = RoutersBase::read_keys(&g, "mod.base");
        let ours = RoutersBase::of(file, model);
        if theirs != ours {
            bail!(
                "the routers in {} were trained for another model ({}), not this one ({})",
                path.display(),
                theirs.describe(),
                ours.describe()
            );
        }
        let (dim, layers) = (model.config.dim, model.config.n_layers);
        let tensor = |name: &str, numel: usize| side_file::f32_tensor(&g, path, name, numel);
        let capacity = g.get_f64("mod.trained_capacity").unwrap_or(f64::NAN) as f32;
        Routers::new(
            dim,
            tensor("mod.router.weight", layers * dim)?,
            tensor("mod.router.bias", layers)?,
            tensor("mod.router.quantiles", layers * QUANTILES)?,
            capacity,
        )
        .with_context(|| format!("the routers file {}", path.display()))
    }
}

/// Routers at a capacity: what a forward pass follows ([`Model::routing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub routers: Routers,
    pub capacity: f64,
    /// Per layer: a token whose score is below this skips the layer (`-inf`: none does).
    pub thresholds: Vec<f32>,
    /// The model's RMSNorm epsilon, which the score's normalization uses.
    pub eps: f32,
}

impl Routing {
    /// `routers` at capacity `c` (checked) for a model of `config`.
    pub fn new(routers: Routers, c: f64, config: &Config) -> Result<Routing> {
        check_capacity(c)?;
        if routers.layers != config.n_layers || routers.dim != config.dim {
            bail!(
                "routers for {} layers of width {} do not fit a model of {} layers of width {}",
                routers.layers,
                routers.dim,
                config.n_layers,
                config.dim
            );
        }
        let thresholds = (0..routers.layers).map(|l| routers.threshold(l, c)).collect();
        Ok(Routing {
            routers,
            capacity: c,
            thresholds,
            eps: config.rms_eps,
        })
    }

    /// Routing with explicit per-layer thresholds (tests, hand-made rules).
    pub fn with_thresholds(routers: Routers, thresholds: Vec<f32>, config: &Config) -> Result<Routing> {
        let mut r = Routing::new(routers, 1.0, config)?;
        if thresholds.len() != r.routers.layers || thresholds.iter().any(|t| t.is_nan()) {
            bail!("one threshold (a number or -inf) per layer");
        }
        r.thresholds = thresholds;
        r.capacity = f64::NAN;
        Ok(r)
    }

    /// Whether any token can skip `layer`.
    pub fn routes(&self, layer: usize) -> bool {
        self.thresholds[layer] > f32::NEG_INFINITY
    }

    /// Whether the residual row `x` skips `layer`.
    pub fn skips(&self, layer: usize, x: &[f32]) -> bool {
        self.routes(layer) && self.routers.score(layer, x, self.eps) < self.thresholds[layer]
    }
}

/// Multiply-adds of one token's pass through the weights under mixture of depths (attention over the
/// context left out, as in [`super::early_exit::StepCost`]): layers run, skipped layers' K and V, the
/// routers scored (`dim` each), and the classifier.
pub fn step_macs(c: &Config, layers_run: usize, routed: bool) -> f64 {
    let cost = super::early_exit::StepCost::of(c);
    let routers = if routed { (c.n_layers * c.dim) as f64 } else { 0.0 };
    cost.step(layers_run, 1) + routers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routers(layers: usize, dim: usize) -> Routers {
        let q: Vec<f32> = (0..layers)
            .flat_map(|_| (0..QUANTILES).map(|i| i as f32 / 10.0))
            .collect();
        Routers::new(dim, vec![0.0; layers * dim], vec![0.0; layers], q, 0.5).unwrap()
    }

    #[test]
    fn thresholds_are_quantiles() {
        let r = routers(2, 4);
        // Quantile p % is p / 10 here: capacity 0.25 → the 75 % quantile, 7.5.
        assert_eq!(r.threshold(0, 0.25), 7.5);
        assert_eq!(r.threshold(1, 0.5), 5.0);
        assert!((r.threshold(0, 0.875) - 1.25).abs() < 1e-6);
        assert_eq!(r.threshold(0, 1.0), f32::NEG_INFINITY);
        // Capacity near 0: the top quantile.
        assert!((r.threshold(0, 1e-9) - 10.0).abs() < 1e-5);
        for bad in [0.0, -0.5, 1.01, f64::NAN] {
            assert!(check_capacity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn score_by_hand() {
        let mut r = routers(1, 4);
        r.w = vec![1.0, 0.0, -2.0, 0.5];
        r.b = vec![0.25];
        // x = (2, 2, 2, 2): rms 2 (eps 0), x / rms = 1s: 1 - 2 + 0.5 + 0.25.
        assert!((r.score(0, &[2.0; 4], 0.0) - (-0.25)).abs() < 1e-6);
        // x = (3, 0, 1, 1): mean square 11/4.
        let want = (3.0 - 2.0 + 0.5) / (11.0f32 / 4.0).sqrt() + 0.25;
        assert!((r.score(0, &[3.0, 0.0, 1.0, 1.0], 0.0) - want).abs() < 1e-6);
    }

    #[test]
    fn bad_routers_refused() {
        let q = vec![0.0; QUANTILES];
        assert!(Routers::new(4, vec![0.0; 3], vec![0.0], q.clone(), 0.5).is_err());
        assert!(Routers::new(4, vec![f32::NAN; 4], vec![0.0], q.clone(), 0.5).is_err());
        let mut desc = q.clone();
        desc[3] = -1.0;
        assert!(Routers::new(4, vec![0.0; 4], vec![0.0], desc, 0.5).is_err());
        assert!(Routers::new(4, vec![0.0; 4], vec![0.0], q, 0.0).is_err());
    }
}
