//! Products of a stored weight matrix with f32 activations: `y = W x` for one token (decode) or for a
//! batch of tokens (prefill), split by rows of `W` across the thread pool. Each weight row is read once
//! per tile of tokens (4 in prefill), whatever the batch size, and a call allocates nothing once warm.
//!
//! Two precisions: [`Precision::Exact`] computes with f32 activations against dequantized weights;
//! [`Precision::Fast`] first quantizes the activations to int8 blocks of 32 (one scale each, like
//! llama.cpp's `q8_0`/`q8_1`) and uses integer dot products; plain float weights use f32, except
//! on hosts with AVX512_BF16, where BF16 weights at `Fast` and F16/BF16 weights at [`Precision::Bf16`]
//! meet activations rounded to bf16 ([`crate::bf16`]).
//! The kernels are those of [`Simd::active`] (runtime detection, `BUSHU_SIMD` override);
//! [`matmul_on`] picks a level explicitly (tests).

use crate::dtype::DType;
pub use crate::packed::PackSlot;
use crate::packed::Packed;
use crate::quants::{self, BlockQ16, BlockQ16P, BlockQ8, QK8};
use crate::simd::Simd;
use std::cell::RefCell;

/// A borrowed weight matrix of `rows x cols` elements of type `dtype`, row-major; each row is a whole
/// number of blocks.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// Where the packed copy for the fast (and F16/BF16) kernels lives, if the owner keeps one.
    pub pack: Option<&'a PackSlot>,
}

impl<'a> QMatrix<'a> {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Self {
        debug_assert_eq!(Some(data.len()), dtype.bytes_for(cols).map(|b| b * rows));
        QMatrix {
            dtype,
            rows,
            cols,
            data,
            pack: None,
        }
    }

    /// This matrix with a slot for its packed copy: fast and wide products then run on eight interleaved
    /// rows, F16/BF16 products (every precision) on sixteen rows column by column ([`Packed`]), made on
    /// first use.
    pub fn with_pack(self, slot: &'a PackSlot) -> Self {
        QMatrix {
            pack: Some(slot),
            ..self
        }
    }

    /// The first `n` rows (at most all), sharing the packed copy: a whole matrix's copy is made first
    /// (unless its making is deferred to someone else), never one of just these rows; products run its
    /// groups within the `n` rows and the rest row-major.
    pub fn first_rows(self, n: usize) -> Self {
        let n = n.min(self.rows);
        if let Some(slot) = self.pack {
            slot.for_product(&self);
        }
        QMatrix {
            rows: n,
            data: &self.data[..n * self.row_bytes()],
            ..self
        }
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

/// How activations enter the product with quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 activations against dequantized weights: the scalar result up to f32 rounding.
    Exact,
    /// Activations quantized to int8 blocks of 32 once per call, integer dot products (as llama.cpp).
    /// Error per output at most `Σ_blocks Σ|w| * max|x_block| / 254` beyond `Exact`. BF16 weights (with
    /// a pack slot) on hosts with AVX512_BF16: activations rounded to bf16, `vdpbf16ps` (llama.cpp's
    /// method for BF16 files), error at most `2^-8 Σ|w x|` beyond `Exact` ([`crate::bf16`]); F16
    /// weights, and BF16 ones elsewhere: as `Exact`.
    Fast,
    /// Activations in int16 blocks of 32 against packed weights (Q8_0, Q5_0, Q4_0, Q4_1, Q2_K, Q3_K, Q5_K,
    /// Q4_K, Q6_K; other types: `Exact`):
    /// error at most `Σ_blocks Σ|w| * max|x_block| / 65534` beyond `Exact`, 256 times below `Fast`'s,
    /// at about the speed of `Fast`. The default: a small model's greedy answers under `Fast` differ
    /// from the exact model's on about half of the chat prompts measured, under `Wide` on none
    /// (bushu's docs/PRECISION.md); also the classifier of a `Fast` model, whose errors go straight
    /// into the logits.
    #[default]
    Wide,
    /// `Fast`, and F16 weights in bf16 too on hosts with AVX512_BF16: rounded to bf16 once when packed
    /// (8 of their 11 significant bits), against activations rounded to bf16 — ik_llama.cpp's method
    /// for F16 files, twice the multiply-adds per instruction of f32 (`vdpbf16ps`), at an error of at
    /// most `(2^-7 + 2^-16) Σ|w x|` beyond `Exact` (measured on models: docs/PRECISION.md). Elsewhere
    /// as `Fast`.
    Bf16,
}

impl Precision {
    /// Whether activations of quantized weights are rounded to int8 blocks (`Fast` and `Bf16`).
    pub fn int8_activations(self) -> bool {
        matches!(self, Precision::Fast | Precision::Bf16)
    }

