//! Activation quantization ([`BlockQ8`], [`BlockQ16`]) eight lanes at a time: the same arithmetic as
//! the scalar reference in [`crate::quants`] (`amax / 127`, `1 / d`, `x * id` rounded half to even),
//! so the blocks are bit-identical to it — a block with a NaN or an infinity included (codes 0, scale
//! NaN: no integer ever sees a NaN's conversion, `i32::MIN`).

use crate::quants::{BlockQ16, BlockQ8, QK8};
use std::arch::x86_64::*;

/// A block's four vectors, its `id = 1 / d` applied and rounded to integers, and `d`; `full` is the
/// largest code (127 or 32767). A block with a NaN or an infinity gives zero codes and `d` NaN.
#[inline(always)]
unsafe fn codes(xs: &[f32], full: f32) -> ([__m256i; 4], f32) {
    // Loops, not closures (`map`, `from_fn`): a closure would not inherit the target features.
    let mut v = [_mm256_setzero_ps(); 4];
    let mut m = _mm256_setzero_ps();
    let mut bad = _mm256_setzero_ps();
    for (i, vi) in v.iter_mut().enumerate() {
        *vi = _mm256_loadu_ps(xs.as_ptr().add(8 * i));
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), *vi);
        m = _mm256_max_ps(m, a);
        // Not less than infinity: an infinity, or a NaN (unordered).
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, _mm256_set1_ps(f32::INFINITY)));
    }
    if _mm256_movemask_ps(bad) != 0 {
        return ([_mm256_setzero_si256(); 4], f32::NAN);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let d = amax / full;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let mut q = [_mm256_setzero_si256(); 4];
    for (qi, vi) in q.iter_mut().zip(v) {
        *qi = _mm256_cvtps_epi32(_mm256_round_ps::<ROUND>(_mm256_mul_ps(vi, id)));
    }
    (q, d)
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(x.len(), out.len() * QK8, "activation length is not a multiple of 32");
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK8)) {
        let (q, d) = codes(xs, 127.0);
        // Half sums: codes 0-15 are in q[0], q[1], codes 16-31 in q[2], q[3].
        let (h0, h1) = (sum_i32(q[0], q[1]), sum_i32(q[2], q[3]));
        // Packing works per 128-bit lane; the permutation puts the 32 bytes back in order.
        let w = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let w = _mm256_permutevar8x32_epi32(w, order);
        _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, w);
        b.h = [h0 as i16, h1 as i16];
        b.d = d;
        // NaN for a non-finite block (whose codes and sums are 0), as the scalar version.
        b.s = if d.is_nan() { f32::NAN } else { d * (h0 + h1) as f32 };
    }
}

/// The sum of the sixteen i32 lanes of `a` and `b`.
#[inline(always)]
unsafe fn sum_i32(a: __m256i, b: __m256i) -> i32 {
    let s = _mm256_add_epi32(a, b);
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)))
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_row_q16(x: &[f32], out: &mut [BlockQ16]) {
    assert_eq!(x.len(), out.len() * QK8, "activation length is not a multiple of 32");
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(QK8)) {
        let (q, d) = codes(xs, 32767.0);
        for (h, pair) in [(q[0], q[1]), (q[2], q[3])].into_iter().enumerate() {
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(pair.0, pair.1));
            _mm256_storeu_si256(b.qs.as_mut_ptr().add(16 * h) as *mut __m256i, w);
        }
        b.d = d;
        b.h = [sum_i32(q[0], q[1]), sum_i32(q[2], q[3])];
        // NaN for a non-finite block (whose codes are 0), as the scalar version.
        b.s = if d.is_nan() {
            f32::NAN
        } else {
            d * (b.h[0] + b.h[1]) as f32
        };
    }
}

#[cfg(test)]
mod tests {
    use crate::quants;

    /// Random values at several magnitudes, with exact ties (x.5 codes), zeros and an all-zero block.
    fn values() -> Vec<f32> {
        let mut s = 0x9e3779b97f4a7c15u64;
        let mut v: Vec<f32> = (0..32 * 64)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * [1e-3, 1.0, 37.0, 1e4][i % 4]
            })
            .collect();
        v[64..96].fill(0.0);
        // A block whose codes land on halves: max 127, values k + 0.5.
        for (i, x) in v[96..128].iter_mut().enumerate() {
            *x = if i == 0 { 127.0 } else { i as f32 - 16.5 };
        }
        v
    }

    /// Blocks with a NaN, an infinity, both signs of infinity, and an otherwise normal block with one NaN.
    fn non_finite() -> Vec<f32> {
        let mut v = values()[..32 * 4].to_vec();
        v[3] = f32::NAN;
        v[32 + 31] = f32::INFINITY;
        v[64] = f32::NEG_INFINITY;
        v[65] = f32::INFINITY;
        v[96 + 17] = -f32::NAN;
        v
    }

    #[test]
    fn non_finite_blocks_are_nan_scaled_zero_codes_in_both_versions() {
        let x = non_finite();
        let nb = x.len() / 32;
        let mut a = vec![Default::default(); nb];
        quants::quantize_row_q8(&x, &mut a);
        for b in &a {
            assert!(
                b.d.is_nan() && b.s.is_nan() && b.qs == [0; 32] && b.h == [0, 0],
                "{b:?}"
            );
        }
        let mut a16 = vec![Default::default(); nb];
        quants::quantize_row_q16(&x, &mut a16);
        assert!(a16.iter().all(|b: &quants::BlockQ16| b.d.is_nan() && b.qs == [0; 32]));
        if !crate::Simd::Avx2.available() {
            return;
        }
        let mut b = vec![Default::default(); nb];
        unsafe { super::quantize_row_q8(&x, &mut b) };
        let bits = |v: &[quants::BlockQ8]| {
            v.iter()
                .map(|b| (b.d.to_bits() & 0x7fc0_0000, b.s.to_bits() & 0x7fc0_0000, b.qs, b.h))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
        let mut b16 = vec![Default::default(); nb];
        unsafe { super::quantize_row_q16(&x, &mut b16) };
        assert!(b16.iter().all(|b: &quants::BlockQ16| b.d.is_nan() && b.qs == [0; 32]));
    }

    #[test]
    fn avx2_quantization_equals_scalar_bit_for_bit() {
        if !crate::Simd::Avx2.available() {
            return;
        }
        let x = values();
        let nb = x.len() / 32;
        let (mut a, mut b) = (vec![Default::default(); nb], vec![Default::default(); nb]);
        quants::quantize_row_q8(&x, &mut a);
        unsafe { super::quantize_row_q8(&x, &mut b) };
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![Default::default(); nb], vec![Default::default(); nb]);
        quants::quantize_row_q16(&x, &mut a);
        unsafe { super::quantize_row_q16(&x, &mut b) };
        assert_eq!(a, b);
    }
}
