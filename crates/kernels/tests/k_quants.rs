//! K-quant (Q2_K-Q6_K, and Q5_0 / Q5_1) dequantization bit-exact against gguf-py (fixtures made by fixtures/make_kquants.py), and
//! the exact dot product equal to the dot with the dequantized row.

use kernels::quants::{dequantize_row, dot_row, supported};
use kernels::DType;

fn fixture(name: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let blocks = std::fs::read(format!("{dir}{name}.blocks")).unwrap();
    let values = std::fs::read(format!("{dir}{name}.f32")).unwrap();
    (
        blocks,
        values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

const TYPES: [(&str, DType); 7] = [
    ("q4_k", DType::Q4K),
    ("q5_k", DType::Q5K),
    ("q6_k", DType::Q6K),
    ("q5_0", DType::Q5_0),
    ("q5_1", DType::Q5_1),
    ("q2_k", DType::Q2K),
    ("q3_k", DType::Q3K),
];

#[test]
fn dequantize_bit_exact_vs_gguf_py() {
    for (name, t) in TYPES {
        assert!(supported(t));
        let (blocks, want) = fixture(name);
        assert_eq!(blocks.len(), t.bytes_for(want.len()).unwrap());
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(t, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}: value {i}: {g} vs gguf-py {w}");
        }
    }
}

#[test]
fn dot_equals_dequantized_dot() {
    for (name, t) in TYPES {
        let (blocks, w) = fixture(name);
        let x: Vec<f32> = (0..w.len()).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let want: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let scale: f64 = w.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
        let got = dot_row(t, &blocks, &x) as f64;
        assert!((got - want).abs() <= 1e-5 * scale, "{name}: {got} vs {want}");
    }
}
