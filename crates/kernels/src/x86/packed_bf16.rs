//! Fast F16/BF16 products in bf16 on AVX512_BF16 ([`crate::bf16`] defines them): the packed
//! column-pair layout of [`Packed::new_bf16_pairs`](crate::packed::Packed::new_bf16_pairs) against
//! activations rounded to bf16 pairs, one `vdpbf16ps` per group of sixteen rows, pair of columns and
//! token — 32 multiply-adds where an f32 FMA does 16. The tiling is `packed_float`'s (outer products,
//! tiles of 24 tokens, no horizontal sums); each output is the chain [`crate::bf16::dot`] defines
//! whatever the tile, so a token alone and inside a prefill give the same bits.
//!
//! Activations: a token's f32 row becomes bf16 (`vcvtne2ps2bf16`, 32 at a time), read as `u32` pairs
//! `(2j, 2j + 1)`; one token (decode) is used as is, more are laid out in tiles `[pair][token]` as
//! `packed_float::tile_activations` lays out f32.

use super::packed_float::{run, tile_with, Micro};
use crate::matmul::Job;
use crate::packed::FLOAT_GROUP;
use std::arch::x86_64::*;

/// Record bytes: sixteen rows' pair of bf16 weights.
const REC: usize = 4 * FLOAT_GROUP;

/// Tokens per tile of activations.
pub(crate) const TILE: usize = 24;

struct Lbf16;

impl Micro for Lbf16 {
    type X = u32;
    fn acts(job: &Job) -> (*const u32, usize) {
        (job.xb.as_ptr(), job.cols.div_ceil(2))
    }
    #[inline(always)]
    unsafe fn tile<const G: usize, const T: usize>(job: &Job, g: usize, t: usize, x: *const u32, m: usize) {
        let p = job.packed.expect("packed job");
        let w: [*const u8; G] = std::array::from_fn(|i| p.group(g + i).as_ptr());
        let mut acc = [[_mm512_setzero_ps(); T]; G];
        let mut xk = x;
        for k in 0..p.records() {
            for i in 0..G {
                let c: __m512bh = std::mem::transmute(_mm512_loadu_si512(w[i].add(k * REC) as *const _));
                for (j, a) in acc[i].iter_mut().enumerate() {
                    let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xk.add(j) as i32));
                    *a = _mm512_dpbf16_ps(*a, c, b);
                }
            }
            xk = xk.add(m);
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(job.y.add((t + j) * job.rows + (g + i) * FLOAT_GROUP), *a);
            }
        }
    }
}

/// Groups `g0..g1` of the job's pairs copy for all its tokens.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn rows(job: &Job, g0: usize, g1: usize) {
    // Accumulators: 24, 16, 16, 8, 8 of the 32 registers.
    run::<Lbf16, TILE, 1, 2, 4, 4, 8>(job, g0, g1)
}

/// One token's row `x` as bf16 pairs: pair `j` at `out[j * stride]` (an odd last value paired with 0).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_row(x: &[f32], out: &mut [u32], stride: usize) {
    let mut k = 0;
    let mut v = [0u32; 16];
    while k + 32 <= x.len() {
        let lo = _mm512_loadu_ps(x.as_ptr().add(k));
        let hi = _mm512_loadu_ps(x.as_ptr().add(k + 16));
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(v.as_mut_ptr() as *mut _, h);
        for (q, &p) in v.iter().enumerate() {
            out[(k / 2 + q) * stride] = p;
        }
        k += 32;
    }
    while k < x.len() {
        let lo = crate::bf16::round(x[k]) as u32;
        let hi = x.get(k + 1).map_or(0, |&v| crate::bf16::round(v) as u32);
        out[(k / 2) * stride] = lo | hi << 16;
        k += 2;
    }
}

/// The activations of `n = x.len() / cols` tokens as bf16 pairs into `out` (`n * cols.div_ceil(2)`):
/// one token as is, more in tiles of [`TILE`] tokens `[pair][token]`.
pub(crate) fn round_activations(x: &[f32], cols: usize, out: &mut [u32]) {
    let per_token = cols.div_ceil(2);
    // SAFETY (both): the caller runs this only where `crate::bf16::host()` holds.
    if x.len() == cols {
        return unsafe { round_row(x, out, 1) };
    }
    tile_with(x, cols, per_token, TILE, out, &|xj, o, m, j| unsafe {
        round_row(xj, &mut o[j..], m)
    })
}
