//! Requantizing a loaded model's matrices in memory (`--draft-quant`): a draft model only proposes
//! tokens — the target decides every one — so its weights can be stored in fewer bits than its file's
//! and read faster per token, at the price of some agreement with the target. Each matrix stored in
//! more bytes per weight than the chosen type is dequantized row by row and encoded as that type
//! (llama-quantize's encoders, [`super::gguf_types`]); the others, and every vector, stay as they are.

use super::gguf_types::quantize_row;
use crate::formats::Tensor;
use anyhow::{bail, Result};
use kernels::DType;
use rayon::prelude::*;
use std::collections::HashMap;

/// The types `--draft-quant` accepts: llama.cpp's block types bushu has packed kernels for (each one
/// [`super::gguf_types`] encodes).
pub const DRAFT_TYPES: [DType; 4] = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0];

/// `name` (any case) as one of [`DRAFT_TYPES`], or an error naming them.
pub fn parse_draft_type(name: &str) -> Result<DType> {
    match DType::from_name(name).filter(|d| DRAFT_TYPES.contains(d)) {
        Some(d) => Ok(d),
        None => bail!(
            "--draft-quant must be one of {} (got {name:?})",
            DRAFT_TYPES.map(|d| d.name().to_ascii_lowercase()).join(", ")
        ),
    }
}

/// Bytes per weight of `dtype` (`None` for a type without a fixed block size).
fn bytes_per_weight(dtype: DType) -> Option<f64> {
    Some(dtype.bytes_for(dtype.block_len())? as f64 / dtype.block_len() as f64)
}

/// Whether [`requantize`] re-encodes `t` as `dtype`: a matrix, stored in more bytes per weight than
/// `dtype`, whose rows are whole blocks of it.
fn worth(t: &Tensor, dtype: DType) -> bool {
    let (Some(now), Some(then)) = (bytes_per_weight(t.dtype), bytes_per_weight(dtype)) else {
        return false;
    };
    t.shape.len() == 2 && now > then && t.shape[0].is_multiple_of(dtype.block_len())
}

/// Rows re-encoded per task of [`reencode`].
const ROWS_PER_TASK: usize = 64;

/// `t` re-encoded as `dtype`, in memory (its rows in parallel).
fn reencode(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let m = t.matrix();
    let chunks: Vec<Result<Vec<u8>>> = (0..m.rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|c| {
            let mut row = vec![0.0f32; m.cols];
            let mut out = Vec::new();
            for r in c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(m.rows) {
                m.dequantize_row(r, &mut row);
                quantize_row(dtype, &row, &mut out)?;
            }
            Ok(out)
        })
        .collect();
    let mut bytes = Vec::with_capacity(dtype.bytes_for(t.numel()).unwrap_or(0));
    for c in chunks {
        bytes.extend_from_slice(&c?);
    }
    Ok(Tensor::owned(&t.name, dtype, t.shape.clone(), bytes))
}

/// The bytes `matrices` would take with those [`requantize`] re-encodes as `dtype` re-encoded (the
/// matrices a pass reads: `bushu run` tells how much a draft would save).
pub fn bytes_as<'a>(matrices: impl Iterator<Item = &'a Tensor>, dtype: DType) -> usize {
    matrices
        .map(|t| match worth(t, dtype) {
            true => dtype.bytes_for(t.numel()).unwrap_or(t.nbytes),
            false => t.nbytes,
        })
        .sum()
}

