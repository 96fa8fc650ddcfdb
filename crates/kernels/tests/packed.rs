//! Packed (eight interleaved rows) weights: the layout holds the original bytes (rearranged; K-quant
//! scales unpacked to bytes, Q3_K's codes as nibbles) and unpacks to them exactly, and fast
//! products through it equal the row-major fast products on every SIMD level — within 1e-5 of `Σ|w x|`
//! (the integer sums are identical; only the f32 block sums reorder) — for row counts with and without
//! a partial last group, and batch sizes 1..=15 (token tiles of 8 or 4 and every size of last tile), each
//! token's result the same bits as when it is the only one.

mod common;

use common::*;
use kernels::packed::{packable, Packed};
use kernels::simd::Simd;
use kernels::{matmul_many_on, matmul_on, DType, PackSlot, Precision, QMatrix};

const PACKED: [DType; 9] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::Q2K,
    DType::Q3K,
    DType::Q5_0,
];

#[test]
fn packing_is_a_permutation_of_the_rows() {
    let mut rng = Rng::new(3);
    for t in PACKED {
        assert!(packable(t));
        let (rows, cols) = (21, 2 * t.block_len());
        let data = random_matrix(&mut rng, t, rows, cols);
        let w = QMatrix::new(t, rows, cols, &data);
        let p = Packed::new(&w).expect("packable");
        assert_eq!(p.rows, 16, "{t}: whole groups only");
        // Q4_K and Q5_K: scales and mins unpacked to bytes (4 more per row and block); Q3_K: its
        // scales as bytes and its codes as nibbles (36 more); Q5_0, Q6_K and the rest: the file's size.
        let extra = match t {
            DType::Q4K | DType::Q5K => 16 * 2 * 4,
            DType::Q3K => 16 * 2 * 36,
            _ => 0,
        };
        assert_eq!(p.bytes(), t.bytes_for(16 * cols).unwrap() + extra, "{t}");
        for r in 0..p.rows {
            assert_eq!(p.unpack_row(r), w.row(r), "{t} row {r}");
        }
    }
    // F16 packs only where the active level has its kernels (tests/packed_float.rs).
    assert_eq!(
        packable(DType::F16),
        matches!(Simd::active(), Simd::Avx2 | Simd::Avx512)
    );
    let d = random_matrix(&mut rng, DType::Q8_0, 7, 32);
    assert!(
        Packed::new(&QMatrix::new(DType::Q8_0, 7, 32, &d)).is_none(),
        "fewer rows than a group"
    );
}

#[test]
fn packed_products_equal_row_major_ones() {
    let mut rng = Rng::new(5);
    let levels: Vec<Simd> = Simd::available_levels()
        .into_iter()
        .filter(|l| *l != Simd::Scalar)
        .collect();
    eprintln!("levels with packed kernels: {levels:?}");
    for t in PACKED {
        for rows in [8, 13, 40] {
            let cols = if t == DType::Q5_0 { 640 } else { 3 * t.block_len() };
            let data = random_matrix(&mut rng, t, rows, cols);
            let plain = QMatrix::new(t, rows, cols, &data);
            for n in 1..=15 {
                let x = rng.vec(n * cols, 2.0);
                let s = abs_scale(t, &data, rows, cols, &x);
                for &l in &levels {
                    let slot = PackSlot::new();
                    let packed = plain.with_pack(&slot);
                    let mut want = vec![0.0; n * rows];
                    matmul_on(&plain, &x, &mut want, Precision::Fast, l);
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_on(&packed, &x, &mut got, Precision::Fast, l);
                    assert!(slot.get().is_some(), "{t} {l}: the pack was made");
                    let e = worst(&got, &want, &s);
                    assert!(e <= 1e-5, "{t} {l}: rows {rows} n {n}: rel err {e}");
                    // Batching does not change a token's result, wherever its tile.
                    for i in 0..n {
                        let mut one = vec![0.0; rows];
                        matmul_on(&packed, &x[i * cols..(i + 1) * cols], &mut one, Precision::Fast, l);
                        let same = one
                            .iter()
                            .zip(&got[i * rows..])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{t} {l}: token {i} alone vs in a batch of {n}");
                    }
                }
            }
        }
    }
}

