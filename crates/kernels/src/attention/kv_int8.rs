//! Keys and values cached in int8 (`--kv-type int8`): each head of each position is quantized on its own
//! (symmetric absmax, one f32 scale per `head_dim` values), so a value written once never changes and
//! later positions never force a requantization. Attention dequantizes inside its dot product and
//! weighted sum ([`KvRows`]). Storage per value: 1 byte + 4/`head_dim` (1.06 bytes at head size 64,
//! 3.8x less than f32).

use super::KvRows;

/// One layer's int8 keys or values: `q` holds `slots x kv_dim` codes, `scale` one f32 per
/// `head_dim` codes (value = `scale[i / head_dim] * q[i]`).
#[derive(Clone, Copy)]
pub struct KvI8<'a> {
    pub q: &'a [i8],
    pub scale: &'a [f32],
    pub head_dim: usize,
}

impl KvRows for KvI8<'_> {
    #[inline(always)]
    fn load8(&self, at: usize) -> [f32; 8] {
        let c: &[i8; 8] = self.q[at..at + 8].try_into().unwrap();
        c.map(|v| v as f32)
    }

    #[inline(always)]
    fn load1(&self, at: usize) -> f32 {
        self.q[at] as f32
    }

    #[inline(always)]
    fn row_scale(&self, at: usize) -> f32 {
        self.scale[at / self.head_dim]
    }

    #[inline(always)]
    fn prefetch(&self, at: usize, len: usize) {
        crate::simd::prefetch_bytes(self.q[at..].as_ptr().cast(), len);
    }

    #[inline(always)]
    fn axpy(&self, out: &mut [f32], a: f32, at: usize) {
        let a = a * self.row_scale(at);
        let x = &self.q[at..][..out.len()];
        for (o, &v) in out.iter_mut().zip(x) {
            *o = a.mul_add(v as f32, *o);
        }
    }
}

/// Quantizes `x` (whole heads of `head_dim` values) into `q`, one absmax scale per head into `scale`.
/// A head with a NaN or an infinity is stored as zero codes with a NaN scale, so it reads back as NaN
/// rather than as quietly rounded numbers.
pub fn quantize_heads(x: &[f32], head_dim: usize, q: &mut [i8], scale: &mut [f32]) {
    debug_assert_eq!(x.len(), scale.len() * head_dim);
    for ((xh, qh), s) in x.chunks_exact(head_dim).zip(q.chunks_exact_mut(head_dim)).zip(scale) {
        let amax = xh.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !xh.iter().all(|v| v.is_finite()) {
            qh.fill(0);
            *s = if amax == 0.0 { 0.0 } else { f32::NAN };
            continue;
        }
        let inv = 127.0 / amax;
        for (o, &v) in qh.iter_mut().zip(xh) {
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        *s = amax / 127.0;
    }
}

/// The values of whole heads stored by [`quantize_heads`].
pub fn dequantize_heads(q: &[i8], scale: &[f32], head_dim: usize, out: &mut [f32]) {
    for ((o, qh), &s) in out.chunks_exact_mut(head_dim).zip(q.chunks_exact(head_dim)).zip(scale) {
        for (x, &c) in o.iter_mut().zip(qh) {
            *x = s * c as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{attention, attention_kv, AttnShape};

    fn rnd(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
    }

    #[test]
    fn heads_round_trip_within_half_a_step() {
        let mut seed = 1u64;
        let hd = 16;
        let x: Vec<f32> = (0..4 * hd).map(|_| rnd(&mut seed)).collect();
        let mut x = x;
        x[hd..2 * hd].fill(0.0); // an all-zero head
        let (mut q, mut s, mut back) = (vec![0i8; x.len()], vec![0.0f32; 4], vec![0.0f32; x.len()]);
        quantize_heads(&x, hd, &mut q, &mut s);
        dequantize_heads(&q, &s, hd, &mut back);
        assert_eq!(s[1], 0.0);
        for (h, (xh, bh)) in x.chunks(hd).zip(back.chunks(hd)).enumerate() {
            for (a, b) in xh.iter().zip(bh) {
                assert!((a - b).abs() <= s[h] / 2.0 + 1e-7, "head {h}: {a} -> {b}");
            }
            if s[h] > 0.0 {
                assert!(q[h * hd..(h + 1) * hd].iter().any(|&c| c.abs() == 127));
            }
        }
    }

    /// Attention over an int8 cache equals f32 attention over the dequantized cache (the same
    /// arithmetic up to rounding) and stays within a stated tolerance of attention over the f32 cache.
    #[test]
    fn int8_cache_close_to_f32() {
        let s = AttnShape {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 32,
            window: None,
        };
        let kv_dim = s.n_kv_heads * s.head_dim;
        let (n, pos0) = (4, 200);
        let len = n + pos0;
        let mut seed = 5u64;
        let q: Vec<f32> = (0..n * s.n_heads * s.head_dim).map(|_| rnd(&mut seed)).collect();
        let k: Vec<f32> = (0..len * kv_dim).map(|_| rnd(&mut seed)).collect();
        let v: Vec<f32> = (0..len * kv_dim).map(|_| rnd(&mut seed)).collect();
        let heads = len * s.n_kv_heads;
        let (mut kq, mut ks, mut vq, mut vs) = (
            vec![0i8; k.len()],
            vec![0.0; heads],
            vec![0i8; v.len()],
            vec![0.0; heads],
        );
        quantize_heads(&k, s.head_dim, &mut kq, &mut ks);
        quantize_heads(&v, s.head_dim, &mut vq, &mut vs);
        let (mut kd, mut vd) = (vec![0.0; k.len()], vec![0.0; v.len()]);
        dequantize_heads(&kq, &ks, s.head_dim, &mut kd);
        dequantize_heads(&vq, &vs, s.head_dim, &mut vd);
        let ki = KvI8 {
            q: &kq,
            scale: &ks,
            head_dim: s.head_dim,
        };
        let vi = KvI8 {
            q: &vq,
            scale: &vs,
            head_dim: s.head_dim,
        };
        let (mut int8, mut deq, mut full) = (vec![0.0; q.len()], vec![0.0; q.len()], vec![0.0; q.len()]);
        attention_kv(&q, &ki, &vi, &mut int8, s, pos0);
        attention(&q, &kd, &vd, &mut deq, s, pos0);
        attention(&q, &k, &v, &mut full, s, pos0);
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(
            max_diff(&int8, &deq) < 1e-5,
            "int8 vs dequantized: {}",
            max_diff(&int8, &deq)
        );
        // Values in [-2, 2): a step of 2/127; outputs are averages of values, scores move by < 1 %.
        let err = max_diff(&int8, &full);
        assert!(err < 0.02, "int8 cache vs f32 cache: max difference {err}");
        assert!(err > 0.0, "quantization changed nothing");
    }
}
