//! aarch64 Advanced SIMD kernels (baseline NEON, no `dotprod` needed): F32 with f32 activations and
//! the int8-activation dot products of Q8_0, Q4_0 and Q4_1 (`smull` + `sadalp`). Other types use the
//! scalar kernels on aarch64. Same `Job` interface as the x86 driver; one row and token at a time.

use crate::dtype::DType;
use crate::matmul::{Job, RowsFn};
use crate::quants::{BlockQ8, QK8};
use crate::simd::Simd;
use std::arch::aarch64::*;

#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
}

/// `Σ w[i] x[i]` over 32 signed bytes.
#[inline(always)]
unsafe fn idot32(w: [int8x16_t; 2], x: *const i8) -> i32 {
    let mut acc = vdupq_n_s32(0);
    for (i, w) in w.into_iter().enumerate() {
        let x = vld1q_s8(x.add(16 * i));
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
        acc = vpadalq_s16(acc, vmull_high_s8(w, x));
    }
    vaddvq_s32(acc)
}

/// Codes of a 32-weight block at `p` as two vectors, and `(d, cw)`: `w = d * q` plus `cw` per unit
/// of `s` (Q4_1's minimum).
trait Neon32 {
    const BYTES: usize;
    unsafe fn load(p: *const u8) -> ([int8x16_t; 2], f32, f32);
}

struct Q8_0n;
struct Q4_0n;
struct Q4_1n;

impl Neon32 for Q8_0n {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> ([int8x16_t; 2], f32, f32) {
        let q = p.add(2) as *const i8;
        ([vld1q_s8(q), vld1q_s8(q.add(16))], f16(p), 0.0)
    }
}

#[inline(always)]
unsafe fn nibbles(p: *const u8) -> [int8x16_t; 2] {
    let b = vld1q_u8(p);
    [
        vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)),
    ]
}

impl Neon32 for Q4_0n {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> ([int8x16_t; 2], f32, f32) {
        let [lo, hi] = nibbles(p.add(2));
        let eight = vdupq_n_s8(8);
        ([vsubq_s8(lo, eight), vsubq_s8(hi, eight)], f16(p), 0.0)
    }
}

impl Neon32 for Q4_1n {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> ([int8x16_t; 2], f32, f32) {
        (nibbles(p.add(4)), f16(p), f16(p.add(2)))
    }
}

unsafe fn fast<F: Neon32>(job: &Job, r0: usize, r1: usize) {
    let nb = job.cols / QK8;
    for t in 0..job.n {
        let x: &[BlockQ8] = &job.xq[t * nb..(t + 1) * nb];
        for r in r0..r1 {
            let row = job.w.as_ptr().add(r * job.row_bytes);
            let mut sum = 0.0f32;
            for (b, xb) in x.iter().enumerate() {
                let (q, d, cw) = F::load(row.add(b * F::BYTES));
                sum += d * xb.d * idot32(q, xb.qs.as_ptr()) as f32 + cw * xb.s;
            }
            *job.y.add(t * job.rows + r) = sum;
        }
    }
}

unsafe fn exact_f32(job: &Job, r0: usize, r1: usize) {
    let c = job.cols;
    for t in 0..job.n {
        let x = job.xf[t * c..].as_ptr();
        for r in r0..r1 {
            let w = job.w.as_ptr().add(r * job.row_bytes) as *const f32;
            let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut i = 0;
            while i + 8 <= c {
                a0 = vfmaq_f32(a0, vld1q_f32(w.add(i)), vld1q_f32(x.add(i)));
                a1 = vfmaq_f32(a1, vld1q_f32(w.add(i + 4)), vld1q_f32(x.add(i + 4)));
                i += 8;
            }
            let mut sum = vaddvq_f32(vaddq_f32(a0, a1));
            while i < c {
                sum += *w.add(i) * *x.add(i);
                i += 1;
            }
            *job.y.add(t * job.rows + r) = sum;
        }
    }
}

/// The NEON kernel for `dtype`, or `None` (scalar) when there is none or `level` is not NEON.
pub(crate) fn select(dtype: DType, fast_path: bool, level: Simd) -> Option<RowsFn> {
    if level != Simd::Neon {
        return None;
    }
    Some(match (dtype, fast_path) {
        (DType::F32, _) => exact_f32 as RowsFn,
        (DType::Q8_0, true) => fast::<Q8_0n>,
        (DType::Q4_0, true) => fast::<Q4_0n>,
        (DType::Q4_1, true) => fast::<Q4_1n>,
        _ => return None,
    })
}
