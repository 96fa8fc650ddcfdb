//! Hardware roofs: a peak compute rate (FLOP/s) and a peak memory bandwidth (byte/s); their ratio is the
//! ridge point (FLOP/byte). Presets come from vendor datasheets (dense, no sparsity); `--measure` builds
//! one for this machine (see [`super::measure`]).
//!
//! **Unit convention.** Datasheets give bandwidth in "GB/s". The lecture's A100 ridge of 142.51 FLOP/byte
//! comes out only when 2039 "GB/s" is read as 2039 GiB/s (2039 x 2^30 byte/s):
//! 312e12 / (2039 x 2^30) = 142.507, whereas 312e12 / 2039e9 = 153.02. bushu follows the lecture by
//! default ([`BandwidthUnit::GiB`]); `--decimal-gb` reads the datasheet figures as 10^9 byte/s. Measured
//! bandwidths are plain byte/s and are printed as GB/s (10^9).

use anyhow::{bail, Result};
use serde::Serialize;

/// How a datasheet's "GB/s" is turned into byte/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BandwidthUnit {
    /// 2^30 byte/s: the lecture's convention (gives its 142.51 FLOP/byte for the A100).
    GiB,
    /// 10^9 byte/s: the datasheet's literal meaning.
    Gb,
}

impl BandwidthUnit {
    pub fn bytes(self) -> f64 {
        match self {
            BandwidthUnit::GiB => (1u64 << 30) as f64,
            BandwidthUnit::Gb => 1e9,
        }
    }
}

/// A datasheet entry.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The `--hardware` name.
    pub name: &'static str,
    pub description: &'static str,
    /// Dense peak of the main compute type, TFLOP/s.
    pub tflops: f64,
    /// What `tflops` is the peak of.
    pub compute_type: &'static str,
    /// Datasheet memory bandwidth, "GB/s".
    pub gbps: f64,
    /// Other peaks (label, TFLOP/s or TOP/s), drawn as extra roofs.
    pub other_peaks: &'static [(&'static str, f64)],
}

/// Datasheet presets (dense tensor-core / matrix peaks, no 2:4 sparsity).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "a100-80g",
        description: "NVIDIA A100 80GB SXM (HBM2e)",
        tflops: 312.0,
        compute_type: "BF16 tensor core",
        gbps: 2039.0,
        other_peaks: &[("FP32", 19.5), ("INT8", 624.0)],
    },
    Preset {
        name: "a100-40g",
        description: "NVIDIA A100 40GB SXM (HBM2)",
        tflops: 312.0,
        compute_type: "BF16 tensor core",
        gbps: 1555.0,
        other_peaks: &[("FP32", 19.5), ("INT8", 624.0)],
    },
    Preset {
        name: "h100-sxm",
        description: "NVIDIA H100 SXM5 80GB (HBM3)",
        tflops: 989.4,
        compute_type: "BF16 tensor core",
        gbps: 3350.0,
        other_peaks: &[("FP32", 66.9), ("FP8", 1978.9)],
    },
    Preset {
        name: "h100-pcie",
        description: "NVIDIA H100 PCIe 80GB (HBM2e)",
        tflops: 756.0,
        compute_type: "BF16 tensor core",
        gbps: 2000.0,
        other_peaks: &[("FP32", 51.2)],
    },
    Preset {
        name: "rtx4090",
        description: "NVIDIA GeForce RTX 4090 (GDDR6X)",
        tflops: 165.2,
        compute_type: "BF16 tensor core, FP32 accumulate",
        gbps: 1008.0,
        other_peaks: &[("FP32", 82.6), ("INT8", 660.6)],
    },
    Preset {
        name: "mi300x",
        description: "AMD Instinct MI300X (HBM3)",
        tflops: 1307.4,
        compute_type: "BF16 matrix",
        gbps: 5300.0,
        other_peaks: &[("FP32", 163.4)],
    },
    Preset {
        name: "m2-max",
        description: "Apple M2 Max, 38-core GPU (LPDDR5 unified memory)",
        tflops: 13.6,
        compute_type: "FP32 GPU",
        gbps: 400.0,
        other_peaks: &[],
    },
    Preset {
        name: "m3-max",
        description: "Apple M3 Max, 40-core GPU (LPDDR5 unified memory)",
        tflops: 16.4,
        compute_type: "FP32 GPU",
        gbps: 400.0,
        other_peaks: &[],
    },
];

/// A roof: what the plot and the bound classification use.
#[derive(Clone, Debug, Serialize)]
pub struct Hardware {
    pub name: String,
    pub description: String,
    /// Peak compute, FLOP/s.
    pub peak_flops: f64,
    /// What the peak is of (e.g. "BF16 tensor core", "F32 FMA, AVX2, 2 threads").
    pub compute_type: String,
    /// Peak memory bandwidth, byte/s.
    pub bandwidth: f64,
    /// How the bandwidth figure was obtained.
    pub bandwidth_note: String,
    /// Secondary peaks (label, FLOP/s or OP/s).
    pub other_peaks: Vec<(String, f64)>,
}

impl Hardware {
    /// Ridge point: FLOP/byte above which a kernel is compute-bound.
    pub fn ridge(&self) -> f64 {
        self.peak_flops / self.bandwidth
    }

    /// Attainable FLOP/s at arithmetic intensity `i`: `min(peak, bandwidth x i)`.
    pub fn attainable(&self, intensity: f64) -> f64 {
        self.peak_flops.min(self.bandwidth * intensity)
    }

    /// `"compute"` at or above the ridge, `"bandwidth"` below.
    pub fn bound(&self, intensity: f64) -> &'static str {
        if intensity >= self.ridge() {
            "compute"
        } else {
            "bandwidth"
        }
    }

    pub fn from_preset(p: &Preset, unit: BandwidthUnit) -> Hardware {
        let unit_name = match unit {
            BandwidthUnit::GiB => "GiB/s (lecture convention, 2^30 byte)",
            BandwidthUnit::Gb => "GB/s (10^9 byte)",
        };
        Hardware {
            name: p.name.to_owned(),
            description: p.description.to_owned(),
            peak_flops: p.tflops * 1e12,
            compute_type: p.compute_type.to_owned(),
            bandwidth: p.gbps * unit.bytes(),
            bandwidth_note: format!("datasheet {} read as {unit_name}", p.gbps),
            other_peaks: p.other_peaks.iter().map(|(l, t)| ((*l).to_owned(), t * 1e12)).collect(),
        }
    }
}

/// The preset called `name` (case-insensitive; `_` and `-` alike); the error lists the known names.
pub fn preset(name: &str, unit: BandwidthUnit) -> Result<Hardware> {
    let want = name.to_ascii_lowercase().replace('_', "-");
    match PRESETS.iter().find(|p| p.name == want) {
        Some(p) => Ok(Hardware::from_preset(p, unit)),
        None => bail!(
            "unknown hardware '{name}': known presets are {}",
            preset_names().join(", ")
        ),
    }
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}
