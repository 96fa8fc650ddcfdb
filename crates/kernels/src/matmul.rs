//! Products of a stored weight matrix with f32 activations: `y = W x` for one token (decode) or for a
//! batch of tokens (prefill), split by rows of `W` across the thread pool. Each weight row is read once
//! per call, whatever the batch size.

use crate::dtype::DType;
use crate::quants;
use rayon::prelude::*;

/// A borrowed weight matrix of `rows x cols` elements of type `dtype`, row-major; each row is a whole
/// number of blocks.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        debug_assert_eq!(Some(data.len()), dtype.bytes_for(cols).map(|b| b * rows));
        QMatrix { dtype, rows, cols, data }
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quants::dequantize_row(self.dtype, self.row(r), out)
    }
}

/// Rows handled per parallel task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// `y[t] = W x[t]` for each of the `n = x.len() / cols` tokens; `y` holds `n * rows` values, token-major.
pub fn matmul(w: &QMatrix, x: &[f32], y: &mut [f32]) {
    let n = x.len() / w.cols;
    assert_eq!(x.len(), n * w.cols, "activation length is not a multiple of the matrix width");
    assert_eq!(y.len(), n * w.rows, "output length does not match rows x tokens");
    if n == 1 {
        y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, ys)| {
            let r0 = c * ROWS_PER_TASK;
            for (i, yv) in ys.iter_mut().enumerate() {
                *yv = quants::dot_row(w.dtype, w.row(r0 + i), x);
            }
        });
        return;
    }
    // Batched: compute a tile of rows for every token, then scatter into the token-major output.
    let tiles: Vec<(usize, Vec<f32>)> = (0..w.rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
            let mut tile = vec![0.0f32; (r1 - r0) * n];
            for r in r0..r1 {
                let row = w.row(r);
                for (t, xt) in x.chunks_exact(w.cols).enumerate() {
                    tile[(r - r0) * n + t] = quants::dot_row(w.dtype, row, xt);
                }
            }
            (r0, tile)
        })
        .collect();
    for (r0, tile) in tiles {
        let nr = tile.len() / n;
        for i in 0..nr {
            for t in 0..n {
                y[t * w.rows + r0 + i] = tile[i * n + t];
            }
        }
    }
}
