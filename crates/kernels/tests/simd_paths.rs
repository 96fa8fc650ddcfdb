//! Every SIMD path against the scalar reference, on random rows of every type, odd row counts and
//! batch sizes 1..=9; the fast (int8-activation) path against the exact one within its stated bound.
//!
//! Tolerances, relative to `Σ|w x|` of each output: exact SIMD vs exact scalar 1e-5 (summation order);
//! fast SIMD vs fast scalar 1e-5 (the integer sums are identical, only the f32 block sums reorder);
//! fast vs exact: `Σ_blocks Σ|w| * max|x_block| / 254` (half a quantization step of each activation).

mod common;

use common::*;
use kernels::quants::{quantize_row_q8, BlockQ8};
use kernels::simd::{choose, Simd};
use kernels::{matmul_on, DType, Precision, QMatrix};

fn cols_for(t: DType) -> Vec<usize> {
    match t.block_len() {
        256 => vec![256, 768],
        32 => vec![32, 96, 288],
        _ => vec![8, 40, 288, 301],
    }
}

#[test]
fn every_path_matches_scalar() {
    let mut rng = Rng::new(7);
    let levels = Simd::available_levels();
    eprintln!("levels on this CPU: {levels:?}");
    for t in TYPES {
        for cols in cols_for(t) {
            for rows in [1, 3, 7, 33] {
                let data = random_matrix(&mut rng, t, rows, cols);
                let w = QMatrix::new(t, rows, cols, &data);
                for n in 1..=9 {
                    let x = rng.vec(n * cols, 2.0);
                    let s = abs_scale(t, &data, rows, cols, &x);
                    for p in [Precision::Exact, Precision::Fast] {
                        let mut want = vec![0.0; n * rows];
                        matmul_on(&w, &x, &mut want, p, Simd::Scalar);
                        for &l in &levels {
                            let mut got = vec![f32::NAN; n * rows];
                            matmul_on(&w, &x, &mut got, p, l);
                            let e = worst(&got, &want, &s);
                            assert!(e <= 1e-5, "{t} {p:?} {l}: rows {rows} cols {cols} n {n}: rel err {e}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn batched_equals_one_token_at_a_time() {
    let mut rng = Rng::new(11);
    for t in TYPES {
        let (rows, cols) = (13, cols_for(t)[1]);
        let data = random_matrix(&mut rng, t, rows, cols);
        let w = QMatrix::new(t, rows, cols, &data);
        let n = 9;
        let x = rng.vec(n * cols, 1.0);
        for l in Simd::available_levels() {
            for p in [Precision::Exact, Precision::Fast] {
                let mut all = vec![0.0; n * rows];
                matmul_on(&w, &x, &mut all, p, l);
                for ti in 0..n {
                    let mut one = vec![0.0; rows];
                    matmul_on(&w, &x[ti * cols..(ti + 1) * cols], &mut one, p, l);
                    assert_eq!(one, all[ti * rows..(ti + 1) * rows], "{t} {p:?} {l} token {ti}");
                }
            }
        }
    }
}

#[test]
fn fast_is_within_the_quantization_bound_of_exact() {
    let mut rng = Rng::new(3);
    for t in TYPES.into_iter().filter(|t| t.is_quantized()) {
        let (rows, cols) = (17, cols_for(t)[1]);
        let data = random_matrix(&mut rng, t, rows, cols);
        let m = QMatrix::new(t, rows, cols, &data);
        let n = 3;
        let x = rng.vec(n * cols, 3.0);
        let (mut exact, mut fast) = (vec![0.0; n * rows], vec![0.0; n * rows]);
        matmul_on(&m, &x, &mut exact, Precision::Exact, Simd::Scalar);
        for l in Simd::available_levels() {
            matmul_on(&m, &x, &mut fast, Precision::Fast, l);
            let mut w = vec![0.0; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut w);
                for ti in 0..n {
                    let xt = &x[ti * cols..(ti + 1) * cols];
                    let bound: f32 = w
                        .chunks(32)
                        .zip(xt.chunks(32))
                        .map(|(w, x)| {
                            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                            w.iter().map(|v| v.abs()).sum::<f32>() * amax / 254.0
                        })
                        .sum();
                    let scale: f32 = w.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                    let (e, f) = (exact[ti * rows + r], fast[ti * rows + r]);
                    assert!(
                        (e - f).abs() <= bound * 1.001 + 1e-5 * scale,
                        "{t} {l}: {f} vs {e}, bound {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn q8_activation_blocks() {
    let mut rng = Rng::new(5);
    let mut x = rng.vec(96, 4.0);
    x[40..64].fill(0.0);
    x[64..96].fill(0.0);
    let mut b = vec![BlockQ8::default(); 3];
    quantize_row_q8(&x, &mut b);
    for (blk, xs) in b.iter().zip(x.chunks(32)) {
        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert_eq!(blk.d, amax / 127.0);
        assert!(blk.qs.iter().any(|&q| q.abs() == 127) || amax == 0.0);
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(blk.s, blk.d * sum as f32);
        for (q, v) in blk.qs.iter().zip(xs) {
            assert!((*q as f32 * blk.d - v).abs() <= blk.d / 2.0 * 1.0001);
        }
    }
    assert_eq!(b[2].qs, [0; 32]);
    assert_eq!(b[2].d, 0.0);
}

#[test]
fn simd_selection() {
    let all = |_: Simd| true;
    let avx2_only = |l: Simd| matches!(l, Simd::Scalar | Simd::Avx2);
    let none = |l: Simd| l == Simd::Scalar;
    assert_eq!(choose(None, all), Ok(Simd::Avx512));
    assert_eq!(choose(None, avx2_only), Ok(Simd::Avx2));
    assert_eq!(choose(None, none), Ok(Simd::Scalar));
    assert_eq!(choose(Some(""), avx2_only), Ok(Simd::Avx2));
    assert_eq!(choose(Some("scalar"), all), Ok(Simd::Scalar));
    assert_eq!(choose(Some("AVX2"), all), Ok(Simd::Avx2));
    assert_eq!(choose(Some("avx512"), all), Ok(Simd::Avx512));
    assert_eq!(choose(Some("avx512"), avx2_only).unwrap_err().1, Simd::Avx2);
    assert_eq!(choose(Some("sse9"), none).unwrap_err().1, Simd::Scalar);
    assert!(Simd::Scalar.available());
    assert_eq!(Simd::detect(), kernels::simd::best(Simd::available));
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        assert_eq!(Simd::Avx2.available(), avx2 && is_x86_feature_detected!("f16c"));
        assert_eq!(
            Simd::Avx512.available(),
            Simd::Avx2.available() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
        );
        assert!(!Simd::Neon.available());
    }
    // A level the CPU lacks runs the scalar kernels instead of faulting.
    let data = [0u8; 34];
    let w = QMatrix::new(DType::Q8_0, 1, 32, &data);
    let mut y = [1.0];
    matmul_on(&w, &[1.0; 32], &mut y, Precision::Fast, Simd::Neon);
    assert_eq!(y, [0.0]);
}
