//! Measuring this machine's roof with bushu's own micro-kernels (`--measure`).
//!
//! - **Bandwidth**: a multi-threaded streaming read (the `stream`-style "read" or "sum" kernel): a buffer
//!   far larger than the caches (512 MiB by default) is first-touched by the threads that later read it,
//!   then every thread sums its contiguous slice with wide vector loads and several independent
//!   accumulators; bytes read / wall time, best of several passes.
//! - **F32 peak**: every thread runs independent chains of vector fused multiply-adds (12 chains of
//!   `vfmadd` on AVX2, 24 on AVX-512: enough to cover the FMA latency on every port); 2 FLOPs per lane.
//! - **Int8 peak**: `vpdpbusd` (AVX-512 VNNI: 64 u8 x i8 multiply-adds into i32 per instruction) or, on
//!   AVX2, the `vpmaddubsw` + `vpmaddwd` + `vpaddd` sequence llama.cpp-style kernels use (32 per
//!   sequence); 2 OPs per multiply-add.
//!
//! The kernels are chosen at run time with `is_x86_feature_detected!`; other CPUs get scalar loops (the
//! compiler may vectorise them to the build's baseline).

use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

/// A measured rate.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    /// Best rate seen (byte/s, FLOP/s or OP/s).
    pub best: f64,
    /// Median over the passes.
    pub median: f64,
    pub passes: usize,
    pub threads: usize,
    /// The kernel used, e.g. `avx2+fma`.
    pub kernel: String,
    /// How it was measured, in words.
    pub method: String,
}

/// Everything `--measure` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub cpu: String,
    pub bandwidth: Rate,
    pub f32_flops: Rate,
    /// `None` when the CPU has no int8 dot-product instruction bushu knows.
    pub int8_ops: Option<Rate>,
}

fn best_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (*v.last().unwrap(), v[v.len() / 2])
}

/// Threads to use: all the cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The CPU's model name (Linux `/proc/cpuinfo`), or the architecture.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

// ---------------------------------------------------------------------------------------------------
// Streaming read.

fn read_kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "scalar"
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let chunks = x.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        let p = c.as_ptr();
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(8 * j)));
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    let chunks = x.chunks_exact(64);
    let rest = chunks.remainder();
    for c in chunks {
        let p = c.as_ptr();
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, _mm512_loadu_ps(p.add(16 * j)));
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s) + rest.iter().sum::<f32>()
}

fn sum_scalar(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

fn sum(x: &[f32], kernel: &str) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel name was chosen by `read_kernel_name` from run-time feature detection.
        match kernel {
            "avx512f" => return unsafe { sum_avx512(x) },
            "avx2" => return unsafe { sum_avx2(x) },
            _ => {}
        }
    }
    let _ = kernel;
    sum_scalar(x)
}

/// Streaming-read bandwidth over a `bytes`-sized buffer with `threads` threads, best of `passes`.
pub fn bandwidth(bytes: usize, threads: usize, passes: usize) -> Rate {
    let threads = threads.max(1);
    let passes = passes.max(1);
    let n = (bytes / 4).max(threads * 64);
    let kernel = read_kernel_name();
    let mut buf: Vec<f32> = Vec::with_capacity(n);
    // First touch by the reading threads (NUMA placement), values that sum to something non-trivial.
    {
        let spare = &mut buf.spare_capacity_mut()[..n];
        let per = n.div_ceil(threads);
        std::thread::scope(|s| {
            for (t, chunk) in spare.chunks_mut(per).enumerate() {
                s.spawn(move || {
                    for (i, v) in chunk.iter_mut().enumerate() {
                        v.write(((t * per + i) % 7) as f32 * 0.25);
                    }
                });
            }
        });
        // SAFETY: all `n` elements were written just above.
        unsafe { buf.set_len(n) };
    }
    let per = n.div_ceil(threads);
    let mut rates = Vec::with_capacity(passes);
    for _ in 0..passes + 1 {
        let t0 = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| s.spawn(move || sum(black_box(c), kernel)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        black_box(total);
        rates.push((n * 4) as f64 / t0.elapsed().as_secs_f64());
    }
    rates.remove(0); // warm-up pass
    let (best, median) = best_median(rates);
    Rate {
        best,
        median,
        passes,
        threads,
        kernel: kernel.to_owned(),
        method: format!(
            "streaming read (sum) of a {} MiB f32 buffer, {threads} threads each reading a contiguous slice with \
             {kernel} loads into 4 accumulators, first-touched by its reader; best of {passes} passes after a warm-up",
            (n * 4) >> 20
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// F32 FMA peak.

fn fma_kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "scalar"
}

/// Returns the FLOPs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-6);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = _mm256_set1_ps(1.0 + i as f32);
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    black_box(out);
    (iters * 12 * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-6);
    let mut acc = [_mm512_set1_ps(1.0); 24];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = _mm512_set1_ps(1.0 + i as f32);
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    black_box(_mm512_reduce_add_ps(s));
    (iters * 24 * 16 * 2) as f64
}

fn fma_scalar(iters: usize) -> f64 {
    let (a, b) = (black_box(0.999_999f32), black_box(1e-6f32));
    let mut acc = [1f32; 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * a + b;
        }
    }
    black_box(acc);
    (iters * 16 * 2) as f64
}

fn fma_run(kernel: &str, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel name was chosen by `fma_kernel_name` from run-time feature detection.
        match kernel {
            "avx512f" => return unsafe { fma_avx512(iters) },
            "avx2+fma" => return unsafe { fma_avx2(iters) },
            _ => {}
        }
    }
    let _ = kernel;
    fma_scalar(iters)
}

