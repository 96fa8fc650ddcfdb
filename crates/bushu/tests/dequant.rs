//! Dequantization of every tensor of the shared GGUF models, bit for bit against the gguf Python
//! package's `gguf.quants.dequantize` (fixtures made by scripts/refs/make_dequant_refs.py).

mod common;
use bushu::formats::gguf::Gguf;
use common::{f32s, fixture, read_json, shared};

fn check(model: &str) {
    let refs = read_json(&fixture(&format!("dequant/{model}.json")));
    let g = Gguf::open(&shared(&format!("models/{model}.gguf"))).unwrap();
    let tensors = refs["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), g.tensors.len());
    for r in tensors {
        let name = r["name"].as_str().unwrap();
        let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.dtype.name(), r["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let values = t.to_f32();
        let first = f32s(&r["first64"]);
        for (i, (a, b)) in values.iter().zip(&first).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
        }
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let sumsq: f64 = values.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let (rs, rq) = (r["sum"].as_f64().unwrap(), r["sum_sq"].as_f64().unwrap());
        assert!(
            (sum - rs).abs() <= 1e-9 * rs.abs().max(1.0),
            "{name}: sum {sum} vs {rs}"
        );
        assert!(
            (sumsq - rq).abs() <= 1e-9 * rq.abs().max(1.0),
            "{name}: sum of squares {sumsq} vs {rq}"
        );
    }
}

#[test]
fn f16_matches_gguf_py() {
    check("tiny-llama-f16");
}

#[test]
fn q8_0_matches_gguf_py() {
    check("tiny-llama-q8_0");
}

#[test]
fn q4_0_matches_gguf_py() {
    check("tiny-llama-q4_0");
}