    /// The precision of a model's classifier when its other matrices run at this one: its activation
    /// rounding would go straight into the logits, so `Fast` and `Bf16` models round them to 16 bits
    /// (`Wide`: 256 times finer than int8, at int8 speed for Q8_0/Q6_K; f32 for other types).
    pub fn for_classifier(self) -> Precision {
        match self {
            Precision::Fast | Precision::Bf16 => Precision::Wide,
            p => p,
        }
    }
}

/// One matmul call as the kernels see it: `y[t * rows + r] = W[r] . x[t]`.
pub(crate) struct Job<'a> {
    pub dtype: DType,
    pub w: &'a [u8],
    pub row_bytes: usize,
    pub rows: usize,
    pub cols: usize,
    /// Tokens.
    pub n: usize,
    /// f32 activations, `n * cols`.
    pub xf: &'a [f32],
    /// int8 activations, `n * cols / 32` blocks (fast path only, else empty).
    pub xq: &'a [BlockQ8],
    /// int16 activations, `n * cols / 32` blocks (wide path only, else empty).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xw: &'a [BlockQ16],
    /// The same as byte planes, for the AVX-512 wide kernels (else empty).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xp: &'a [BlockQ16P],
    pub y: *mut f32,
    /// The packed rows (packed kernels only).
    pub packed: Option<&'a Packed>,
    /// For the packed F16/BF16 kernels with more than one token: `xf` in tiles of tokens
    /// (`x86::packed_float`), else empty.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xt: &'a [f32],
    /// For the bf16 kernels: the activations as bf16 pairs (`x86::packed_bf16`), else empty.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xb: &'a [u32],
}

// SAFETY: workers write disjoint row ranges of `y`; everything else is shared read-only.
unsafe impl Sync for Job<'_> {}

impl<'a> Job<'a> {
    /// `y = W x` with f32 activations only (callers add quantized ones and the packed rows).
    fn new(w: &QMatrix<'a>, x: &'a [f32], y: &mut [f32]) -> Job<'a> {
        Job {
            dtype: w.dtype,
            w: w.data,
            row_bytes: w.row_bytes(),
            rows: w.rows,
            cols: w.cols,
            n: x.len() / w.cols,
            xf: x,
            xq: &[],
            xw: &[],
            xp: &[],
            y: y.as_mut_ptr(),
            packed: None,
            xt: &[],
            xb: &[],
        }
    }
}

/// Computes rows `r0..r1` of a job for all its tokens.
pub(crate) type RowsFn = unsafe fn(&Job, usize, usize);

unsafe fn scalar_exact(job: &Job, r0: usize, r1: usize) {
    for (t, xt) in job.xf.chunks_exact(job.cols).enumerate() {
        for r in r0..r1 {
            let row = &job.w[r * job.row_bytes..][..job.row_bytes];
            *job.y.add(t * job.rows + r) = quants::dot_row(job.dtype, row, xt);
        }
    }
}

unsafe fn scalar_fast(job: &Job, r0: usize, r1: usize) {
    for (t, xt) in job.xq.chunks_exact(job.cols / QK8).enumerate() {
        for r in r0..r1 {
            let row = &job.w[r * job.row_bytes..][..job.row_bytes];
            *job.y.add(t * job.rows + r) = quants::dot_row_q8(job.dtype, row, xt);
        }
    }
}