/// Re-encodes every matrix of `tensors` (under GGUF names) stored in more bytes per weight than `dtype`
/// as `dtype` — but the token embedding of a model with its own classifier (`output.weight`): a pass
/// reads one row of it per token, not worth re-encoding; returns the bytes of all tensors before and
/// after.
pub fn requantize(tensors: &mut HashMap<String, Tensor>, dtype: DType) -> Result<(usize, usize)> {
    if !DRAFT_TYPES.contains(&dtype) {
        bail!("cannot requantize to {dtype}");
    }
    let before = tensors.values().map(|t| t.nbytes).sum();
    let own_head = tensors.contains_key("output.weight");
    for (name, t) in tensors.iter_mut() {
        if worth(t, dtype) && !(own_head && name == "token_embd.weight") {
            *t = reencode(t, dtype)?;
        }
    }
    Ok((before, tensors.values().map(|t| t.nbytes).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::gguf_types::quantize_matrix;

    /// A matrix in `dtype` holding `x` (rows of `cols`).
    fn matrix(name: &str, dtype: DType, x: &[f32], cols: usize) -> Tensor {
        Tensor::owned(
            name,
            dtype,
            vec![cols, x.len() / cols],
            quantize_matrix(dtype, x, cols).unwrap(),
        )
    }

    /// Q8_0 and F16 matrices become exactly what llama-quantize's Q4_0 encoder makes of their values;
    /// a Q4_0 matrix (no more bytes per weight), a vector, a matrix whose rows are not whole blocks and
    /// the token embedding of a model with its own classifier stay untouched; a tied embedding (the
    /// classifier) is re-encoded.
    #[test]
    fn heavier_matrices_become_the_type_others_stay() {
        let cols = 64;
        let x: Vec<f32> = (0..cols * 5).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let mut tensors = HashMap::new();
        for (name, dtype) in [("q8", DType::Q8_0), ("f16", DType::F16), ("q4", DType::Q4_0)] {
            tensors.insert(name.to_string(), matrix(name, dtype, &x, cols));
        }
        tensors.insert("norm".into(), Tensor::from_f32("norm", vec![cols], &x[..cols]));
        let odd: Vec<f32> = x[..48 * 5].to_vec();
        tensors.insert("odd".into(), matrix("odd", DType::F16, &odd, 48));
        // Beside a classifier of its own, the token embedding stays.
        tensors.insert(
            "token_embd.weight".into(),
            matrix("token_embd.weight", DType::F16, &x, cols),
        );
        tensors.insert("output.weight".into(), matrix("output.weight", DType::Q4_0, &x, cols));
        let old: HashMap<String, Vec<u8>> = tensors.iter().map(|(k, t)| (k.clone(), t.bytes().to_vec())).collect();
        // What bytes_as foretells of the matrices a pass reads (all but the embedding here).
        let read = |t: &HashMap<String, Tensor>| {
            t.iter()
                .filter(|(k, _)| *k != "token_embd.weight")
                .map(|(_, t)| t)
                .cloned()
                .collect::<Vec<_>>()
        };
        let as_q4 = bytes_as(read(&tensors).iter(), DType::Q4_0);
        let (before, after) = requantize(&mut tensors, DType::Q4_0).unwrap();
        assert!(after < before);
        assert_eq!(as_q4, read(&tensors).iter().map(|t| t.nbytes).sum::<usize>());
        for name in ["q8", "f16"] {
            let t = &tensors[name];
            let want = quantize_matrix(DType::Q4_0, &matrix("w", old_type(name), &x, cols).to_f32(), cols).unwrap();
            assert_eq!(
                (t.dtype, t.shape.clone(), t.bytes()),
                (DType::Q4_0, vec![cols, 5], &want[..]),
                "{name}"
            );
        }
        let mut tied = HashMap::from([("token_embd.weight".to_string(), matrix("e", DType::F16, &x, cols))]);
        requantize(&mut tied, DType::Q4_0).unwrap();
        assert_eq!(
            tied["token_embd.weight"].dtype,
            DType::Q4_0,
            "a tied embedding is the classifier"
        );
        for name in ["q4", "norm", "odd", "token_embd.weight"] {
            assert_eq!(tensors[name].bytes(), &old[name][..], "{name} untouched");
        }
        assert!(requantize(&mut tensors, DType::Q4K).is_err());
    }

    fn old_type(name: &str) -> DType {
        match name {
            "q8" => DType::Q8_0,
            _ => DType::F16,
        }
    }

    #[test]
    fn draft_types_parse_in_any_case() {
        assert_eq!(parse_draft_type("q4_0").unwrap(), DType::Q4_0);
        assert_eq!(parse_draft_type("Q8_0").unwrap(), DType::Q8_0);
        let e = parse_draft_type("q4_k").unwrap_err().to_string();
        assert!(e.contains("q4_0, q4_1, q5_0, q8_0"), "{e}");
    }
}
