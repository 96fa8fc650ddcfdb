//! LLM.int8() (Dettmers et al. 2022, lecture §5): matrix products with int8 activations *and* int8
//! weights, with the few outlier feature dimensions of the activations kept in floating point.
//!
//! For `Y = X Wᵀ` (`X`: `n x cols` tokens, `W`: `rows x cols`):
//! 1. outlier columns `O = { c : ∃t |X[t, c]| > threshold }` (default threshold 6.0);
//! 2. vector-wise int8 for the rest: each token row of `X` gets its own absmax scale `sx[t]`, each weight
//!    row (output channel) its own `sw[r]` (computed once, [`Int8Matrix`]), the dot products run in
//!    i32 and are rescaled by the outer product `sx[t] · sw[r]`;
//! 3. the outlier columns are multiplied in f32: `X[:, O] · W[:, O]ᵀ`, with `W[:, O]` dequantized from
//!    the stored matrix (only the blocks holding outlier columns are decoded).
//!
//! [`ActInt8::PerTensor`] is the baseline LLM.int8() improves on: one absmax scale for the whole `X`
//! and no outlier split, so a single large activation coarsens the grid of every other value.
//!
//! The int8 dot product has an AVX2 kernel (sign trick + `maddubs`, as llama.cpp's q8 dots) behind
//! runtime detection and [`crate::Simd::active`]; [`dot_i8_scalar`] is the reference it is tested against.

use crate::matmul::QMatrix;
use crate::quants;
use crate::simd::Simd;
use rayon::prelude::*;
use std::cell::RefCell;