/// The kernel of `level` for this type and precision, or the scalar one.
fn kernel(dtype: DType, fast: bool, level: Simd) -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = crate::x86::select(dtype, fast, level) {
        return f;
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(f) = crate::neon::select(dtype, fast, level) {
        return f;
    }
    let _ = level;
    if fast {
        scalar_fast
    } else {
        scalar_exact
    }
}

thread_local! {
    /// Quantized activations of the calling thread, reused across calls.
    static XQ: RefCell<Vec<BlockQ8>> = const { RefCell::new(Vec::new()) };
    /// int16 activations for the wide packed kernels.
    #[cfg(target_arch = "x86_64")]
    static XW: RefCell<Vec<BlockQ16>> = const { RefCell::new(Vec::new()) };
    /// Those as byte planes for the AVX-512 ones.
    #[cfg(target_arch = "x86_64")]
    static XP: RefCell<Vec<BlockQ16P>> = const { RefCell::new(Vec::new()) };
    /// Activations in token tiles for the packed float kernels.
    #[cfg(target_arch = "x86_64")]
    static XT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Activations as bf16 pairs for the bf16 kernels.
    #[cfg(target_arch = "x86_64")]
    static XB: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `y[t] = W x[t]` for each of the `n = x.len() / cols` tokens, with f32 activations
/// ([`Precision::Exact`]); `y` holds `n * rows` values, token-major.
pub fn matmul(w: &QMatrix, x: &[f32], y: &mut [f32]) {
    matmul_with(w, x, y, Precision::Exact)
}

/// [`matmul`] with a choice of precision, on the active SIMD level.
pub fn matmul_with(w: &QMatrix, x: &[f32], y: &mut [f32], precision: Precision) {
    matmul_on(w, x, y, precision, Simd::active())
}

/// [`matmul_with`] on a given SIMD level (the scalar kernels when `level` is not available).
pub fn matmul_on(w: &QMatrix, x: &[f32], y: &mut [f32], precision: Precision, level: Simd) {
    let n = x.len() / w.cols;
    assert_eq!(
        x.len(),
        n * w.cols,
        "activation length is not a multiple of the matrix width"
    );
    assert_eq!(y.len(), n * w.rows, "output length does not match rows x tokens");
    assert!(quants::supported(w.dtype), "no kernel for tensor type {}", w.dtype);
    if n == 0 || w.rows == 0 {
        return;
    }
    let level = if level.available() { level } else { Simd::Scalar };
    #[cfg(target_arch = "x86_64")]
    if packed_products(std::slice::from_ref(w), x, &mut [&mut *y], precision, level) {
        return;
    }
    // Row-major: int8 activations where the precision and type take them, else f32.
    let fast = precision.int8_activations() && quants::has_q8_dot(w.dtype);
    let f = kernel(w.dtype, fast, level);
    if !fast {
        return par_rows(&Job::new(w, x, y), f);
    }
    with_scratch(&XQ, x.len() / QK8, |xq| {
        quantize(x, xq, level);
        par_rows(
            &Job {
                xq,
                ..Job::new(w, x, y)
            },
            f,
        )
    })
}

/// Most matrices [`matmul_many`] runs in one loop.
pub(crate) const MAX_FUSED: usize = 4;

/// `ys[i] = ws[i] x` for matrices of the same width (at most four), as [`matmul_with`] on each — the
/// same bits — but, where every matrix takes a packed kernel on the same activations (int8, int16,
/// bf16 pairs or f32: the same types or kin), in one parallel loop over all their rows: the
/// activations prepared once and one wait for the pool instead of one per matrix (a layer's Q, K and
/// V; its gate and up). Otherwise one call each.
pub fn matmul_many(ws: &[QMatrix], x: &[f32], ys: &mut [&mut [f32]], precision: Precision) {
    matmul_many_on(ws, x, ys, precision, Simd::active())
}

/// [`matmul_many`] on a given SIMD level.
pub fn matmul_many_on(ws: &[QMatrix], x: &[f32], ys: &mut [&mut [f32]], precision: Precision, level: Simd) {
    assert_eq!(ws.len(), ys.len(), "one output per matrix");
    let level = if level.available() { level } else { Simd::Scalar };
    #[cfg(target_arch = "x86_64")]
    if ws.len() > 1 && packed_products(ws, x, ys, precision, level) {
        return;
    }
    for (w, y) in ws.iter().zip(ys.iter_mut()) {
        matmul_on(w, x, y, precision, level);
    }
}

/// How a packed path takes its activations; the matrices of one [`matmul_many`] loop share them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acts {
    /// int8 blocks ([`Precision::Fast`]).
    Q8,
    /// int16 blocks ([`Precision::Wide`]).
    Q16,
    /// bf16 pairs (F16/BF16 where [`crate::packed::uses_pairs`]).
    Pairs,
    /// f32, in tiles of this many tokens when there are several (F16/BF16 otherwise).
    Tiles(usize),
}

