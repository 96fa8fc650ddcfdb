//! Which instruction set the kernels use, chosen once at run time.
//!
//! The best level the CPU supports is detected with `is_x86_feature_detected!` (never a compile-time
//! `target-cpu`), so one binary runs the AVX-512 kernels on Zen 4/5, the AVX2 ones on Zen 1-3 and the
//! NEON ones on aarch64. `BUSHU_SIMD=scalar|avx2|avx512|neon` forces a level (a level the CPU lacks is
//! refused with a warning and the best available one is used), so every path can be checked against
//! the scalar reference.

use std::sync::OnceLock;

/// An instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (plus everything `Avx2` needs).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Simd {
    pub const ALL: [Simd; 4] = [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Neon => "neon",
        }
    }

    /// Parses a `BUSHU_SIMD` value (case-insensitive).
    pub fn from_name(s: &str) -> Option<Simd> {
        Simd::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the kernels of this level.
    pub fn available(self) -> bool {
        match self {
            Simd::Scalar => true,
            Simd::Avx2 => x86_avx2(),
            Simd::Avx512 => x86_avx2() && x86_avx512(),
            Simd::Neon => cfg!(target_arch = "aarch64"),
        }
    }

    /// The fastest level this CPU supports.
    pub fn detect() -> Simd {
        best(Simd::available)
    }

    /// The level the kernels use: `BUSHU_SIMD` if set and available, else [`Simd::detect`].
    pub fn active() -> Simd {
        static ACTIVE: OnceLock<Simd> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let env = std::env::var("BUSHU_SIMD").ok();
            choose(env.as_deref(), Simd::available).unwrap_or_else(|(msg, fallback)| {
                eprintln!("warning: {msg}; using {}", fallback.name());
                fallback
            })
        })
    }

    /// Levels this CPU can run, scalar first.
    pub fn available_levels() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|l| l.available()).collect()
    }
}

impl std::fmt::Display for Simd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best level for which `available` holds.
pub fn best(available: impl Fn(Simd) -> bool) -> Simd {
    [Simd::Avx512, Simd::Avx2, Simd::Neon]
        .into_iter()
        .find(|&l| available(l))
        .unwrap_or(Simd::Scalar)
}

/// The level for a `BUSHU_SIMD` value `env` given which levels are `available`; an unknown or
/// unavailable request is an error carrying the level to fall back to.
pub fn choose(env: Option<&str>, available: impl Fn(Simd) -> bool) -> Result<Simd, (String, Simd)> {
    let fallback = best(&available);
    match env.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(fallback),
        Some(s) => match Simd::from_name(s) {
            Some(l) if available(l) => Ok(l),
            Some(l) => Err((
                format!("BUSHU_SIMD={s}: this CPU cannot run the {} kernels", l.name()),
                fallback,
            )),
            None => Err((
                format!("BUSHU_SIMD={s}: expected scalar, avx2, avx512 or neon"),
                fallback,
            )),
        },
    }
}

#[cfg(target_arch = "x86_64")]
fn x86_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn x86_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_avx2() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_avx512() -> bool {
    false
}

/// Whether the AVX-512 level's packed kernels — the sixteen-row ones and the eight-row ones it runs
/// (decode on AMD, odd last groups, the int16 classifier) — prefetch the weights ahead in software
/// (`BUSHU_PREFETCH=0|1` forces it): on Intel yes (the Xeon of sessions 8-12: Q8_0 5632 x 2048 with
/// 4-16 tokens 1.14-1.47x), on AMD no — on Zen 4 the hardware prefetchers alone stream faster, and the
/// software prefetches slowed decode (Q4_K 5632 x 2048, one thread, 0.47-0.66 ms per product without,
/// 0.80-0.85 with; docs/BENCHMARKS.md, session 13; the eight-row kernels from memory on huge pages,
/// session 15: Q4_K 0.185 vs 0.191 ms, Q8_0 0.337 vs 0.340, medians of five pairs). The AVX2 level
/// (AVX2-only hosts) always prefetches: Zen 3 streamed faster with it.
pub(crate) fn prefetch_512() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| env_switch("BUSHU_PREFETCH", !amd()))
}

/// Whether the AVX-512 level decodes (one token; also two and three: `x86::packed512`'s
/// `EIGHT_ROWS_UP_TO`) with the 256-bit eight-row packed kernels
/// (`BUSHU_DECODE8=0|1` forces it): on AMD yes — on Zen 4, whose 512-bit instructions run as two
/// halves, they stream the weights faster than the sixteen-row ones (`matbench` 5632 x 2048, 2 threads:
/// Q4_0 0.26-0.31 → 0.21-0.23 ms, Q4_K 0.35 → 0.23-0.27, Q4_1, Q6_K 1.1x, Q8_0 alike; Qwen2.5-Coder-1.5B
/// Q4_K_M decode 17.8 → 23.2 t/s). Their `vpdpbusd` sums, split into two chains
/// (`x86::packed`'s `IAcc::CHAINS`), run 1.05-1.18x faster than `maddubs` ones in cache (one
/// thread, every block type). The sixteen-row kernels sum the same integers with the same float
/// operations per row: the same bits.
pub(crate) fn decode_eight_rows() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| env_switch("BUSHU_DECODE8", amd()))
}

/// The environment variable `name` as a switch: `0` off, `1` on, anything else (or unset) `default`.
pub(crate) fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name).ok().as_deref().map(str::trim) {
        Some("0") => false,
        Some("1") => true,
        _ => default,
    }
}

/// Whether the CPU's vendor is AMD (CPUID leaf 0: "AuthenticAMD").
fn amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        [r.ebx, r.edx, r.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks the CPU to bring the cache lines of the `bytes` bytes from `p` into its caches: a hint, which
/// never faults whatever the address (even past the data). A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_bytes(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}