/// The AVX-512 level runs two groups (sixteen rows) per 512-bit vector, Q8_0 with unsigned-shifted codes
/// and an integer correction, and the wide (int16) products on the activations' two byte planes (or,
/// eight rows at a time, with `vpdpwssd`): per row the same integers and float operations as the
/// 256-bit AVX2 kernels, so the two levels agree bit for bit — for pairs of groups, an odd last group,
/// token tiles of 8 and 4 with their tails, and rows long enough (4352 columns) that a host which
/// decodes short rows eight at a time (AMD) takes the sixteen-row kernels for one to three tokens too.
#[test]
fn sixteen_row_kernels_equal_eight_row_ones_bit_for_bit() {
    if !Simd::Avx512.available() || !Simd::Avx2.available() {
        eprintln!("skipped: this CPU lacks AVX-512 (F/BW/VL/VNNI) or AVX2");
        return;
    }
    let mut rng = Rng::new(23);
    for t in PACKED {
        for (rows, cols) in [(16, 0), (24, 0), (45, 0), (24, 4352)] {
            let cols = if cols == 0 { 2 * t.block_len() } else { cols };
            let data = random_matrix(&mut rng, t, rows, cols);
            let plain = QMatrix::new(t, rows, cols, &data);
            let slot = PackSlot::new();
            let packed = plain.with_pack(&slot);
            for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 17] {
                let x = rng.vec(n * cols, 2.0);
                for p in [Precision::Fast, Precision::Wide] {
                    let mut avx2 = vec![0.0; n * rows];
                    matmul_on(&packed, &x, &mut avx2, p, Simd::Avx2);
                    let mut avx512 = vec![f32::NAN; n * rows];
                    matmul_on(&packed, &x, &mut avx512, p, Simd::Avx512);
                    let same = avx2.iter().zip(&avx512).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{t} {p:?}: rows {rows} n {n}: AVX-512 differs from AVX2");
                }
            }
        }
    }
}

#[test]
fn exact_products_ignore_the_pack() {
    let mut rng = Rng::new(9);
    let (t, rows, cols) = (DType::Q4_0, 16, 64);
    let data = random_matrix(&mut rng, t, rows, cols);
    let slot = PackSlot::new();
    let w = QMatrix::new(t, rows, cols, &data).with_pack(&slot);
    let x = rng.vec(cols, 1.0);
    let mut y = vec![0.0; rows];
    matmul_on(&w, &x, &mut y, Precision::Exact, Simd::active());
    assert!(!slot.is_ready(), "f32-activation products never pack");
}

#[test]
fn a_deferred_slot_waits_for_its_packer() {
    let mut rng = Rng::new(17);
    let (t, rows, cols) = (DType::Q4_0, 16, 64);
    let data = random_matrix(&mut rng, t, rows, cols);
    let plain = QMatrix::new(t, rows, cols, &data);
    let x = rng.vec(cols, 1.0);
    let mut want = vec![0.0; rows];
    matmul_on(&plain, &x, &mut want, Precision::Fast, Simd::active());
    let slot = PackSlot::new();
    slot.defer();
    let w = plain.with_pack(&slot);
    let mut y = vec![0.0; rows];
    matmul_on(&w, &x, &mut y, Precision::Fast, Simd::active());
    assert!(!slot.is_ready(), "a deferred slot is not filled by a product");
    assert_eq!(y, want, "row-major until packed");
    slot.fill_serial(&plain, Precision::Fast);
    assert!(slot.get().is_some(), "filled by the packer");
    // Filled but not released: still the row-major kernels, bit for bit (which kernel runs never
    // depends on how far a background packer has got).
    matmul_on(&w, &x, &mut y, Precision::Fast, Simd::active());
    assert_eq!(y, want, "row-major until released");
    slot.release();
    matmul_on(&w, &x, &mut y, Precision::Fast, Simd::active());
    let mut packed = vec![0.0; rows];
    let fresh = PackSlot::new();
    matmul_on(
        &plain.with_pack(&fresh),
        &x,
        &mut packed,
        Precision::Fast,
        Simd::active(),
    );
    assert_eq!(y, packed, "released: the packed kernels");
}

#[test]
fn wide_products_are_exact_to_int16_rounding() {
    let mut rng = Rng::new(13);
    let levels: Vec<Simd> = Simd::available_levels()
        .into_iter()
        .filter(|l| *l != Simd::Scalar)
        .collect();
    for t in PACKED {
        for rows in [8, 13, 40] {
            let cols = 2 * t.block_len();
            let data = random_matrix(&mut rng, t, rows, cols);
            let plain = QMatrix::new(t, rows, cols, &data);
            for n in 1..=7 {
                let x = rng.vec(n * cols, 2.0);
                let s = abs_scale(t, &data, rows, cols, &x);
                let mut want = vec![0.0; n * rows];
                matmul_on(&plain, &x, &mut want, Precision::Exact, Simd::Scalar);
                for &l in &levels {
                    let slot = PackSlot::new();
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_on(&plain.with_pack(&slot), &x, &mut got, Precision::Wide, l);
                    for i in 0..n {
                        let mut one = vec![0.0; rows];
                        let xi = &x[i * cols..(i + 1) * cols];
                        matmul_on(&plain.with_pack(&slot), xi, &mut one, Precision::Wide, l);
                        let same = one
                            .iter()
                            .zip(&got[i * rows..])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{t} {l}: wide token {i} alone vs in a batch of {n}");
                    }
                    let e = worst(&got, &want, &s);
                    // int16 rounding: half a step of 1/32767 of each block's largest |x|.
                    assert!(e <= 1e-4, "{t} {l}: rows {rows} n {n}: rel err {e}");
                    let mut fast = vec![0.0; n * rows];
                    matmul_on(&plain, &x, &mut fast, Precision::Fast, l);
                    let ef = worst(&fast, &want, &s);
                    assert!(e * 20.0 < ef, "{t} {l}: wide error {e} is not far below int8's {ef}");
                }
            }
        }
    }
}