/// The packed copy, kernel and activations `w` takes at `precision` on `level`, as [`matmul_on`]
/// picks them; `None` where it takes none (no pack slot or copy yet, no packed kernel, `Exact`).
#[cfg(target_arch = "x86_64")]
fn packed_path<'a>(w: &QMatrix<'a>, precision: Precision, level: Simd) -> Option<(Acts, &'a Packed, RowsFn)> {
    if crate::packed::is_float_packed(w.dtype) {
        if crate::packed::uses_pairs(w.dtype, precision, level) {
            if let Some(p) = w.pack?.for_pairs(w) {
                return Some((Acts::Pairs, p, crate::x86::packed_bf16::rows));
            }
        }
        let (f, tile) = crate::x86::packed_float::select(w.dtype, level)?;
        return Some((Acts::Tiles(tile), w.pack?.for_product(w)?, f));
    }
    if precision == Precision::Wide {
        let f = crate::x86::packed::select_wide(w.dtype, level)?;
        return Some((Acts::Q16, w.pack?.for_product(w)?, f));
    }
    if !(precision.int8_activations() && quants::has_q8_dot(w.dtype)) {
        return None;
    }
    let f = crate::x86::packed::select(w.dtype, level)?;
    let p = w.pack?.for_product(w)?;
    debug_assert!(p.dtype == w.dtype && p.cols == w.cols);
    Some((Acts::Q8, p, f))
}

