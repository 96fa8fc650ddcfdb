//! The cascade's reliability classifier: L2-regularised logistic regression on standardised features
//! ([`super::features`]), fitted by Newton's method (iteratively reweighted least squares; a handful of
//! features makes the Hessian a 6×6 system), one weight set per non-final stage of a cascade, saved as
//! JSON with the feature names and the identities of the models it was fitted for, so a classifier made
//! for other models is refused.

use super::features::{NAMES, TOP_K};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `kind` of a classifier file.
pub const KIND: &str = "bushu-cascade-classifier";

/// What identifies a model to a classifier: its file name, its weight bytes and its shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub file_bytes: u64,
    pub n_layers: usize,
    pub dim: usize,
    pub vocab_size: usize,
}

impl ModelIdentity {
    /// The identity of the model file `file` opened from `path`.
    pub fn of(path: &Path, file: &crate::model::ModelFile) -> ModelIdentity {
        ModelIdentity {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            file_bytes: file.file_bytes,
            n_layers: file.config.n_layers,
            dim: file.config.dim,
            vocab_size: file.config.vocab_size,
        }
    }
}

/// A fitted logistic regression: `σ(bias + Σ wⱼ (xⱼ − meanⱼ) / stdⱼ)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

/// How a fit went on its own training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitStats {
    pub examples: usize,
    pub positives: usize,
    /// Share of training examples on the right side of 0.5.
    pub accuracy: f64,
    pub iterations: usize,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    /// The probability that an answer with features `x` is reliable.
    pub fn score(&self, x: &[f64]) -> f64 {
        let z = self.bias
            + x.iter()
                .zip(&self.mean)
                .zip(&self.std)
                .zip(&self.weights)
                .map(|(((x, m), s), w)| w * (x - m) / s)
                .sum::<f64>();
        sigmoid(z)
    }

    /// The penalised negative log-likelihood of standardised rows `z` with labels `y` at weights `w`
    /// and bias `b`: `−Σ [y log σ + (1 − y) log(1 − σ)] + λ/2 ‖w‖²` (the bias is not penalised).
    pub fn loss(z: &[Vec<f64>], y: &[bool], w: &[f64], b: f64, l2: f64) -> f64 {
        let mut l = 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>();
        for (row, &yi) in z.iter().zip(y) {
            let t = b + row.iter().zip(w).map(|(a, c)| a * c).sum::<f64>();
            // log(1 + e^t) − y t, computed without overflow.
            let softplus = if t > 0.0 {
                t + (-t).exp().ln_1p()
            } else {
                t.exp().ln_1p()
            };
            l += softplus - if yi { t } else { 0.0 };
        }
        l
    }

    /// The gradient of [`Logistic::loss`]: `(∂/∂w, ∂/∂b)`.
    pub fn gradient(z: &[Vec<f64>], y: &[bool], w: &[f64], b: f64, l2: f64) -> (Vec<f64>, f64) {
        let mut gw: Vec<f64> = w.iter().map(|v| l2 * v).collect();
        let mut gb = 0.0;
        for (row, &yi) in z.iter().zip(y) {
            let t = b + row.iter().zip(w).map(|(a, c)| a * c).sum::<f64>();
            let r = sigmoid(t) - if yi { 1.0 } else { 0.0 };
            for (g, a) in gw.iter_mut().zip(row) {
                *g += r * a;
            }
            gb += r;
        }
        (gw, gb)
    }

    /// Fits rows `x` (raw features) to labels `y` with L2 strength `l2` on the standardised weights.
    /// Each feature is standardised by its training mean and standard deviation (1 when constant).
    pub fn fit(x: &[Vec<f64>], y: &[bool], l2: f64) -> Result<(Logistic, FitStats)> {
        if x.is_empty() || x.len() != y.len() {
            bail!(
                "fitting a classifier needs examples ({} rows, {} labels)",
                x.len(),
                y.len()
            );
        }
        if !(l2 >= 0.0 && l2.is_finite()) {
            bail!("the L2 strength must be a finite number ≥ 0 (got {l2})");
        }
        let d = x[0].len();
        if x.iter().any(|r| r.len() != d || r.iter().any(|v| !v.is_finite())) {
            bail!("every example needs {d} finite features");
        }
        let n = x.len() as f64;
        let mean: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        let std: Vec<f64> = (0..d)
            .map(|j| {
                let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
                if v > 1e-24 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let z: Vec<Vec<f64>> = x
            .iter()
            .map(|r| (0..d).map(|j| (r[j] - mean[j]) / std[j]).collect())
            .collect();
        let (mut w, mut b) = (vec![0.0; d], 0.0);
        let mut iterations = 0;
        // Newton's method on (w, b): H = Zᵀ S Z + λ I (bias row unpenalised), S = σ(1 − σ).
        for it in 0..100 {
            iterations = it + 1;
            let (gw, gb) = Self::gradient(&z, y, &w, b, l2);
            let mut h = vec![vec![0.0; d + 1]; d + 1];
            for row in &z {
                let t = b + row.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
                let s = sigmoid(t) * (1.0 - sigmoid(t));
                let ext: Vec<f64> = row.iter().copied().chain([1.0]).collect();
                for i in 0..=d {
                    for k in 0..=d {
                        h[i][k] += s * ext[i] * ext[k];
                    }
                }
            }
            for (i, hi) in h.iter_mut().enumerate().take(d) {
                hi[i] += l2;
            }
            // A tiny ridge keeps the system solvable when the data are separable and λ = 0.
            for (i, hi) in h.iter_mut().enumerate() {
                hi[i] += 1e-9;
            }
            let g: Vec<f64> = gw.iter().copied().chain([gb]).collect();
            let step = solve(h, g).context("the classifier's Newton system is singular")?;
            for (wj, s) in w.iter_mut().zip(&step) {
                *wj -= s;
            }
            b -= step[d];
            if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-10 {
                break;
            }
        }
        let model = Logistic {
            mean,
            std,
            weights: w,
            bias: b,
        };
        let right = x.iter().zip(y).filter(|(r, &yi)| (model.score(r) >= 0.5) == yi).count();
        let stats = FitStats {
            examples: x.len(),
            positives: y.iter().filter(|&&v| v).count(),
            accuracy: right as f64 / n,
            iterations,
        };
        Ok((model, stats))
    }
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            let (top, bottom) = a.split_at_mut(r);
            for (x, &y) in bottom[0][c..n].iter_mut().zip(&top[c][c..n]) {
                *x -= f * y;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// How the training labels were made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// What was measured.
    pub agreement: String,
    /// An answer is reliable when its agreement is at least this.
    pub cut: f64,
    /// The generation budget of the training answers (the length feature's denominator then).
    pub max_tokens: usize,
}

/// One non-final stage's classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageClassifier {
    pub model: String,
    #[serde(flatten)]
    pub logistic: Logistic,
    pub train: FitStats,
}

/// A classifier file: one logistic regression per stage but the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub kind: String,
    pub version: u32,
    pub features: Vec<String>,
    pub top_k: usize,
    /// The cascade it was fitted for, smallest first.
    pub models: Vec<ModelIdentity>,
    pub labels: Labels,
    pub l2: f64,
    pub stages: Vec<StageClassifier>,
}