/// The first rows of a packed matrix (a draft's restricted classifier) multiply as those rows of the
/// whole product: bit for bit in the packed groups, within 1e-5 in the rows past them; the copy made
/// is the whole matrix's.
#[test]
fn first_rows_products() {
    let mut rng = Rng::new(9);
    for t in PACKED {
        let (rows, cols) = (40, 2 * t.block_len());
        let data = random_matrix(&mut rng, t, rows, cols);
        let slot = PackSlot::new();
        let full = QMatrix::new(t, rows, cols, &data).with_pack(&slot);
        for n in [3, 16, 21, 40] {
            for tokens in [1, 5] {
                let x = rng.vec(tokens * cols, 2.0);
                let s = abs_scale(t, &data, rows, cols, &x);
                for precision in [Precision::Fast, Precision::Wide] {
                    let mut want = vec![0.0; tokens * rows];
                    matmul_on(&full, &x, &mut want, precision, Simd::detect());
                    let part = full.first_rows(n);
                    assert_eq!(part.rows, n);
                    let mut got = vec![f32::NAN; tokens * n];
                    matmul_on(&part, &x, &mut got, precision, Simd::detect());
                    assert_eq!(slot.get().map(|p| p.rows), Some(40), "{t}: the whole matrix packed");
                    for tok in 0..tokens {
                        let (g, w) = (&got[tok * n..(tok + 1) * n], &want[tok * rows..tok * rows + n]);
                        let grouped = n / 8 * 8;
                        assert_eq!(g[..grouped], w[..grouped], "{t} {precision:?} n {n}");
                        let e = worst(&g[grouped..], &w[grouped..n], &s[tok * rows + grouped..tok * rows + n]);
                        assert!(e <= 1e-5, "{t} {precision:?} n {n}: {e}");
                    }
                }
            }
        }
    }
}

/// `matmul_many` runs several matrices of one width in one parallel loop (activations prepared once,
/// decode chunks of decreasing size across all of them): each output is the same bits as its own
/// `matmul_on` call — packed types mixed, float types (F16, BF16: f32 tiles or bf16 pairs), partial
/// last groups (their rows row-major after the loop), decode and prefill, every precision and level;
/// and where one matrix cannot join (a quantized type beside a float one, no pack slot, `Exact` for a
/// quantized type) the call falls back to one product each, with the same results.
#[test]
fn many_matrices_in_one_loop_equal_one_call_each() {
    let mut rng = Rng::new(31);
    let cols = 1280;
    let shapes = [
        (DType::Q4K, 300),
        (DType::Q6K, 64),
        (DType::Q8_0, 45),
        (DType::Q5_0, 200),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(t, rows)| random_matrix(&mut rng, t, rows, cols))
        .collect();
    // Float matrices (F16, F16, BF16): f32 tiles or bf16 pairs, in a loop of their own.
    let floats = [(DType::F16, 24), (DType::F16, 40), (DType::BF16, 72)];
    let fdata: Vec<Vec<u8>> = floats
        .iter()
        .map(|&(t, rows)| random_matrix(&mut rng, t, rows, cols))
        .collect();
    for l in Simd::available_levels() {
        for p in [Precision::Fast, Precision::Wide, Precision::Exact, Precision::Bf16] {
            for n in [1, 2, 5, 33] {
                let x = rng.vec(n * cols, 2.0);
                let sets = [
                    &[0, 1, 2][..],
                    &[0, 3],
                    &[1, 2, 3, 0],
                    &[2, 4],
                    &[0, 5],
                    &[4, 6],
                    &[6, 7, 4],
                ];
                for set in sets {
                    let slots: Vec<PackSlot> = (0..8).map(|_| PackSlot::new()).collect();
                    let ws: Vec<QMatrix> = set
                        .iter()
                        .map(|&i| match i {
                            4 | 6 | 7 => {
                                let k = [0, 0, 1, 2][i - 4];
                                QMatrix::new(floats[k].0, floats[k].1, cols, &fdata[k]).with_pack(&slots[i])
                            }
                            // No pack slot: this set runs one product each.
                            5 => QMatrix::new(shapes[0].0, shapes[0].1, cols, &data[0]),
                            _ => QMatrix::new(shapes[i].0, shapes[i].1, cols, &data[i]).with_pack(&slots[i]),
                        })
                        .collect();
                    let want: Vec<Vec<f32>> = ws
                        .iter()
                        .map(|w| {
                            let mut y = vec![0.0; n * w.rows];
                            matmul_on(w, &x, &mut y, p, l);
                            y
                        })
                        .collect();
                    let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
                    let mut ys: Vec<&mut [f32]> = got.iter_mut().map(|y| y.as_mut_slice()).collect();
                    matmul_many_on(&ws, &x, &mut ys, p, l);
                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                        let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{l} {p:?} n {n} set {set:?}: matrix {k} differs from its own call"
                        );
                    }
                }
            }
        }
    }
}