/// The packed products of one to four matrices of one width that all take packed kernels on the same
/// activations ([`packed_path`]), in one parallel loop: the activations prepared once, the packed
/// groups of every matrix, then each one's rows past its last whole group row-major. False, with nothing
/// done, otherwise. [`matmul_on`] runs every packed product through it, [`matmul_many`] its sets.
#[cfg(target_arch = "x86_64")]
fn packed_products(ws: &[QMatrix], x: &[f32], ys: &mut [&mut [f32]], precision: Precision, level: Simd) -> bool {
    if !(1..=MAX_FUSED).contains(&ws.len()) {
        return false;
    }
    let cols = ws[0].cols;
    let n = x.len() / cols;
    if n == 0 || x.len() != n * cols {
        return false;
    }
    let mut paths: [Option<(Acts, &Packed, RowsFn)>; MAX_FUSED] = [None; MAX_FUSED];
    let mut acts = None;
    for ((w, y), path) in ws.iter().zip(ys.iter()).zip(&mut paths) {
        if w.cols != cols || w.rows == 0 || y.len() != n * w.rows {
            return false;
        }
        *path = packed_path(w, precision, level);
        match (*path, acts) {
            (Some((a, ..)), None) => acts = Some(a),
            (Some((a, ..)), Some(first)) if a == first => {}
            _ => return false,
        }
    }
    let acts = acts.expect("one matrix or more");
    // The jobs of the matrices, on activations prepared once.
    let run = |xq: &[BlockQ8], (xw, xp): (&[BlockQ16], &[BlockQ16P]), xb: &[u32], xt: &[f32], ys: &mut [&mut [f32]]| {
        let jobs: [Option<Job>; MAX_FUSED] = std::array::from_fn(|i| {
            let (w, (_, p, _)) = (ws.get(i)?, paths[i]?);
            Some(Job {
                xq,
                xw,
                xp,
                xb,
                xt,
                packed: Some(p),
                ..Job::new(w, x, ys[i])
            })
        });
        let parts: [Part; MAX_FUSED] = std::array::from_fn(|i| {
            let i = i.min(ws.len() - 1);
            let (job, (_, p, f)) = (jobs[i].as_ref().expect("a job per matrix"), paths[i].expect("checked"));
            Part {
                job,
                f,
                units: packed_rows(p, &ws[i]) / p.group_rows(),
            }
        });
        // Float prefill in chunks of four groups: every chunk reads all the token tiles (from L3), so
        // bigger chunks read them less often; weights and a token tile stay in L2 (1.3 MB at 5632 columns).
        let prefill_rows = if matches!(acts, Acts::Q8 | Acts::Q16) { 32 } else { 64 };
        run_parts(&parts[..ws.len()], 1, prefill_rows);
        // Rows past each copy's last whole group, row-major (but int8: on the exact kernel).
        for (w, (job, (_, p, _))) in ws.iter().zip(jobs.iter().flatten().zip(paths.iter().flatten())) {
            let packed_rows = packed_rows(p, w);
            if packed_rows < w.rows {
                let tail = Job { packed: None, ..*job };
                // SAFETY: the row-major kernel of this type and activations; rows in range.
                unsafe { kernel(w.dtype, acts == Acts::Q8, level)(&tail, packed_rows, w.rows) };
            }
        }
    };
    match acts {
        Acts::Q8 => with_scratch(&XQ, x.len() / QK8, |xq| {
            quantize(x, xq, level);
            run(xq, (&[], &[]), &[], &[], ys)
        }),
        Acts::Q16 => with_scratch(&XW, x.len() / QK8, |xw| {
            quantize_at(x, xw, level);
            // The AVX-512 kernels take the blocks as byte planes.
            let planes = if level == Simd::Avx512 { xw.len() } else { 0 };
            with_scratch(&XP, planes, |xp| {
                for (p, b) in xp.iter_mut().zip(xw.iter()) {
                    *p = BlockQ16P::from(b);
                }
                run(&[], (xw, xp), &[], &[], ys)
            })
        }),
        Acts::Pairs => with_scratch(&XB, n * cols.div_ceil(2), |xb| {
            crate::x86::packed_bf16::round_activations(x, cols, xb);
            run(&[], (&[], &[]), xb, &[], ys)
        }),
        Acts::Tiles(tile) => with_scratch(&XT, if n > 1 { x.len() } else { 0 }, |xt| {
            if n > 1 {
                crate::x86::packed_float::tile_activations(x, cols, tile, xt);
            }
            run(&[], (&[], &[]), &[], xt, ys)
        }),
    }
    true
}

/// Runs `f` on the first `n` elements of a thread-local scratch vector, grown as needed and kept for
/// the next call. The vector is taken out while `f` runs (a nested call finds it empty, never borrowed).
fn with_scratch<T: Clone + Default, R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    n: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = cell.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < n {
        buf.resize(n, T::default());
    }
    let r = f(&mut buf[..n]);
    cell.with(|b| *b.borrow_mut() = buf);
    r
}

/// Rows of `w` a product runs through its packed copy `p`: the copy's whole groups within `w`'s rows
/// (`w` may be the first rows of the matrix packed).
fn packed_rows(p: &Packed, w: &QMatrix) -> usize {
    let group = p.group_rows();
    p.rows.min(w.rows / group * group)
}

/// An activation block type: its scalar quantizer (the reference) and a bit-identical AVX2 one.
trait ActBlock: Sized {
    fn scalar(x: &[f32], out: &mut [Self]);
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(x: &[f32], out: &mut [Self]);
}