/// A weight matrix quantized per output channel (row) to int8 with a symmetric absmax scale.
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows x cols` codes in `-127..=127`.
    pub q: Vec<i8>,
    /// Per row: value = `scale * code`.
    pub scale: Vec<f32>,
}

impl Int8Matrix {
    /// Quantizes every row of `w` (whatever its stored type: dequantized first), in parallel.
    pub fn quantize(w: &QMatrix) -> Int8Matrix {
        let (rows, cols) = (w.rows, w.cols);
        let mut q = vec![0i8; rows * cols];
        let mut scale = vec![0.0f32; rows];
        q.par_chunks_mut(cols.max(1))
            .zip(scale.par_iter_mut())
            .enumerate()
            .for_each_init(
                || vec![0.0f32; cols],
                |buf, (r, (qr, s))| {
                    w.dequantize_row(r, buf);
                    *s = quantize_absmax(buf, qr);
                },
            );
        Int8Matrix { rows, cols, q, scale }
    }

    /// Bytes of codes and scales.
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scale.len() * std::mem::size_of::<f32>()
    }
}

/// How activations are quantized in [`matmul_int8`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActInt8 {
    /// LLM.int8(): per-token absmax scales; feature dimensions where any `|x| > threshold` stay f32.
    /// `threshold = ∞` is plain vector-wise int8.
    Mixed { threshold: f32 },
    /// One absmax scale for the whole activation matrix, no outlier columns (the naive baseline).
    PerTensor,
}

/// Symmetric absmax quantization of `x` to `-127..=127`; returns the scale (0 for an all-zero `x`).
pub fn quantize_absmax(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    quantize_with(x, q, amax)
}

/// Quantizes `x` with the scale `amax / 127`; returns that scale (NaN when `x` holds a NaN, which
/// `amax` does not show: `f32::max` skips NaNs).
fn quantize_with(x: &[f32], q: &mut [i8], amax: f32) -> f32 {
    let amax = if x.iter().any(|v| v.is_nan()) { f32::NAN } else { amax };
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return if amax.is_finite() { 0.0 } else { amax };
    }
    let inv = 127.0 / amax;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// Feature dimensions (columns of the `n x cols` matrix `x`) where some `|x| > threshold`, ascending.
pub fn outlier_columns(x: &[f32], cols: usize, threshold: f32) -> Vec<usize> {
    let (mut out, mut mask) = (Vec::new(), Vec::new());
    outlier_columns_into(x, cols, threshold, &mut out, &mut mask);
    out
}

fn outlier_columns_into(x: &[f32], cols: usize, threshold: f32, out: &mut Vec<usize>, mask: &mut Vec<bool>) {
    out.clear();
    if threshold.is_infinite() {
        return;
    }
    mask.clear();
    mask.resize(cols, false);
    for row in x.chunks_exact(cols) {
        for (m, v) in mask.iter_mut().zip(row) {
            *m |= v.abs() > threshold;
        }
    }
    out.extend(mask.iter().enumerate().filter(|(_, &m)| m).map(|(c, _)| c));
}

/// `Σ a[i] b[i]` in i32: the reference of the SIMD kernel.
pub fn dot_i8_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// `Σ a[i] b[i]` with 32 lanes of AVX2: `|a| · (b · sign a)` by `maddubs` into i16 pairs (at most
/// 2 · 128 · 127, no saturation), then `madd` by ones into i32.
///
/// # Safety
/// The CPU must support AVX2; `a.len() == b.len()`; `b` holds no −128.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    debug_assert_eq!(a.len(), b.len());
    let n32 = a.len() / 32 * 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < n32 {
        let va = _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i);
        let vb = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
        let abs_a = _mm256_sign_epi8(va, va);
        let signed_b = _mm256_sign_epi8(vb, va);
        let pairs = _mm256_maddubs_epi16(abs_a, signed_b);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        i += 32;
    }
    let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s) + dot_i8_scalar(&a[n32..], &b[n32..])
}

/// An int8 dot product kernel.
type DotI8 = fn(&[i8], &[i8]) -> i32;

#[cfg(target_arch = "x86_64")]
fn dot_i8_avx2_checked(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len());
    // SAFETY: chosen only when AVX2 is available (`dot_for`); lengths checked; codes are in -127..=127.
    unsafe { dot_i8_avx2(a, b) }
}

/// The dot kernel for `level` (AVX2 on x86-64 levels that have it, else scalar).
fn dot_for(level: Simd) -> DotI8 {
    #[cfg(target_arch = "x86_64")]
    if matches!(level, Simd::Avx2 | Simd::Avx512) && level.available() {
        return dot_i8_avx2_checked;
    }
    let _ = level;
    dot_i8_scalar
}

/// `Σ a[i] b[i]` on the active SIMD level (codes in `-127..=127`).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    dot_for(Simd::active())(a, b)
}

/// Per-call activation buffers, reused across calls on a thread.
#[derive(Default)]
struct Scratch {
    xq: Vec<i8>,
    sx: Vec<f32>,
    outliers: Vec<usize>,
    mask: Vec<bool>,
    /// `n x outliers` f32 activations of the outlier columns.
    xo: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `y[t * rows + r] = W[r] · x[t]` for the `n = x.len() / cols` tokens of `x`, with int8 activations
/// quantized as `mode` says, against `w8` (the int8 copy of `w`); outlier columns use `w` itself.
pub fn matmul_int8(w8: &Int8Matrix, w: &QMatrix, x: &[f32], y: &mut [f32], mode: ActInt8) {
    matmul_int8_on(w8, w, x, y, mode, Simd::active())
}

/// [`matmul_int8`] on a given SIMD level (scalar when `level` is not available).
pub fn matmul_int8_on(w8: &Int8Matrix, w: &QMatrix, x: &[f32], y: &mut [f32], mode: ActInt8, level: Simd) {
    let (rows, cols) = (w8.rows, w8.cols);
    assert!(
        w.rows == rows && w.cols == cols,
        "int8 copy does not match the weight matrix"
    );
    let n = x.len() / cols;
    assert_eq!(
        x.len(),
        n * cols,
        "activation length is not a multiple of the matrix width"
    );
    assert_eq!(y.len(), n * rows, "output length does not match rows x tokens");
    if n == 0 || rows == 0 {
        return;
    }
    let mut s = SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
    quantize_activations(x, cols, mode, &mut s);
    let job = Job {
        w8,
        w,
        n,
        xq: &s.xq,
        sx: &s.sx,
        outliers: &s.outliers,
        xo: &s.xo,
        dot: dot_for(level),
        y: Out(y.as_mut_ptr()),
    };
    let threads = crate::pool::threads();
    if threads == 1 || rows * cols * n < (1 << 15) {
        job.rows(0, rows);
    } else {
        let chunk = if n == 1 { rows.div_ceil(threads * 4).max(1) } else { 32 };
        crate::pool::run(rows.div_ceil(chunk), &|c| {
            job.rows(c * chunk, rows.min((c + 1) * chunk))
        });
    }
    SCRATCH.with(|b| *b.borrow_mut() = s);
}

/// Finds the outlier columns, quantizes the other columns of `x` (outliers as 0) and gathers the outliers.
fn quantize_activations(x: &[f32], cols: usize, mode: ActInt8, s: &mut Scratch) {
    let n = x.len() / cols;
    match mode {
        ActInt8::Mixed { threshold } => outlier_columns_into(x, cols, threshold, &mut s.outliers, &mut s.mask),
        ActInt8::PerTensor => s.outliers.clear(),
    }
    s.xq.resize(n * cols, 0);
    s.sx.resize(n, 0.0);
    s.xo.clear();
    for row in x.chunks_exact(cols) {
        s.xo.extend(s.outliers.iter().map(|&c| row[c]));
    }
    let outliers = &s.outliers;
    // Absmax over the regular (non-outlier) columns of a row.
    let regular = |row: &[f32]| {
        row.iter()
            .enumerate()
            .filter(|(c, _)| outliers.is_empty() || outliers.binary_search(c).is_err())
            .fold(0.0f32, |m, (_, v)| m.max(v.abs()))
    };
    let global = match mode {
        ActInt8::PerTensor => Some(x.chunks_exact(cols).map(regular).fold(0.0f32, f32::max)),
        ActInt8::Mixed { .. } => None,
    };
    for (t, row) in x.chunks_exact(cols).enumerate() {
        let amax = global.unwrap_or_else(|| regular(row));
        let q = &mut s.xq[t * cols..(t + 1) * cols];
        s.sx[t] = quantize_with(row, q, amax);
        for &c in &s.outliers {
            q[c] = 0;
        }
    }
}

/// Output pointer shared by the row workers.
#[derive(Clone, Copy)]
struct Out(*mut f32);

struct Job<'a> {
    w8: &'a Int8Matrix,
    w: &'a QMatrix<'a>,
    n: usize,
    xq: &'a [i8],
    sx: &'a [f32],
    outliers: &'a [usize],
    xo: &'a [f32],
    dot: DotI8,
    y: Out,
}

// SAFETY: workers write disjoint rows of `y` (see `Job::rows`); everything else is shared read-only.
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    /// Outputs of weight rows `r0..r1` for every token.
    fn rows(&self, r0: usize, r1: usize) {
        let (rows, cols, k) = (self.w8.rows, self.w8.cols, self.outliers.len());
        let mut wo = vec![0.0f32; k];
        for r in r0..r1 {
            let wq = &self.w8.q[r * cols..(r + 1) * cols];
            if k > 0 {
                outlier_weights(self.w, r, self.outliers, &mut wo);
            }
            for t in 0..self.n {
                let xq = &self.xq[t * cols..(t + 1) * cols];
                let mut acc = (self.dot)(wq, xq) as f32 * (self.sx[t] * self.w8.scale[r]);
                for (a, b) in self.xo[t * k..(t + 1) * k].iter().zip(&wo) {
                    acc += a * b;
                }
                // SAFETY: `t * rows + r` is in `y` (asserted lengths), and row `r` belongs to this worker only.
                unsafe { *self.y.0.add(t * rows + r) = acc };
            }
        }
    }
}

/// `W[r, c]` for the outlier columns `cols` (ascending), decoding only the blocks that hold them.
fn outlier_weights(w: &QMatrix, r: usize, cols: &[usize], out: &mut [f32]) {
    let (bl, bb) = (w.dtype.block_len(), w.dtype.block_bytes());
    let row = w.row(r);
    let mut block = [0.0f32; 256];
    let mut current = usize::MAX;
    for (o, &c) in out.iter_mut().zip(cols) {
        let b = c / bl;
        if b != current {
            quants::dequantize_row(w.dtype, &row[b * bb..(b + 1) * bb], &mut block[..bl]);
            current = b;
        }
        *o = block[c % bl];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn rnd(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn f32_matrix(rows: usize, cols: usize, seed: &mut u64) -> (Vec<f32>, Vec<u8>) {
        let v: Vec<f32> = (0..rows * cols).map(|_| rnd(seed)).collect();
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        (v, bytes)
    }

    /// The SIMD dot equals the scalar one exactly, at every length (tails included) and at the extremes.
    #[test]
    fn dot_matches_scalar() {
        let mut seed = 3u64;
        for len in [0usize, 1, 7, 31, 32, 33, 64, 95, 288, 1000] {
            let a: Vec<i8> = (0..len).map(|_| (rnd(&mut seed) * 127.0).round() as i8).collect();
            let b: Vec<i8> = (0..len).map(|_| (rnd(&mut seed) * 127.0).round() as i8).collect();
            for level in Simd::available_levels() {
                assert_eq!(dot_for(level)(&a, &b), dot_i8_scalar(&a, &b), "len {len} {level:?}");
            }
        }
        let (a, b) = (vec![-127i8; 64], vec![-127i8; 64]);
        for level in Simd::available_levels() {
            assert_eq!(dot_for(level)(&a, &b), 64 * 127 * 127);
            assert_eq!(dot_for(level)(&a, &[127i8; 64]), -64 * 127 * 127);
        }
    }

    #[test]
    fn outliers_are_columns_over_the_threshold() {
        // 2 tokens x 4 features: column 1 exceeds 6 in token 0, column 3 in token 1 (negative).
        let x = [0.5, 7.0, -6.0, 1.0, 2.0, 0.1, 5.9, -9.5];
        assert_eq!(outlier_columns(&x, 4, 6.0), vec![1, 3]);
        assert_eq!(outlier_columns(&x, 4, 10.0), Vec::<usize>::new());
        assert_eq!(outlier_columns(&x, 4, f32::INFINITY), Vec::<usize>::new());
    }

    /// Reference of the mixed product in f64 from the definition, straight from the codes.
    fn reference(w8: &Int8Matrix, wf: &[f32], x: &[f32], threshold: f32) -> Vec<f32> {
        let (rows, cols) = (w8.rows, w8.cols);
        let outl = outlier_columns(x, cols, threshold);
        let mut y = Vec::new();
        for row in x.chunks_exact(cols) {
            let reg: Vec<f32> = (0..cols)
                .map(|c| if outl.contains(&c) { 0.0 } else { row[c] })
                .collect();
            let mut q = vec![0i8; cols];
            let sx = quantize_absmax(&reg, &mut q);
            for r in 0..rows {
                let mut acc = 0.0f64;
                for (&a, &b) in q.iter().zip(&w8.q[r * cols..(r + 1) * cols]) {
                    acc += a as f64 * b as f64 * sx as f64 * w8.scale[r] as f64;
                }
                for &c in &outl {
                    acc += row[c] as f64 * wf[r * cols + c] as f64;
                }
                y.push(acc as f32);
            }
        }
        y
    }

    /// Every SIMD level and thread split gives the reference's result; the outlier columns are exact.
    #[test]
    fn mixed_matches_reference() {
        let mut seed = 11u64;
        let (rows, cols, n) = (70, 96, 5);
        let (wf, bytes) = f32_matrix(rows, cols, &mut seed);
        let w = QMatrix::new(DType::F32, rows, cols, &bytes);
        let w8 = Int8Matrix::quantize(&w);
        let mut x: Vec<f32> = (0..n * cols).map(|_| rnd(&mut seed) * 3.0).collect();
        x[2 * cols + 17] = 40.0;
        x[4 * cols + 60] = -25.0;
        let want = reference(&w8, &wf, &x, 6.0);
        for level in Simd::available_levels() {
            let mut y = vec![0.0; n * rows];
            matmul_int8_on(&w8, &w, &x, &mut y, ActInt8::Mixed { threshold: 6.0 }, level);
            let err = y.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "{level:?}: max difference from the reference {err}");
        }
    }

    /// Outliers hurt the per-tensor scale and not LLM.int8(); both stay near the f32 product otherwise.
    #[test]
    fn outliers_kept_in_f32_beat_per_tensor() {
        let mut seed = 5u64;
        let (rows, cols, n) = (64, 128, 4);
        let (wf, bytes) = f32_matrix(rows, cols, &mut seed);
        let w = QMatrix::new(DType::F32, rows, cols, &bytes);
        let w8 = Int8Matrix::quantize(&w);
        let mut x: Vec<f32> = (0..n * cols).map(|_| rnd(&mut seed)).collect();
        for t in 0..n {
            x[t * cols + 3] = 60.0;
        }
        let exact: Vec<f32> = x
            .chunks_exact(cols)
            .flat_map(|xt| {
                wf.chunks_exact(cols)
                    .map(move |wr| wr.iter().zip(xt).map(|(a, b)| a * b).sum::<f32>())
            })
            .collect();
        let err = |mode| {
            let mut y = vec![0.0; n * rows];
            matmul_int8(&w8, &w, &x, &mut y, mode);
            y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
        };
        let (mixed, tensor) = (err(ActInt8::Mixed { threshold: 6.0 }), err(ActInt8::PerTensor));
        assert!(mixed < 0.15, "LLM.int8 error {mixed}");
        assert!(tensor > 3.0 * mixed, "per-tensor error {tensor} vs LLM.int8 {mixed}");
    }

    /// Outlier weights come from any block type: a Q8_0 matrix's outlier column equals its dequantized value.
    #[test]
    fn outlier_weights_from_blocks() {
        let mut seed = 9u64;
        let (rows, cols) = (3, 64);
        let v: Vec<f32> = (0..rows * cols).map(|_| rnd(&mut seed)).collect();
        let mut bytes = Vec::new();
        for r in v.chunks_exact(32) {
            let amax = r.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let d = half::f16::from_f32(amax / 127.0);
            bytes.extend(d.to_le_bytes());
            bytes.extend(r.iter().map(|x| (x / d.to_f32()).round() as i8 as u8));
        }
        let w = QMatrix::new(DType::Q8_0, rows, cols, &bytes);
        let mut full = vec![0.0; cols];
        let mut got = [0.0f32; 3];
        for r in 0..rows {
            w.dequantize_row(r, &mut full);
            outlier_weights(&w, r, &[1, 40, 63], &mut got);
            assert_eq!(got, [full[1], full[40], full[63]]);
        }
    }
}
