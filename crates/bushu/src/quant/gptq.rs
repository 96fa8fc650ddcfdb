//! GPTQ (Frantar et al., 2022): layer-wise quantization minimising `||XW − XW_q||²` column by column.
//!
//! With `H = 2XᵀX/n` from calibration activations ([`super::calib`]), dampened by `λ = damp · mean(diag H)`,
//! and `U` the upper Cholesky factor of `H⁻¹`, each weight row is processed in column order: column `i`
//! is rounded to the grid, and its error `(w_i − q_i) / U_ii` is spread over the columns not yet
//! quantized (`w_j −= err · U_ij`, `j > i`). Rows are independent given `U`, so they run in parallel.
//! Groups run along the row (input dimension): without act-order a group's `(S, Z)` is chosen when its
//! first column is reached, from the weights as updated so far; with act-order (columns in order of
//! decreasing `H_ii`) the group parameters are fixed from the original weights ("static groups") so
//! that each stored block keeps one scale. Dead inputs (`H_ii = 0`) get `H_ii = 1` and weight 0.
//!
//! The result is stored in the integer type's container ([`super::int_types`]), so it runs on the same
//! kernels as round-to-nearest.

use super::affine::Scheme;
use super::int_types::{group_params, group_ranges, pack_block, IntType};
use anyhow::{bail, Result};
use half::f16;
use rayon::prelude::*;

/// GPTQ settings.
#[derive(Clone, Copy, Debug)]
pub struct GptqConfig {
    /// Dampening as a fraction of the mean diagonal of `H` (0.01 in the paper).
    pub damp: f64,
    /// Quantize columns in order of decreasing `H_ii`.
    pub act_order: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            damp: 0.01,
            act_order: false,
        }
    }
}

/// In-place Cholesky factorisation `A = L Lᵀ` of a symmetric positive definite `n x n` matrix; the
/// lower triangle of `a` becomes `L` (the upper is zeroed).
fn cholesky(a: &mut [f64], n: usize) -> Result<()> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            bail!("Hessian is not positive definite (pivot {j}: {d}); raise the dampening (damp)");
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let rj = &head[j * n..j * n + j];
        tail.par_chunks_mut(n).for_each(|ri| {
            let s: f64 = ri[..j].iter().zip(rj).map(|(x, y)| x * y).sum();
            ri[j] = (ri[j] - s) / d;
        });
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    Ok(())
}

/// `U` upper triangular with `H⁻¹ = Uᵀ U`, from `H`.
fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = h.to_vec();
    cholesky(&mut l, n)?;
    // L⁻¹ by forward substitution, column by column.
    let mut li = vec![0.0f64; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * n + k] * li[k * n + c];
            }
            li[i * n + c] = s / l[i * n + i];
        }
    }
    // H⁻¹ = L⁻ᵀ L⁻¹.
    let mut hinv = vec![0.0f64; n * n];
    hinv.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, r) in row.iter_mut().enumerate() {
            let k0 = i.max(j);
            *r = (k0..n).map(|k| li[k * n + i] * li[k * n + j]).sum();
        }
    });
    // H⁻¹ = L' L'ᵀ; U = L'ᵀ.
    cholesky(&mut hinv, n)?;
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = hinv[i * n + j];
        }
    }
    Ok(u)
}

/// One row's codes and its per-block `(S, Z)`.
type RowResult = (Vec<i32>, Vec<(f32, i32)>);

/// The value a code is stored as (what the kernels will compute with).
fn stored(ty: &IntType, q: i32, s: f32, z: i32) -> f32 {
    match (ty.spec.scheme, ty.spec.bits) {
        (Scheme::Symmetric, _) => s * q as f32,
        (Scheme::Asymmetric, 8) => f16::from_f32(s * (q + z) as f32).to_f32(),
        (Scheme::Asymmetric, _) => s * (q + 8) as f32 + f16::from_f32(s * (z - 8) as f32).to_f32(),
    }
}

