//! `--check-tensors` (as llama.cpp's): every value of every tensor of a model file, dequantized row by
//! row, must be finite. A NaN or an infinity in the weights would otherwise surface only as
//! non-finite logits, later, at the first token that meets it ([`super::llama`] stops there too).
//! On by default for files under [`AUTO_LIMIT`], whose check takes a fraction of a second.

use super::loader::ModelFile;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Files smaller than this are checked unless `--no-check-tensors`.
pub const AUTO_LIMIT: u64 = 1 << 30;

/// Whether to check `file`: `asked` (`--check-tensors` / `--no-check-tensors`), else by its size.
pub fn wanted(asked: Option<bool>, file: &ModelFile) -> bool {
    asked.unwrap_or(file.file_bytes < AUTO_LIMIT)
}

/// Fails at the first tensor (in name order) holding a NaN or an infinity, naming it and the element.
pub fn check_tensors(file: &ModelFile) -> Result<()> {
    let mut names: Vec<&String> = file.tensors.keys().collect();
    names.sort();
    let bad: Vec<Option<(usize, f32)>> = names
        .par_iter()
        .map(|name| {
            let t = &file.tensors[*name];
            // A type bushu cannot decode is refused, with its name, when the model is built.
            if !kernels::quants::supported(t.dtype) {
                return None;
            }
            let m = t.matrix();
            let mut row = vec![0.0f32; m.cols];
            for r in 0..m.rows {
                m.dequantize_row(r, &mut row);
                if let Some(i) = row.iter().position(|v| !v.is_finite()) {
                    return Some((r * m.cols + i, row[i]));
                }
            }
            None
        })
        .collect();
    if let Some((name, (at, v))) = names.iter().zip(bad).find_map(|(n, b)| b.map(|b| (n, b))) {
        bail!(
            "tensor {name} holds {v} at element {at}: the model file is damaged (--no-check-tensors skips this check)"
        );
    }
    Ok(())
}