impl ActBlock for BlockQ8 {
    fn scalar(x: &[f32], out: &mut [Self]) {
        quants::quantize_row_q8(x, out)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(x: &[f32], out: &mut [Self]) {
        crate::x86::quantize::quantize_row_q8(x, out)
    }
}

impl ActBlock for BlockQ16 {
    fn scalar(x: &[f32], out: &mut [Self]) {
        quants::quantize_row_q16(x, out)
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(x: &[f32], out: &mut [Self]) {
        crate::x86::quantize::quantize_row_q16(x, out)
    }
}

/// Quantizes activations at `level`.
fn quantize_at<B: ActBlock>(x: &[f32], out: &mut [B], level: Simd) {
    #[cfg(target_arch = "x86_64")]
    if level != Simd::Scalar && Simd::Avx2.available() {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { B::avx2(x, out) };
    }
    let _ = level;
    B::scalar(x, out)
}

/// Quantizes activations, in parallel when there are many.
fn quantize(x: &[f32], out: &mut [BlockQ8], level: Simd) {
    const PER_TASK: usize = 512;
    if out.len() <= 2 * PER_TASK {
        return quantize_at(x, out, level);
    }
    crate::pool::for_each_chunk_mut(out, PER_TASK, &|c, o| {
        quantize_at(&x[c * PER_TASK * QK8..][..o.len() * QK8], o, level)
    });
}

/// Below this many multiply-adds a call runs on the calling thread.
const SERIAL_WORK: usize = 1 << 15;

/// Splits the rows of a job across the pool, decode chunks a multiple of 4 rows (see [`run_parts`]).
fn par_rows(job: &Job, f: RowsFn) {
    run_parts(
        &[Part {
            job,
            f,
            units: job.rows,
        }],
        4,
        32,
    )
}

/// One matrix's share of a parallel loop: units `0..units` of `job` through `f`.
struct Part<'j, 'a> {
    job: &'j Job<'a>,
    f: RowsFn,
    units: usize,
}

/// Most decode chunks of one loop: at most `MAX_CUTS / 2` of a chunk-size floor plus one per part.
const MAX_CUTS: usize = 512;

/// Passes of at most this many tokens (decode, a verification pass) stream the weights in the decode
/// chunks of [`run_parts`]: the kernels pass every token tile over a block of 32 rows at a time
/// (`x86::packed::BLOCK`, `x86::packed_float`'s blocks), so a big chunk reads its weights from memory
/// once. In the prefill chunks of 32 rows instead, each thread's stream jumped every 37 KB (Q4_K) and
/// a pass of 2 tokens took twice one token's time (Qwen2.5-Coder-1.5B Q4_K_M, Zen 4).
const FEW_TOKENS: usize = 8;

/// The decode chunks of [`run_parts`] for parts of `(units, least)` (units, smallest chunk): `(part,
/// first unit, end)` into `cuts`, their number returned. Each chunk is a quarter of what is left for
/// two threads (`1 / 2T`), at least `least` and a `1 / (MAX_CUTS / 2)` share of all units (so there are
/// never more than `MAX_CUTS`, whatever the thread count), a multiple of `align`, never across a part's end.
fn decode_cuts(parts: &[(usize, usize)], align: usize, threads: usize, cuts: &mut [(usize, usize, usize)]) -> usize {
    let total: usize = parts.iter().map(|p| p.0).sum();
    let floor = total.div_ceil(MAX_CUTS / 2);
    let (mut count, mut left) = (0, total);
    for (i, &(units, least)) in parts.iter().enumerate() {
        let mut u = 0;
        while u < units {
            let size = left
                .div_ceil(2 * threads)
                .max(least)
                .max(floor)
                .next_multiple_of(align)
                .min(units - u);
            cuts[count] = (i, u, u + size);
            count += 1;
            u += size;
            left -= size;
        }
    }
    count
}

/// Runs every part's units across the pool in one parallel loop, so that several matrices that read
/// the same activations (a layer's Q, K and V) wait for the pool once. Decode (up to [`FEW_TOKENS`]) in chunks of
/// decreasing size — each a quarter of what is left of the loop for two threads (`1 / 2T`), never
/// less than 16 rows nor across a part's end — so that the thread that finishes first waits at most
/// for a small chunk, not for an eighth of the matrix (fixed chunks, four per thread, left one thread
/// idle 14 % of a TinyLlama decode step); prefill in chunks of `prefill_rows` rows, whose weights stay
/// in L2 while every token tile passes over them. Each row's result is the same whatever the chunk.
fn run_parts(parts: &[Part], align: usize, prefill_rows: usize) {
    let threads = crate::pool::threads();
    let work: usize = parts.iter().map(|p| p.job.rows * p.job.cols * p.job.n).sum();
    if threads == 1 || work < SERIAL_WORK {
        for p in parts {
            // SAFETY: the kernel matches the job's type; units in range.
            unsafe { (p.f)(p.job, 0, p.units) };
        }
        return;
    }
    let per_unit = |p: &Part| (p.job.rows / p.units.max(1)).max(1);
    // Row-major kernels (`align` 4) pass over their rows once per token tile: one token only.
    let few = if align == 1 { FEW_TOKENS } else { 1 };
    if parts.iter().all(|p| p.job.n <= few) {
        let mut cuts = [(0usize, 0usize, 0usize); MAX_CUTS];
        let mut sizes = [(0usize, 0usize); crate::matmul::MAX_FUSED];
        for (s, p) in sizes.iter_mut().zip(parts) {
            *s = (p.units, (16 / per_unit(p)).max(1).next_multiple_of(align));
        }
        let count = decode_cuts(&sizes[..parts.len()], align, threads, &mut cuts);
        let cuts = &cuts[..count];
        crate::pool::run(count, &|c| {
            let (i, u0, u1) = cuts[c];
            // SAFETY: as above; chunks are disjoint, so are the outputs they write.
            unsafe { (parts[i].f)(parts[i].job, u0, u1) }
        });
        return;
    }
    let chunk = |p: &Part| (prefill_rows / per_unit(p)).max(1);
    let total: usize = parts.iter().map(|p| p.units.div_ceil(chunk(p))).sum();
    crate::pool::run(total, &|mut c| {
        for p in parts {
            let (size, count) = (chunk(p), p.units.div_ceil(chunk(p)));
            if c < count {
                // SAFETY: as above; chunks are disjoint, so are the outputs they write.
                return unsafe { (p.f)(p.job, c * size, p.units.min((c + 1) * size)) };
            }
            c -= count;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode chunks cover every unit of every part once, in order, within their part, a multiple of
    /// `align` (but a part's last), never more than `MAX_CUTS` — two threads or 256, one part or four, a
    /// classifier's 19k groups or a handful.
    #[test]
    fn decode_cuts_cover_every_unit_once() {
        for threads in [2, 3, 16, 256] {
            for parts in [
                &[(19_000, 2)][..],
                &[(256, 2), (32, 2), (32, 2)],
                &[(1, 1), (7, 1), (20_000, 2), (5, 1)],
                &[(4000, 16), (400, 16)],
            ] {
                for align in [1, 4] {
                    let mut cuts = [(0, 0, 0); MAX_CUTS];
                    let n = decode_cuts(parts, align, threads, &mut cuts);
                    assert!(n <= MAX_CUTS - MAX_FUSED);
                    let mut next = vec![0; parts.len()];
                    for &(i, u0, u1) in &cuts[..n] {
                        assert_eq!(u0, next[i], "{threads} {parts:?}");
                        assert!(u1 > u0 && u1 <= parts[i].0);
                        assert!((u1 - u0) % align == 0 || u1 == parts[i].0);
                        next[i] = u1;
                    }
                    assert!(next.iter().zip(parts).all(|(n, p)| *n == p.0), "{threads} {parts:?}");
                }
            }
        }
    }
}
