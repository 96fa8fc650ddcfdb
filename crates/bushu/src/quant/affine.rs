//! Affine integer quantization in the lecture's terms (§5):
//!
//! - quantize `X_q = clamp(R(X / S) − Z, qmin, qmax)`, dequantize `X~ = S (X_q + Z)`, error `||X − X~||²`;
//!   `R` rounds half away from zero, `S` is the scale, `Z` the (integer) zero point.
//! - **symmetric**: `Z = 0`, `S = max|X| / qmax` over the restricted range `[−qmax, qmax]`
//!   (`qmax = 2^(b−1) − 1`, so 0 is exact and the grid is symmetric);
//! - **asymmetric**: the full range `[qmin, qmax] = [−2^(b−1), 2^(b−1) − 1]`, `S = (max − min) / (qmax − qmin)`
//!   and `Z = R((max + min) / 2S)`: the midpoint of the data lands on integer 0, the middle of the grid.
//!   This is the rule that reproduces the lecture's worked example (`Z = +152`; using `min` instead,
//!   `Z = R(min/S) − qmin`, gives 153 and a different `X_q`). Either rule may clamp one end by one step,
//!   since `R(a) − R(b) ≠ R(a − b)`.
//! - granularity: one `(S, Z)` per tensor, per channel (output row) or per group of `g` consecutive
//!   elements of a row.
//!
//! Bit widths 2 to 8 are accepted (8, 4 and 3 are the ones used).

use anyhow::{bail, Result};

/// Symmetric (`Z = 0`) or asymmetric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Symmetric,
    Asymmetric,
}

/// Which elements share one scale and zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    Tensor,
    /// One per row (output channel).
    Channel,
    /// One per `g` consecutive elements of a row.
    Group(usize),
}

/// A quantization recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffineSpec {
    pub bits: u32,
    pub scheme: Scheme,
    pub granularity: Granularity,
}

impl AffineSpec {
    pub fn new(bits: u32, scheme: Scheme, granularity: Granularity) -> AffineSpec {
        AffineSpec {
            bits,
            scheme,
            granularity,
        }
    }

    /// Integer range `[qmin, qmax]` of the codes.
    pub fn range(&self) -> (i32, i32) {
        let half = 1i32 << (self.bits - 1);
        match self.scheme {
            Scheme::Symmetric => (-(half - 1), half - 1),
            Scheme::Asymmetric => (-half, half - 1),
        }
    }

    /// Elements per `(S, Z)` pair for a matrix with rows of `cols` elements.
    pub fn group_len(&self, rows: usize, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor => rows * cols,
            Granularity::Channel => cols,
            Granularity::Group(g) => g,
        }
    }

    /// Checks the recipe against a `rows x cols` matrix.
    pub fn check(&self, rows: usize, cols: usize) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            bail!("bit width {} is not supported (2 to 8)", self.bits);
        }
        if let Granularity::Group(g) = self.granularity {
            if g == 0 || !cols.is_multiple_of(g) {
                bail!("group size {g} does not divide the row length {cols}");
            }
        }
        if rows == 0 || cols == 0 {
            bail!("empty matrix {rows}x{cols}");
        }
        Ok(())
    }

    /// `(S, Z)` for one group of values.
    pub fn params(&self, x: &[f32]) -> (f32, i32) {
        let (qmin, qmax) = self.range();
        match self.scheme {
            Scheme::Symmetric => {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                (amax / qmax as f32, 0)
            }
            Scheme::Asymmetric => {
                let (lo, hi) = x
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
                let s = (hi - lo) / (qmax - qmin) as f32;
                if s == 0.0 {
                    // A constant group: S = |value| / qmax reproduces it exactly with Z = 0.
                    return (lo.abs() / qmax as f32, 0);
                }
                (s, ((hi + lo) / (2.0 * s)).round() as i32)
            }
        }
    }

    /// The code of `x` under `(s, z)`.
    #[inline]
    pub fn code(&self, x: f32, s: f32, z: i32) -> i32 {
        let (qmin, qmax) = self.range();
        if s == 0.0 {
            return 0;
        }
        ((x / s).round() as i32 - z).clamp(qmin, qmax)
    }
}

