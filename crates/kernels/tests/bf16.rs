//! F16/BF16 products in bf16 (`vdpbf16ps`, hosts with AVX512_BF16; `kernels::bf16`) — BF16 weights at
//! `Fast`, F16 and BF16 weights at `Bf16`:
//! - the pairs layout holds each weight rounded to bf16 (`vcvtneps2bf16`'s rounding, by hand in
//!   `bf16::round`), sixteen rows a group, an odd last column paired with zero;
//! - every output of a packed row is, bit for bit, the scalar definition `bf16::dot` (pairs in order,
//!   the odd product first, each sum rounded) of the rounded weights and activations, for every token
//!   count (whole tiles of 24 and every remainder) — so one token alone gives the same bits as inside a
//!   prefill; rows past the last group are the exact f32 kernel's bits;
//! - every output is within the stated bound `(2u + u² + γ_cols) Σ|w x|` (`u = 2^-8`) of the exact
//!   (f64) product, and differs from the f32 path somewhere (the bf16 kernel did run);
//! - exact and wide products of the same matrix (same pack slot) are untouched: the f32 kernels' bits;
//!   F16 at `Fast` too, and everything on a host without AVX512_BF16.

mod common;

use common::*;
use kernels::packed::{uses_pairs, Packed, FLOAT_GROUP};
use kernels::simd::Simd;
use kernels::{matmul_on, DType, PackSlot, Precision, QMatrix};

fn rounded(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| kernels::bf16::round(x)).collect()
}

#[test]
fn pairs_layout_holds_the_rounded_weights() {
    let mut rng = Rng::new(21);
    for t in [DType::F16, DType::BF16] {
        let (rows, cols) = (37, 19);
        let data = random_matrix(&mut rng, t, rows, cols);
        let w = QMatrix::new(t, rows, cols, &data);
        let p = Packed::new_bf16_pairs(&w).expect("float matrix");
        assert!(p.pairs && p.dtype == DType::BF16);
        assert_eq!((p.rows, p.group_rows()), (32, FLOAT_GROUP), "{t}: whole groups only");
        assert_eq!(
            p.bytes(),
            2 * 16 * 4 * cols.div_ceil(2),
            "{t}: 10 pairs, the last padded"
        );
        let wf = float_weights(t, &data);
        for r in 0..p.rows {
            let want: Vec<u8> = rounded(&wf[r * cols..(r + 1) * cols])
                .iter()
                .flat_map(|h| h.to_le_bytes())
                .collect();
            assert_eq!(p.unpack_row(r), want, "{t} row {r}");
        }
        // BF16 weights are exact in bf16: the pairs hold the file's bytes.
        if t == DType::BF16 {
            assert_eq!(p.unpack_row(5), w.row(5));
        }
    }
    let q = vec![0u8; 34 * 16];
    assert!(Packed::new_bf16_pairs(&QMatrix::new(DType::Q8_0, 16, 32, &q)).is_none());
}

#[test]
fn bf16_products_are_the_bf16_chain() {
    let host = kernels::bf16::host();
    eprintln!(
        "AVX512_BF16 on this CPU: {host}; bf16 kernels active: {}",
        kernels::bf16::active()
    );
    let mut rng = Rng::new(17);
    for t in [DType::F16, DType::BF16] {
        // 9 whole groups and 5 rows past them, an odd width; and a wide one (pool chunks, whole pairs
        // of 32-value conversions and a remainder).
        for (rows, cols) in [(149, 203), (64, 1000)] {
            let data = random_matrix(&mut rng, t, rows, cols);
            let wf = float_weights(t, &data);
            let wb: Vec<u16> = rounded(&wf);
            let plain = QMatrix::new(t, rows, cols, &data);
            let packed_rows = rows / FLOAT_GROUP * FLOAT_GROUP;
            let gamma = {
                let nu = cols as f64 * 2f64.powi(-24);
                nu / (1.0 - nu)
            };
            let u = kernels::bf16::UNIT;
            // BF16 weights are exact in bf16: only the activations round.
            let uw = if t == DType::BF16 { 0.0 } else { u };
            for p in [Precision::Fast, Precision::Bf16] {
                let rounds = uses_pairs(t, p, Simd::Avx512);
                assert_eq!(rounds, host && (t == DType::BF16 || p == Precision::Bf16), "{t} {p:?}");
                let slot = PackSlot::new();
                let w = plain.with_pack(&slot);
                for n in [1, 2, 3, 5, 8, 13, 24, 25, 31, 53] {
                    let x = rng.vec(n * cols, 2.0);
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_on(&w, &x, &mut got, p, Simd::Avx512);
                    let mut exact = vec![f32::NAN; n * rows];
                    matmul_on(
                        &plain.with_pack(&PackSlot::new()),
                        &x,
                        &mut exact,
                        Precision::Exact,
                        Simd::Avx512,
                    );
                    if !rounds {
                        assert_eq!(got, exact, "{t} {p:?} n {n}: the f32 kernels");
                        continue;
                    }
                    let mut differs = false;
                    for ti in 0..n {
                        let xt = &x[ti * cols..(ti + 1) * cols];
                        let xb = rounded(xt);
                        for r in 0..rows {
                            let (y, e) = (got[ti * rows + r], exact[ti * rows + r]);
                            if r < packed_rows {
                                let want = kernels::bf16::dot(&wb[r * cols..(r + 1) * cols], &xb);
                                assert_eq!(
                                    y.to_bits(),
                                    want.to_bits(),
                                    "{t} {p:?} {rows}x{cols} n {n} token {ti} row {r}: {y} vs the bf16 chain {want}"
                                );
                            } else {
                                assert_eq!(y.to_bits(), e.to_bits(), "{t} {p:?} tail row {r}: the f32 kernel");
                            }
                            differs |= y != e;
                            let wr = &wf[r * cols..(r + 1) * cols];
                            let truth: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let scale: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                            let bound = (uw + u + uw * u + gamma) * scale + cols as f64 * 2f64.powi(-126);
                            assert!(
                                (y as f64 - truth).abs() <= bound,
                                "{t} {p:?} n {n} token {ti} row {r}: {y} vs {truth}, bound {bound}"
                            );
                        }
                    }
                    assert!(
                        differs,
                        "{t} {p:?} n {n}: bf16 rounds, so some output must differ from f32"
                    );
                }
                // The same slot at exact and wide: the f32 packed kernel's bits, as a fresh slot gives them.
                let x = rng.vec(7 * cols, 1.0);
                for q in [Precision::Exact, Precision::Wide] {
                    let (mut a, mut b) = (vec![0.0; 7 * rows], vec![0.0; 7 * rows]);
                    matmul_on(&w, &x, &mut a, q, Simd::Avx512);
                    matmul_on(&plain.with_pack(&PackSlot::new()), &x, &mut b, q, Simd::Avx512);
                    assert_eq!(a, b, "{t} {q:?} after {p:?}");
                }
                assert_eq!(
                    slot.pairs().is_some(),
                    rounds,
                    "{t} {p:?}: the pairs copy only where used"
                );
            }
        }
    }
}
