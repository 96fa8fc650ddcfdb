//! Products in bfloat16, on x86 hosts with AVX512_BF16 (Zen 4/5, Cooper Lake, Sapphire Rapids and
//! later), where one `vdpbf16ps` does 32 multiply-adds — twice an f32 FMA's 16: BF16 weights at
//! [`Precision::Fast`](crate::Precision::Fast) (mainline llama.cpp's method for BF16 files) and F16 or
//! BF16 weights at [`Precision::Bf16`](crate::Precision::Bf16) (ik_llama.cpp's `bf16_r16` for F16
//! files). Weights are rounded to bf16 once, when packed (exact for BF16 files; an F16 weight keeps 8 of
//! its 11 significant bits), activations once per call; each lane of the instruction adds two products
//! of bf16 pairs to an f32 accumulator.
//!
//! This module is the scalar definition the kernel is tested against, bit for bit: [`round`] is
//! `vcvtneps2bf16` (round to nearest even, denormal inputs to signed zero, NaN kept quiet) and
//! [`dot_pair`] one lane of `vdpbf16ps` as Intel's manual defines it (the odd product added first,
//! then the even one, each sum rounded to nearest even; denormal inputs and results flushed to zero).
//! [`dot`] chains the pairs of a row from a zero accumulator, in order, as the kernel does for every
//! output whatever its tile.
//!
//! Error against exact arithmetic: each weight and activation is within `u = 2^-8` relative of its
//! f32 value (BF16 weights: exact), so each product within `2u + u²` (`u`); with the f32 sums, `|y - Σ w x| ≤ (2u + u² + γ_cols)
//! Σ|w x|` (`γ_n = n 2^-24 / (1 - n 2^-24)`), plus `cols · 2^-126` for flushed denormals.

/// Unit roundoff of bf16 (8 significant bits).
pub const UNIT: f64 = 1.0 / 256.0;

/// `x` as bf16 bits: `vcvtneps2bf16`.
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    if x.is_infinite() {
        return (b >> 16) as u16;
    }
    if x == 0.0 || x.is_subnormal() {
        return ((b >> 16) as u16) & 0x8000;
    }
    let bias = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(bias) >> 16) as u16
}

/// bf16 bits as f32 (exact).
pub fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Denormals as signed zero (the instruction's DAZ and FTZ).
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps`: `acc + w[1] x[1] + w[0] x[0]`, the odd product first.
pub fn dot_pair(acc: f32, w: [u16; 2], x: [u16; 2]) -> f32 {
    let p = |a: u16, b: u16| flush(widen(a)) * flush(widen(b));
    let acc = flush(flush(acc) + p(w[1], x[1]));
    flush(acc + p(w[0], x[0]))
}

/// The product of a row of bf16 weights with bf16 activations as the kernel computes it: pairs
/// `(2j, 2j + 1)` in order from a zero accumulator, an odd length padded with a zero pair member.
pub fn dot(w: &[u16], x: &[u16]) -> f32 {
    assert_eq!(w.len(), x.len());
    let at = |v: &[u16], i: usize| v.get(i).copied().unwrap_or(0);
    (0..w.len().div_ceil(2)).fold(0.0, |acc, j| {
        dot_pair(acc, [at(w, 2 * j), at(w, 2 * j + 1)], [at(x, 2 * j), at(x, 2 * j + 1)])
    })
}

/// Whether the active SIMD level has the bf16 kernels: AVX-512 with AVX512_BF16, unless `BUSHU_BF16=0`
/// (the f32 kernels then, as on other hosts).
pub fn active() -> bool {
    at(crate::Simd::active())
}

/// [`active`] for a given level.
pub fn at(level: crate::Simd) -> bool {
    use std::sync::OnceLock;
    static HOST: OnceLock<bool> = OnceLock::new();
    level == crate::Simd::Avx512 && *HOST.get_or_init(|| host() && crate::simd::env_switch("BUSHU_BF16", true))
}

/// Whether this CPU has AVX512_BF16 (and the AVX-512 level).
pub fn host() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::Simd::Avx512.available() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_by_hand() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6).
        assert_eq!(round(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(round(-2.5), 0xc020);
        assert_eq!(round(f32::from_bits(1)), 0);
        assert_eq!(round(-f32::from_bits(1)), 0x8000);
        assert_eq!(round(f32::INFINITY), 0x7f80);
        assert_eq!(round(f32::NAN) & 0x7fc0, 0x7fc0);
        // The largest finite f32 rounds up to infinity, as the integer add carries into the exponent.
        assert_eq!(round(f32::MAX), 0x7f80);
        assert_eq!(widen(0x3f80), 1.0);
    }

    #[test]
    fn pair_order() {
        // acc = 2^24 (its ulp is 2): two sums, each rounded to nearest even, odd product first.
        let (big, one, one_half) = (16777216.0f32, round(1.0), round(1.5));
        // 2^24 + 1 ties to 2^24, + 1 ties to 2^24 again (one fused sum would give 2^24 + 2).
        assert_eq!(dot_pair(big, [one, one], [one, one]), big);
        // odd first: 2^24 + 1 → 2^24, + 1.5 → 2^24 + 2; even first would give 2^24 + 1.5 → 2^24 + 2,
        // + 1 → 2^24 + 3, a tie to 2^24 + 4.
        assert_eq!(dot_pair(big, [one_half, one], [one, one]), big + 2.0);
        assert_eq!(dot(&[one, round(3.0), round(0.5)], &[one, one, round(2.0)]), 5.0);
    }
}
