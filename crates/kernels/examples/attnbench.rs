//! Micro-benchmark of causal prefill attention: `cargo run --release -p bushu-kernels --example attnbench --
//! [TOKENS] [HEADS] [KV_HEADS] [HEAD_DIM] [ITERS]`; prints ms per call and GMAC/s (QK and PV products).

use kernels::attention::{attention, AttnShape};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("number")).collect();
    let n = a.first().copied().unwrap_or(512);
    let heads = a.get(1).copied().unwrap_or(32);
    let kv = a.get(2).copied().unwrap_or(4);
    let hd = a.get(3).copied().unwrap_or(64);
    let iters = a.get(4).copied().unwrap_or(10);
    let s = AttnShape {
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hd,
        window: None,
    };
    let rnd = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    };
    let (q, k, v) = (rnd(n * heads * hd, 1), rnd(n * kv * hd, 2), rnd(n * kv * hd, 3));
    let mut out = vec![0.0f32; n * heads * hd];
    attention(&q, &k, &v, &mut out, s, 0);
    let t0 = Instant::now();
    for _ in 0..iters {
        attention(&q, &k, &v, &mut out, s, 0);
    }
    let dt = t0.elapsed().as_secs_f64() / iters as f64;
    let macs = 2.0 * (n * (n + 1) / 2 * heads * hd) as f64;
    println!(
        "n={n} heads={heads}/{kv} hd={hd} {}: {:.2} ms, {:.2} GMAC/s",
        kernels::Simd::active(),
        dt * 1e3,
        macs / dt / 1e9
    );
}