impl Classifier {
    /// Reads and checks a classifier file.
    pub fn load(path: &Path) -> Result<Classifier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cascade classifier {}", path.display()))?;
        let c: Classifier = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a bushu cascade classifier: {e}", path.display()))?;
        if c.kind != KIND || c.version != 1 {
            bail!(
                "{} is not a version-1 bushu cascade classifier (kind {:?}, version {})",
                path.display(),
                c.kind,
                c.version
            );
        }
        if c.features != NAMES || c.top_k != TOP_K {
            bail!(
                "{} uses the features {:?} (top-{}); this bushu computes {:?} (top-{TOP_K})",
                path.display(),
                c.features,
                c.top_k,
                NAMES
            );
        }
        let d = NAMES.len();
        let bad = c.stages.iter().any(|s| {
            let l = &s.logistic;
            l.mean.len() != d
                || l.std.len() != d
                || l.weights.len() != d
                || l.std
                    .iter()
                    .any(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
                || !l.bias.is_finite()
                || l.mean.iter().chain(&l.std).chain(&l.weights).any(|v| !v.is_finite())
        });
        if bad || c.stages.len() + 1 != c.models.len() {
            bail!(
                "{}: malformed cascade classifier (needs {d} finite weights, means and positive deviations per stage, one stage per model but the last)",
                path.display()
            );
        }
        Ok(c)
    }

    /// Errors unless this classifier was fitted for exactly the cascade `models` (smallest first).
    pub fn check_models(&self, path: &Path, models: &[ModelIdentity]) -> Result<()> {
        if self.models != models {
            let names = |m: &[ModelIdentity]| m.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(" → ");
            bail!(
                "the cascade classifier {} was fitted for the models {} and cannot judge {} (or a file changed): fit one with bushu cascade-train",
                path.display(),
                names(&self.models),
                names(models)
            );
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_by_hand() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
    }
}
