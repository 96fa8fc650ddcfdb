//! The roofline analyzer (lecture §3): where prefill and decode of a Llama-family model sit against a
//! machine's compute and bandwidth roofs.
//!
//! - [`hardware`]: datasheet presets, the ridge point and the bandwidth unit convention.
//! - [`measure`]: this machine's streaming-read bandwidth and F32 / int8 compute peaks, measured.
//! - [`analysis`]: FLOPs, bytes and intensity per operation and per op family, for prefill and decode,
//!   with the counting assumptions that reproduce the lecture's numbers.
//! - [`run`]: measured points: bushu's own engine timed on prefill and decode.
//! - [`plot`]: the roofline chart as SVG.
//!
//! `docs/ROOFLINE.md` explains the conventions and how to read the output.

pub mod analysis;
pub mod hardware;
pub mod measure;
pub mod plot;
pub mod run;

pub use analysis::{analyze, matmul_intensity, Analysis, Dtypes, Family, Options, Pass, Shape};
pub use hardware::{preset, BandwidthUnit, Hardware};
pub use measure::Measured;
pub use run::RunPoint;

use serde::Serialize;

impl Hardware {
    /// The roof of this machine from `--measure`: F32 FMA peak and streaming-read bandwidth, with the
    /// int8 peak as a secondary roof.
    pub fn from_measured(m: &Measured) -> Hardware {
        let mut other_peaks = Vec::new();
        if let Some(i) = &m.int8_ops {
            other_peaks.push((format!("INT8 dot ({})", i.kernel), i.best));
        }
        Hardware {
            name: "this-machine".to_owned(),
            description: format!("{} ({} threads), measured", m.cpu, m.f32_flops.threads),
            peak_flops: m.f32_flops.best,
            compute_type: format!("F32 FMA ({}, {} threads)", m.f32_flops.kernel, m.f32_flops.threads),
            bandwidth: m.bandwidth.best,
            bandwidth_note: m.bandwidth.method.clone(),
            other_peaks,
        }
    }
}

/// Everything `bushu roofline` computed, as printed by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub hardware: Hardware,
    pub ridge: f64,
    pub measured: Option<Measured>,
    pub model: Option<String>,
    pub analysis: Analysis,
    pub summary: Vec<SummaryRow>,
    pub runs: Vec<RunPoint>,
}

/// One line of the per-family summary (also what `--json` gives under `summary`).
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub phase: String,
    /// `linear`, `attention`, `others`, `attention (flash)`, `total` or `total (flash)`.
    pub family: String,
    pub flops: f64,
    pub bytes: f64,
    /// FLOP/byte.
    pub intensity: f64,
    /// `compute` or `bandwidth`.
    pub bound: String,
    /// The roof at this intensity, FLOP/s.
    pub attainable: f64,
    /// Lower bound on the time: `max(flops / peak, bytes / bandwidth)`, seconds.
    pub min_seconds: f64,
}

impl SummaryRow {
    pub fn new(hw: &Hardware, phase: &str, family: &str, flops: f64, bytes: f64) -> SummaryRow {
        let intensity = flops / bytes;
        SummaryRow {
            phase: phase.to_owned(),
            family: family.to_owned(),
            flops,
            bytes,
            intensity,
            bound: hw.bound(intensity).to_owned(),
            attainable: hw.attainable(intensity),
            min_seconds: (flops / hw.peak_flops).max(bytes / hw.bandwidth),
        }
    }
}

/// Per-family rows of both phases, with the FlashAttention variant and the totals.
pub fn summarize(hw: &Hardware, a: &Analysis) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for p in [&a.prefill, &a.decode] {
        for f in Family::ALL {
            let t = p.family(f);
            rows.push(SummaryRow::new(hw, &p.phase, f.name(), t.flops, t.bytes));
        }
        let fa = &p.flash_attention;
        rows.push(SummaryRow::new(hw, &p.phase, "attention (flash)", fa.flops, fa.bytes));
        let t = p.total();
        rows.push(SummaryRow::new(hw, &p.phase, "total", t.flops, t.bytes));
        let t = p.total_flash();
        rows.push(SummaryRow::new(hw, &p.phase, "total (flash)", t.flops, t.bytes));
    }
    rows
}
