//! Packed F16/BF16 matrices (sixteen rows column by column, outer-product kernels on AVX2 and AVX-512):
//! - packing is a permutation (each packed row unpacks to its original bytes);
//! - every output of a packed row is, bit for bit, the recursive FMA chain `acc = fma(w_k, x_k, acc)`
//!   over `k = 0..cols` (computed here with `f32::mul_add`), on each x86 level — so AVX2 and AVX-512
//!   agree exactly — for every token count (whole tiles of 24 and 6 tokens, and every remainder);
//! - every output on every level (scalar included; rows past the last group run row-major) is within the
//!   recursive-summation bound `γ_cols · Σ|w_k x_k|` (`γ_n = n u / (1 - n u)`, `u = 2^-24`) of the
//!   exact (f64) product;
//! - one token alone gives the same bits as the same token inside passes of 7 and 64 tokens, at any
//!   place, on every level, packed or not (speculative decoding, chunked prefill and the engine's
//!   identity tests rely on it).

mod common;

use common::*;
use kernels::packed::{packable, Packed, FLOAT_GROUP};
use kernels::simd::Simd;
use kernels::{matmul_on, DType, PackSlot, Precision, QMatrix};

const FLOATS: [DType; 2] = [DType::F16, DType::BF16];

/// Whether this process packs float matrices (the active level has the kernels).
fn packs() -> bool {
    matches!(Simd::active(), Simd::Avx2 | Simd::Avx512)
}

#[test]
fn float_packing_is_a_permutation_of_the_rows() {
    let mut rng = Rng::new(5);
    for t in FLOATS {
        assert_eq!(packable(t), packs(), "{t}");
        let (rows, cols) = (37, 19);
        let data = random_matrix(&mut rng, t, rows, cols);
        let w = QMatrix::new(t, rows, cols, &data);
        let Some(p) = Packed::new(&w) else {
            assert!(!packs(), "{t}: no packed copy on {}", Simd::active());
            continue;
        };
        assert_eq!(
            (p.rows, p.group_rows()),
            (32, FLOAT_GROUP),
            "{t}: whole groups of 16 only"
        );
        assert_eq!(p.bytes(), 32 * cols * 2, "{t}");
        for r in 0..p.rows {
            assert_eq!(p.unpack_row(r), w.row(r), "{t} row {r}");
        }
    }
}

#[test]
fn packed_float_products_are_the_sequential_fma_chain() {
    let mut rng = Rng::new(9);
    let levels = Simd::available_levels();
    eprintln!("levels on this CPU: {levels:?}; packing: {}", packs());
    for t in FLOATS {
        // 9 whole groups and 5 rows past them, an odd width: one token runs on the calling thread (below
        // the pool's threshold) with 8 groups at a time, then one; more tokens in chunks of 4 groups.
        let (rows, cols) = (149, 203);
        let data = random_matrix(&mut rng, t, rows, cols);
        let wf = float_weights(t, &data);
        let slot = PackSlot::new();
        let w = QMatrix::new(t, rows, cols, &data).with_pack(&slot);
        let gamma = {
            let nu = cols as f64 * 2f64.powi(-24);
            nu / (1.0 - nu)
        };
        for n in [1, 2, 3, 5, 6, 7, 8, 13, 24, 25, 31, 53] {
            let x = rng.vec(n * cols, 2.0);
            for &l in &levels {
                for p in [Precision::Exact, Precision::Wide] {
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_on(&w, &x, &mut y, p, l);
                    let packed_level = packs() && l != Simd::Scalar;
                    if l != Simd::Scalar {
                        assert_eq!(slot.get().is_some(), packs(), "{t}: packed copy on {}", Simd::active());
                    }
                    for ti in 0..n {
                        let xt = &x[ti * cols..][..cols];
                        for r in 0..rows {
                            let wr = &wf[r * cols..][..cols];
                            let got = y[ti * rows + r];
                            let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let scale: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                            let err = (got as f64 - exact).abs();
                            assert!(
                                err <= gamma * scale,
                                "{t} {l} n {n} token {ti} row {r}: error {err:e} above γ Σ|wx| = {:e}",
                                gamma * scale
                            );
                            if packed_level && r < rows / FLOAT_GROUP * FLOAT_GROUP {
                                let chain = wr.iter().zip(xt).fold(0f32, |acc, (&a, &b)| a.mul_add(b, acc));
                                assert_eq!(
                                    got.to_bits(),
                                    chain.to_bits(),
                                    "{t} {l} {p:?} n {n} token {ti} row {r}: {got} != FMA chain {chain}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn one_token_alone_equals_the_same_token_in_a_pass() {
    let mut rng = Rng::new(13);
    for t in FLOATS {
        let (rows, cols) = (40, 96);
        let data = random_matrix(&mut rng, t, rows, cols);
        let slot = PackSlot::new();
        for pack in [false, true] {
            let mut w = QMatrix::new(t, rows, cols, &data);
            if pack {
                w = w.with_pack(&slot);
            }
            for n in [7, 64] {
                let x = rng.vec(n * cols, 1.0);
                for l in Simd::available_levels() {
                    let mut all = vec![0.0; n * rows];
                    matmul_on(&w, &x, &mut all, Precision::Exact, l);
                    for ti in 0..n {
                        let mut one = vec![0.0; rows];
                        matmul_on(&w, &x[ti * cols..(ti + 1) * cols], &mut one, Precision::Exact, l);
                        let same = one
                            .iter()
                            .zip(&all[ti * rows..])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{t} {l} packed {pack}: token {ti} of {n} differs from the token alone"
                        );
                    }
                }
            }
        }
        assert_eq!(slot.get().is_some(), packs(), "{t}");
    }
}