/// A quantized matrix: codes, and one scale and zero point per group.
#[derive(Clone, Debug)]
pub struct AffineTensor {
    pub spec: AffineSpec,
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` codes in `[qmin, qmax]`.
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub zeros: Vec<i32>,
}

impl AffineTensor {
    /// Quantizes a row-major `rows x cols` matrix.
    pub fn quantize(x: &[f32], rows: usize, cols: usize, spec: AffineSpec) -> Result<AffineTensor> {
        spec.check(rows, cols)?;
        if x.len() != rows * cols {
            bail!("{} values for a {rows}x{cols} matrix", x.len());
        }
        let g = spec.group_len(rows, cols);
        let mut q = Vec::with_capacity(x.len());
        let (mut scales, mut zeros) = (Vec::new(), Vec::new());
        for grp in x.chunks_exact(g) {
            let (s, z) = spec.params(grp);
            scales.push(s);
            zeros.push(z);
            q.extend(grp.iter().map(|&v| spec.code(v, s, z) as i8));
        }
        Ok(AffineTensor {
            spec,
            rows,
            cols,
            q,
            scales,
            zeros,
        })
    }

    /// `X~ = S (X_q + Z)`.
    pub fn dequantize(&self) -> Vec<f32> {
        let g = self.spec.group_len(self.rows, self.cols);
        let mut out = Vec::with_capacity(self.q.len());
        for ((grp, &s), &z) in self.q.chunks_exact(g).zip(&self.scales).zip(&self.zeros) {
            out.extend(grp.iter().map(|&c| s * (c as i32 + z) as f32));
        }
        out
    }

    /// Storage in bits per weight: the codes plus an f32 scale (and an i32 zero point when asymmetric)
    /// per group.
    pub fn bits_per_weight(&self) -> f64 {
        let per_group = 32.0
            * if self.spec.scheme == Scheme::Asymmetric {
                2.0
            } else {
                1.0
            };
        self.spec.bits as f64 + per_group * self.scales.len() as f64 / self.q.len() as f64
    }
}

/// Reconstruction error of `approx` against `x`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuantError {
    /// `||X − X~||²`.
    pub sq_error: f64,
    /// `||X − X~||² / ||X||²`.
    pub rel_error: f64,
    /// `max |X − X~|`.
    pub max_abs: f64,
    /// Signal to quantization noise, `10 log10(||X||² / ||X − X~||²)` dB.
    pub sqnr_db: f64,
}

impl QuantError {
    pub fn of(x: &[f32], approx: &[f32]) -> QuantError {
        let (mut e, mut n, mut m) = (0.0f64, 0.0f64, 0.0f64);
        for (&a, &b) in x.iter().zip(approx) {
            let d = (a - b) as f64;
            e += d * d;
            n += (a as f64) * (a as f64);
            m = m.max(d.abs());
        }
        let rel = if n > 0.0 { e / n } else { 0.0 };
        let sqnr_db = if e > 0.0 { 10.0 * (n / e).log10() } else { f64::INFINITY };
        QuantError {
            sq_error: e,
            rel_error: rel,
            max_abs: m,
            sqnr_db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_keeps_zero_and_extremes() {
        let x = [-1.0f32, 0.0, 0.25, 0.5];
        let t = AffineTensor::quantize(&x, 1, 4, AffineSpec::new(8, Scheme::Symmetric, Granularity::Tensor)).unwrap();
        assert_eq!(t.q, vec![-127, 0, 32, 64]);
        let d = t.dequantize();
        assert_eq!(d[0], -1.0);
        assert_eq!(d[1], 0.0);
    }

    #[test]
    fn groups_have_their_own_scales() {
        let x: Vec<f32> = (0..16)
            .map(|i| if i < 8 { i as f32 } else { 100.0 * i as f32 })
            .collect();
        let spec = AffineSpec::new(4, Scheme::Asymmetric, Granularity::Group(8));
        let t = AffineTensor::quantize(&x, 2, 8, spec).unwrap();
        assert_eq!(t.scales.len(), 2);
        let e = QuantError::of(&x[..8], &t.dequantize()[..8]);
        assert!(e.max_abs <= 0.5 * 7.0 / 15.0 + 1e-5, "{e:?}");
        assert!(
            AffineTensor::quantize(&x, 2, 8, AffineSpec::new(4, Scheme::Symmetric, Granularity::Group(3))).is_err()
        );
    }
}