/// GPTQ of a row-major `rows x cols` matrix with Hessian `h` (`cols x cols`): the container bytes and
/// the values they hold.
pub fn gptq_quantize(
    ty: &IntType,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    cfg: &GptqConfig,
) -> Result<(Vec<u8>, Vec<f32>)> {
    if !cols.is_multiple_of(32) || h.len() != cols * cols || w.len() != rows * cols {
        bail!("GPTQ needs rows of whole 32-blocks and a {cols}x{cols} Hessian");
    }
    let gran = ty.spec.granularity;
    let glen = ty.spec.group_len(1, cols).min(cols);
    let mut h = h.to_vec();
    let mut w: Vec<f32> = w.to_vec();
    let dead: Vec<bool> = (0..cols).map(|i| h[i * cols + i] == 0.0).collect();
    for i in (0..cols).filter(|&i| dead[i]) {
        h[i * cols + i] = 1.0;
        w.iter_mut().skip(i).step_by(cols).for_each(|v| *v = 0.0);
    }
    let mean_diag = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[i * cols + i] += cfg.damp * mean_diag;
    }
    let mut perm: Vec<usize> = (0..cols).collect();
    if cfg.act_order {
        perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    let hp: Vec<f64> = (0..cols * cols)
        .map(|k| h[perm[k / cols] * cols + perm[k % cols]])
        .collect();
    let u = inverse_cholesky_upper(&hp, cols)?;

    // Static group parameters (act-order, per-tensor): from the original weights.
    let static_params: Option<Vec<(f32, i32)>> = if cfg.act_order || matches!(gran, super::affine::Granularity::Tensor)
    {
        let mut p = vec![(0.0f32, 0i32); rows * cols / 32];
        for r in group_ranges(gran, rows, cols) {
            let gp = group_params(&ty.spec, &w[r.clone()]);
            p[r.start / 32..r.end / 32].iter_mut().for_each(|v| *v = gp);
        }
        Some(p)
    } else {
        None
    };

    let results: Vec<RowResult> = w
        .par_chunks(cols)
        .enumerate()
        .map(|(r, row)| {
            let mut x: Vec<f64> = perm.iter().map(|&c| row[c] as f64).collect();
            let mut codes = vec![0i32; cols];
            let mut params = vec![(0.0f32, 0i32); cols / 32];
            if let Some(sp) = &static_params {
                params.copy_from_slice(&sp[r * cols / 32..(r + 1) * cols / 32]);
            }
            for i in 0..cols {
                let c = perm[i];
                if static_params.is_none() && c.is_multiple_of(glen) {
                    // Dynamic group: its first column is reached (identity order), take the current values.
                    let end = (c + glen).min(cols);
                    let cur: Vec<f32> = x[c..end].iter().map(|&v| v as f32).collect();
                    let gp = group_params(&ty.spec, &cur);
                    params[c / 32..end / 32].iter_mut().for_each(|v| *v = gp);
                }
                let (s, z) = params[c / 32];
                let q = ty.spec.code(x[i] as f32, s, z);
                codes[c] = q;
                let err = (x[i] - stored(ty, q, s, z) as f64) / u[i * cols + i];
                let ui = &u[i * cols..(i + 1) * cols];
                for j in i + 1..cols {
                    x[j] -= err * ui[j];
                }
            }
            (codes, params)
        })
        .collect();

    let mut out = Vec::new();
    let mut deq = Vec::with_capacity(rows * cols);
    for (codes, params) in &results {
        for (b, cb) in codes.chunks_exact(32).enumerate() {
            let (s, z) = params[b];
            pack_block(ty, cb, s, z, &mut out, &mut deq);
        }
    }
    Ok((out, deq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_cholesky_reconstructs_the_inverse() {
        let n = 5;
        let mut h = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = 1.0 / (1.0 + i as f64 + j as f64) + if i == j { 1.0 } else { 0.0 };
            }
        }
        let u = inverse_cholesky_upper(&h, n).unwrap();
        // (Uᵀ U) H = I
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    s += hinv_ik * h[k * n + j];
                }
                assert!((s - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{i},{j}: {s}");
            }
        }
    }
}
