//! What memory the machine can give, and the checks that keep a user- or file-controlled size (a
//! context length from a model file, `--ctx`, `--kv-memory`, `--max-batch`) from reaching the
//! allocator unchecked: sizes are multiplied with overflow checks and compared with the memory
//! available before anything is allocated, so a size that cannot fit ends in one line naming the
//! number and the flag to change, never in "memory allocation of N bytes failed" and an abort.
//!
//! Available memory is Linux's `MemAvailable` (free memory plus what the kernel can reclaim), lowered
//! to the room left under a cgroup limit (a container's `memory.max`) when there is one.
//! `BUSHU_MEMORY_AVAILABLE` (a size, e.g. `2G`) overrides the measurement, for tests and for machines
//! where the measurement is wrong.

use anyhow::{bail, Context, Result};

/// Bytes of memory this process can still use, if the system says.
pub fn available_bytes() -> Option<u64> {
    if let Ok(v) = std::env::var("BUSHU_MEMORY_AVAILABLE") {
        return parse_size(&v).ok().map(|b| b as u64);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let avail = meminfo.as_deref().and_then(mem_available);
    let cgroup = cgroup_room();
    match (avail, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Room left under this process's cgroup v2 memory limit, if it has one.
fn cgroup_room() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// `5.6 GiB`, `720.0 KiB`, `12 bytes`.
pub fn fmt_bytes(b: u128) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} bytes");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `123`, `64K`, `512M`, `2G`, `1.5T` (powers of 1024; a trailing `B`/`iB` is allowed). Sizes that do
/// not fit in this machine's address space are refused here, with the number.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("cannot read the size '{s}' (e.g. 512M, 2G)"))?;
    if !v.is_finite() || v <= 0.0 {
        bail!("size '{s}' must be a positive number");
    }
    let bytes = v * mul as f64;
    if bytes >= usize::MAX as f64 {
        bail!("size '{s}' is larger than this machine can address");
    }
    Ok(bytes as usize)
}

/// `a * b * c` in bytes, without overflow (u128 holds any product of three `usize`s).
pub fn product(a: usize, b: usize, c: usize) -> u128 {
    a as u128 * b as u128 * c as u128
}

/// Fails unless `bytes` fit in the memory available (when known): `what` says what the bytes are for
/// (e.g. "the KV cache of 100000000 positions"), `flag` how to ask for less.
pub fn ensure_fits(bytes: u128, what: &str, flag: &str) -> Result<()> {
    ensure_fits_in(bytes, available_bytes(), what, flag)
}

/// [`ensure_fits`] against a given amount of available memory.
pub fn ensure_fits_in(bytes: u128, available: Option<u64>, what: &str, flag: &str) -> Result<()> {
    if bytes > usize::MAX as u128 {
        bail!(
            "{what} needs {}, more than this machine can address; {flag}",
            fmt_bytes(bytes)
        );
    }
    if let Some(avail) = available {
        if bytes > avail as u128 {
            bail!(
                "{what} needs {} but only {} of memory is available; {flag}",
                fmt_bytes(bytes),
                fmt_bytes(avail as u128)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24684060 kB\nMemFree:         1042000 kB\nMemAvailable:   24029184 kB\n";
        assert_eq!(mem_available(text), Some(24029184 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn sizes_and_their_limits() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        for bad in ["1e30", "1000000000T", "0", "-1G", "nan", "inf", "x"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_bytes(12), "12 bytes");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let e = ensure_fits_in(3 << 30, Some(2 << 30), "the KV cache of 9 positions", "lower --ctx")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the KV cache of 9 positions needs 3.0 GiB but only 2.0 GiB of memory is available; lower --ctx"
        );
        assert!(ensure_fits_in(1 << 30, Some(2 << 30), "x", "y").is_ok());
        assert!(ensure_fits_in(u128::MAX, None, "x", "y").is_err());
        assert_eq!(product(usize::MAX, 2, 2), usize::MAX as u128 * 4);
    }
}
