//! Micro-benchmark of one matrix product: `cargo run --release -p bushu-kernels --example matbench --
//! TYPE ROWS COLS TOKENS [exact|fast|wide|bf16] [ITERS]` (random codes); prints the mean, median and least time
//! of a product, GB/s of weights and GMAC/s (at the mean).

use kernels::{matmul_with, DType, Precision, QMatrix};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let t = DType::from_name(a.get(1).map_or("q8_0", |s| s)).expect("type");
    let rows: usize = a.get(2).map_or(5632, |s| s.parse().unwrap());
    let cols: usize = a.get(3).map_or(2048, |s| s.parse().unwrap());
    let n: usize = a.get(4).map_or(1, |s| s.parse().unwrap());
    let p = match a.get(5).map(|s| s.as_str()) {
        Some("exact") => Precision::Exact,
        Some("wide") => Precision::Wide,
        Some("bf16") => Precision::Bf16,
        _ => Precision::Fast,
    };
    let iters: usize = a.get(6).map_or(50, |s| s.parse().unwrap());
    // Several matrices so the working set exceeds the caches, as in a model.
    let nmat = std::env::var("NMAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or((256 << 20) / t.bytes_for(rows * cols).unwrap() + 1);
    let mut seed = 1u32;
    let mats: Vec<Vec<u8>> = (0..nmat)
        .map(|_| {
            let mut d: Vec<u8> = (0..t.bytes_for(rows * cols).unwrap())
                .map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    (seed >> 24) as u8 & 0x3b
                })
                .collect();
            if t.is_quantized() {
                for b in d.chunks_exact_mut(t.block_bytes()) {
                    b[0] = 0;
                    b[1] = 0x20;
                }
            }
            d
        })
        .collect();
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut y = vec![0.0; n * rows];
    // Packed weights for the fast kernels (as the model uses them) unless PACK=0.
    let pack = std::env::var("PACK").map_or(true, |v| v != "0");
    let slots: Vec<kernels::PackSlot> = (0..nmat).map(|_| Default::default()).collect();
    let mut run = |k: usize| {
        let mut m = QMatrix::new(t, rows, cols, &mats[k % nmat]);
        if pack {
            m = m.with_pack(&slots[k % nmat]);
        }
        matmul_with(&m, &x, &mut y, p);
    };
    let t0 = Instant::now();
    for k in 0..nmat {
        run(k);
    }
    println!(
        "first pass over {nmat} matrices (packing included): {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let mut each: Vec<f64> = (0..iters)
        .map(|k| {
            let t = Instant::now();
            run(k);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let s = t0.elapsed().as_secs_f64() / iters as f64;
    each.sort_by(f64::total_cmp);
    let (median, least) = (each[iters / 2], each[0]);
    let cpu = (cpu_seconds() - c0) / iters as f64;
    let bytes = t.bytes_for(rows * cols).unwrap() as f64;
    println!(
        "{t} {rows}x{cols} n={n} {p:?} {}: {:.3} ms (median {:.3}, least {:.3}; cpu {:.3} ms), {:.2} GB/s, {:.2} GMAC/s",
        kernels::Simd::active(),
        s * 1e3,
        median * 1e3,
        least * 1e3,
        cpu * 1e3,
        bytes / s / 1e9,
        (rows * cols * n) as f64 / s / 1e9
    );
}

/// User + system CPU time of this process (all threads), from /proc.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