// ---------------------------------------------------------------------------------------------------
// Int8 dot peak.

fn int8_kernel_name() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            return Some("avx512vnni");
        }
        if is_x86_feature_detected!("avx2") {
            return Some("avx2");
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn int8_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    // Each chain feeds its own accumulator back in as the u8 operand, so nothing is loop-invariant.
    let sb = _mm256_set1_epi8(-2);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 12];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = _mm256_set1_epi8(i as i8 + 1);
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            let p = _mm256_maddubs_epi16(*v, sb);
            *v = _mm256_add_epi32(*v, _mm256_madd_epi16(p, ones));
        }
    }
    let mut s = _mm256_setzero_si256();
    for v in acc {
        s = _mm256_add_epi32(s, v);
    }
    black_box(s);
    (iters * 12 * 32 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_vnni(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let ua = _mm512_set1_epi8(3);
    let sb = _mm512_set1_epi8(-2);
    let mut acc = [_mm512_setzero_si512(); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, ua, sb);
        }
    }
    let mut s = _mm512_setzero_si512();
    for v in acc {
        s = _mm512_add_epi32(s, v);
    }
    black_box(_mm512_reduce_add_epi32(s));
    (iters * 16 * 64 * 2) as f64
}

fn int8_run(kernel: &str, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel name was chosen by `int8_kernel_name` from run-time feature detection.
        match kernel {
            "avx512vnni" => return unsafe { int8_vnni(black_box(iters)) },
            "avx2" => return unsafe { int8_avx2(black_box(iters)) },
            _ => {}
        }
    }
    let _ = (kernel, iters);
    0.0
}

/// Runs `f(iters)` (returning its op count) on `threads` threads; ops / wall time, best of `passes`.
fn compute_rate(threads: usize, passes: usize, iters: usize, f: impl Fn(usize) -> f64 + Sync) -> (f64, f64) {
    let mut rates = Vec::with_capacity(passes);
    for _ in 0..passes + 1 {
        let t0 = Instant::now();
        let ops: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| f(black_box(iters)))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        rates.push(ops / t0.elapsed().as_secs_f64());
    }
    rates.remove(0);
    best_median(rates)
}

/// F32 FMA peak with `threads` threads.
pub fn f32_peak(threads: usize, passes: usize) -> Rate {
    let threads = threads.max(1);
    let passes = passes.max(1);
    let kernel = fma_kernel_name();
    let iters = if kernel == "scalar" { 2_000_000 } else { 4_000_000 };
    let (best, median) = compute_rate(threads, passes, iters, |n| fma_run(kernel, n));
    let chains = match kernel {
        "avx512f" => "24 chains of 16-lane",
        "avx2+fma" => "12 chains of 8-lane",
        _ => "16 scalar",
    };
    Rate {
        best,
        median,
        passes,
        threads,
        kernel: kernel.to_owned(),
        method: format!(
            "{threads} threads x {chains} independent f32 fused multiply-adds (2 FLOP per lane), \
             {iters} iterations each; best of {passes} passes after a warm-up"
        ),
    }
}

/// Int8 dot-product peak, if the CPU has an instruction for it.
pub fn int8_peak(threads: usize, passes: usize) -> Option<Rate> {
    let threads = threads.max(1);
    let passes = passes.max(1);
    let kernel = int8_kernel_name()?;
    let iters = 2_000_000;
    let (best, median) = compute_rate(threads, passes, iters, |n| int8_run(kernel, n));
    let how = match kernel {
        "avx512vnni" => "16 chains of vpdpbusd (64 u8 x i8 MACs each)",
        _ => "12 dependent chains of vpmaddubsw + vpmaddwd + vpaddd (32 u8 x i8 MACs each)",
    };
    Some(Rate {
        best,
        median,
        passes,
        threads,
        kernel: kernel.to_owned(),
        method: format!("{threads} threads x {how}, 2 OP per MAC; best of {passes} passes after a warm-up"),
    })
}

/// The full `--measure`: bandwidth over `buffer_bytes`, F32 and int8 peaks.
pub fn measure(threads: usize, buffer_bytes: usize, passes: usize) -> Measured {
    Measured {
        cpu: cpu_name(),
        bandwidth: bandwidth(buffer_bytes, threads, passes),
        f32_flops: f32_peak(threads, passes),
        int8_ops: int8_peak(threads, passes),
    }
}
