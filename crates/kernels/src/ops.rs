//! Element-wise and per-vector operations of a transformer block: RMSNorm, softmax, SwiGLU, RoPE.

/// `out = x / sqrt(mean(x^2) + eps) * weight`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * w;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `gate = silu(gate) * up`, the SwiGLU of Llama's feed-forward block; long vectors (a batch of
/// tokens) are split across the thread pool.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    const CHUNK: usize = 4096;
    fn one(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }
    if gate.len() < 2 * CHUNK {
        return one(gate, up);
    }
    crate::pool::for_each_chunk_mut(gate, CHUNK, &|i, g| one(g, &up[i * CHUNK..]));
}

/// `gate = gelu(gate) * up` with GELU's tanh approximation, the GeGLU of Gemma's feed-forward block
/// (`gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, computed as
/// `x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`, the same function); long vectors are split across the
/// thread pool.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const CHUNK: usize = 4096;
    fn one(gate: &mut [f32], up: &[f32]) {
        // 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2z)): one exp per value, as SiLU, instead of libm's tanh
        // (which goes through expm1 and was 14 % of a Gemma prefill).
        const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
        for (g, &u) in gate.iter_mut().zip(up) {
            let x = *g;
            let z = TWO_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
            *g = x / (1.0 + (-z).exp()) * u;
        }
    }
    if gate.len() < 2 * CHUNK {
        return one(gate, up);
    }
    crate::pool::for_each_chunk_mut(gate, CHUNK, &|i, g| one(g, &up[i * CHUNK..]));
}

/// RMSNorm of every `weight.len()`-sized piece of `x` in place (per-head QK-norm).
pub fn rmsnorm_pieces(x: &mut [f32], weight: &[f32], eps: f32) {
    for piece in x.chunks_exact_mut(weight.len()) {
        let ss: f32 = piece.iter().map(|v| v * v).sum::<f32>() / piece.len() as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, &w) in piece.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions (2i, 2i+1) rotate together: GGUF Llama files (whose converter permuted Q and K rows).
    Interleaved,
    /// Dimensions (i, i + d/2) rotate together ("rotate_half"): Hugging Face checkpoints, GGUF Qwen2.
    Neox,
}

/// Rotates every head of `x` (`x.len() / head_dim` heads) for position `pos`; `inv_freq` has one
/// frequency per rotated pair (`rope_dim / 2`; dimensions past `rope_dim` are left as they are).
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], style: RopeStyle) {
    let half = inv_freq.len();
    // Each pair's angle once for all heads.
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = (pos as f32 * f).sin_cos();
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        for head in x.chunks_exact_mut(head_dim) {
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod geglu_tests {
    /// The sigmoid form equals the tanh form of GELU within f32 rounding, over the range that matters
    /// (and saturates cleanly far out).
    #[test]
    fn geglu_is_gelu_tanh() {
        let xs: Vec<f32> = (-4000..=4000)
            .map(|i| i as f32 * 0.005)
            .chain([-100.0, 100.0])
            .collect();
        let mut g = xs.clone();
        super::geglu(&mut g, &vec![1.0; xs.len()]);
        for (&x, &y) in xs.iter().zip(&g) {
            let x64 = x as f64;
            let want =
                0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
            assert!(
                (y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {y}, expected {want}"
            );
        }
    }
}
