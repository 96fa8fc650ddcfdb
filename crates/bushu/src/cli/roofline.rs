//! `bushu roofline`: the lecture's §3 roofline analysis, for a preset or this machine, from shape
//! parameters or a model file, with measured points from bushu's own engine.

use crate::model::load;
use crate::roofline::analysis::{Dtypes, WeightBytes};
use crate::roofline::hardware::PRESETS;
use crate::roofline::measure::Measured;
use crate::roofline::{
    analyze, measure, plot, preset, run, summarize, BandwidthUnit, Hardware, Options, Report, Shape, SummaryRow,
};
use anyhow::{bail, Context, Result};
use clap::Args;
use kernels::DType;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RooflineArgs {
    /// Hardware preset (a100-80g, a100-40g, h100-sxm, h100-pcie, rtx4090, mi300x, m2-max, m3-max).
    /// Default: a100-80g, or this machine with --measure.
    #[arg(long, value_name = "NAME", conflicts_with = "measure")]
    pub hardware: Option<String>,
    /// List the hardware presets and exit.
    #[arg(long)]
    pub list_hardware: bool,
    /// Measure this machine: streaming-read bandwidth, F32 FMA and int8 dot peaks.
    #[arg(long)]
    pub measure: bool,
    /// Buffer size of the bandwidth measurement, MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub measure_mib: usize,
    /// Passes of each measurement (the best is kept).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub passes: usize,
    /// Read datasheet "GB/s" as 10^9 byte/s (default: as GiB/s, the lecture's convention).
    #[arg(long)]
    pub decimal_gb: bool,

    /// Model file (GGUF, Hugging Face directory, llama2.c checkpoint): shapes and weight dtypes.
    #[arg(short, long, conflicts_with_all = ["hidden", "heads", "head_dim", "layers", "ffn", "kv_heads", "vocab"])]
    pub model: Option<PathBuf>,
    /// Threads for --measure and --run (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Batch size B (default 1 with --model, else 8).
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Sequence length T: the prompt, and the context of a decode step (default 128 with --model, else 1024).
    #[arg(long, value_name = "T")]
    pub seq: Option<usize>,
    /// Hidden size H.
    #[arg(long, value_name = "H")]
    pub hidden: Option<usize>,
    /// Attention heads N.
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// Head dimension D (default H / N).
    #[arg(long, value_name = "D")]
    pub head_dim: Option<usize>,
    /// Layers L (default 1: one block, as in the lecture).
    #[arg(long, value_name = "L")]
    pub layers: Option<usize>,
    /// Feed-forward size F (default H, as in the lecture's X · W with W: H x H).
    #[arg(long, value_name = "F")]
    pub ffn: Option<usize>,
    /// Key/value heads (GQA; default N).
    #[arg(long, value_name = "K")]
    pub kv_heads: Option<usize>,
    /// Vocabulary size: adds the final norm and classifier (default 0: none).
    #[arg(long, value_name = "V")]
    pub vocab: Option<usize>,
    /// Weight dtype (f32, f16, bf16, q8_0, q4_0, ...); default bf16, or the model file's.
    #[arg(long, value_name = "DTYPE")]
    pub weight_dtype: Option<String>,
    /// Activation dtype; default bf16, or f32 with --model (bushu's engine).
    #[arg(long, value_name = "DTYPE")]
    pub act_dtype: Option<String>,
    /// K/V cache dtype; default bf16, or f32 with --model (bushu's engine).
    #[arg(long, value_name = "DTYPE")]
    pub kv_dtype: Option<String>,
    /// Count output writes too (linear outputs, attention Q and O, elementwise outputs, K/V stores).
    #[arg(long)]
    pub full_traffic: bool,
    /// Count only the query-key pairs a causal mask keeps.
    #[arg(long)]
    pub causal: bool,
    /// FlashAttention query block size Br: K/V re-read once per block (0: once in all).
    #[arg(long, default_value_t = 0, value_name = "BR")]
    pub flash_block: usize,

    /// Run bushu's engine on the model (prefill of T tokens, then --steps decode steps) and place the
    /// measured points. Measures this machine unless --hardware is given.
    #[arg(long)]
    pub run: bool,
    /// Decode steps of --run.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub steps: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the roofline chart to this .svg file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

fn dtype(name: &Option<String>, default: DType, what: &str) -> Result<DType> {
    match name {
        None => Ok(default),
        Some(n) => DType::from_name(n).with_context(|| {
            format!("unknown {what} dtype '{n}': use f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k, ...")
        }),
    }
}

fn positive(v: Option<usize>, default: usize, flag: &str) -> Result<usize> {
    let v = v.unwrap_or(default);
    if v == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(v)
}

/// The shape from the shape flags (no model file).
fn shape_from_flags(a: &RooflineArgs) -> Result<Shape> {
    let (Some(hidden), Some(heads)) = (a.hidden, a.heads) else {
        bail!("give a model (--model PATH) or its shape (at least --hidden H --heads N)");
    };
    if hidden == 0 || heads == 0 {
        bail!("--hidden and --heads must be at least 1");
    }
    let head_dim = match a.head_dim {
        Some(d) => positive(Some(d), 1, "--head-dim")?,
        None if hidden % heads == 0 => hidden / heads,
        None => bail!("--hidden {hidden} is not a multiple of --heads {heads}: give --head-dim"),
    };
    let kv_heads = positive(a.kv_heads, heads, "--kv-heads")?;
    if heads % kv_heads != 0 {
        bail!("--heads {heads} must be a multiple of --kv-heads {kv_heads}");
    }
    Ok(Shape {
        batch: positive(a.batch, 8, "--batch")?,
        seq: positive(a.seq, 1024, "--seq")?,
        hidden,
        heads,
        kv_heads,
        head_dim,
        layers: positive(a.layers, 1, "--layers")?,
        ffn: positive(a.ffn, hidden, "--ffn")?,
        vocab: a.vocab.unwrap_or(0),
    })
}

fn si(v: f64, unit: &str) -> String {
    let (d, p) = match v.abs() {
        x if x >= 1e15 => (1e15, "P"),
        x if x >= 1e12 => (1e12, "T"),
        x if x >= 1e9 => (1e9, "G"),
        x if x >= 1e6 => (1e6, "M"),
        x if x >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    format!("{:.3} {p}{unit}", v / d)
}

fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.3} us", s * 1e6)
    }
}

/// The hardware lines of the table: roofs, ridge, what was measured.
fn print_hardware(hw: &Hardware, ridge: f64, measured: Option<&Measured>) {
    println!("hardware   {} — {}", hw.name, hw.description);
    println!("  compute  {} ({})", si(hw.peak_flops, "FLOP/s"), hw.compute_type);
    for (l, p) in &hw.other_peaks {
        println!("           {} ({l})", si(*p, "OP/s"));
    }
    println!(
        "  memory   {} = {:.1} GB/s ({})",
        si(hw.bandwidth, "B/s"),
        hw.bandwidth / 1e9,
        hw.bandwidth_note
    );
    println!("  ridge    {ridge:.2} FLOP/byte");
    if let Some(m) = measured {
        println!(
            "  measured bandwidth {:.1} GB/s best, {:.1} GB/s median",
            m.bandwidth.best / 1e9,
            m.bandwidth.median / 1e9
        );
        println!(
            "           f32 {:.1} GFLOP/s best ({})",
            m.f32_flops.best / 1e9,
            m.f32_flops.method
        );
        match &m.int8_ops {
            Some(i) => println!("           int8 {:.1} GOP/s best ({})", i.best / 1e9, i.method),
            None => println!("           int8: no int8 dot-product instruction on this CPU"),
        }
    }
}

fn print_table(r: &Report) {
    let hw = &r.hardware;
    print_hardware(hw, r.ridge, r.measured.as_ref());
    let a = &r.analysis;
    let s = &a.shape;
    if let Some(m) = &r.model {
        println!("model      {m}");
    }
    println!(
        "shape      B={} T={} H={} N={} Nkv={} D={} L={} F={} V={}",
        s.batch, s.seq, s.hidden, s.heads, s.kv_heads, s.head_dim, s.layers, s.ffn, s.vocab
    );
    println!(
        "dtypes     weights {}, activations {}, KV cache {}",
        a.dtypes.weights.label, a.dtypes.act_name, a.dtypes.kv_name
    );
    println!(
        "counting   {}{}{} (see docs/ROOFLINE.md)",
        if a.options.count_outputs {
            "full traffic (outputs counted)"
        } else {
            "lecture convention (inputs read)"
        },
        if a.options.causal { ", causal" } else { "" },
        if a.options.flash_block > 0 {
            format!(", flash block {}", a.options.flash_block)
        } else {
            String::new()
        }
    );
    println!();
    println!(
        "{:<8} {:<18} {:<10} {:>16} {:>14} {:>12} {:>10} {:>18} {:>12}",
        "phase", "op", "family", "FLOPs", "bytes", "FLOP/byte", "bound", "attainable", "min time"
    );
    let line = |phase: &str, op: &str, fam: &str, row: &SummaryRow| {
        println!(
            "{:<8} {:<18} {:<10} {:>16} {:>14} {:>12.2} {:>10} {:>18} {:>12}",
            phase,
            op,
            fam,
            si(row.flops, "FLOP"),
            si(row.bytes, "B"),
            row.intensity,
            row.bound,
            si(row.attainable, "FLOP/s"),
            secs(row.min_seconds)
        );
    };
    for p in [&a.prefill, &a.decode] {
        for op in &p.ops {
            let row = SummaryRow::new(hw, &p.phase, op.family.name(), op.flops, op.bytes);
            line(&p.phase, &op.name, op.family.name(), &row);
        }
        for row in r.summary.iter().filter(|x| x.phase == p.phase) {
            line(&p.phase, &format!("= {}", row.family), "", row);
        }
        println!();
    }
    if !r.runs.is_empty() {
        println!(
            "{:<8} {:>7} {:>10} {:>16} {:>12} {:>16} {:>14} {:>10} {:>10} {:>10}",
            "measured", "tokens", "time", "FLOP/s", "FLOP/byte", "roof", "bytes/s", "% roof", "% bw", "tok/s"
        );
        for p in &r.runs {
            println!(
                "{:<8} {:>7} {:>10} {:>16} {:>12.2} {:>16} {:>14} {:>9.1}% {:>9.1}% {:>10.1}",
                p.phase,
                p.tokens,
                secs(p.seconds),
                si(p.flops_per_s, "FLOP/s"),
                p.intensity,
                si(p.roof, "FLOP/s"),
                si(p.bytes_per_s, "B/s"),
                100.0 * p.fraction_of_roof,
                100.0 * p.fraction_of_bandwidth,
                p.tokens_per_s
            );
        }
    }
}

/// Builds the report (everything but printing); `--list-hardware` is handled by the caller.
pub fn report(a: &RooflineArgs) -> Result<Report> {
    let unit = if a.decimal_gb {
        BandwidthUnit::Gb
    } else {
        BandwidthUnit::GiB
    };
    if a.run && a.model.is_none() {
        bail!("--run needs a model to run: pass --model PATH");
    }
    // Measuring comes last, after every cheap argument check has passed.
    let file = match &a.model {
        Some(p) => Some(load(p)?),
        None => None,
    };
    let (shape, dtypes, model_name) = match &file {
        Some(f) => {
            let seq = positive(a.seq, 128.min(f.config.max_ctx.max(1)), "--seq")?;
            let shape = Shape::from_config(&f.config, positive(a.batch, 1, "--batch")?, seq);
            let mut weights = WeightBytes::from_tensors(&f.tensors);
            if a.weight_dtype.is_some() {
                weights = WeightBytes::uniform(dtype(&a.weight_dtype, DType::F16, "weight")?);
            }
            let act = dtype(&a.act_dtype, DType::F32, "activation")?;
            let kv = dtype(&a.kv_dtype, DType::F32, "KV cache")?;
            let mut d = Dtypes::uniform(DType::F32, act, kv);
            d.weights = weights;
            let name = format!(
                "{} ({}, {} format)",
                a.model.as_ref().unwrap().display(),
                f.name.as_deref().unwrap_or(&f.config.arch),
                f.format
            );
            (shape, d, Some(name))
        }
        None => {
            let shape = shape_from_flags(a)?;
            let d = Dtypes::uniform(
                dtype(&a.weight_dtype, DType::BF16, "weight")?,
                dtype(&a.act_dtype, DType::BF16, "activation")?,
                dtype(&a.kv_dtype, DType::BF16, "KV cache")?,
            );
            (shape, d, None)
        }
    };
    let opts = Options {
        count_outputs: a.full_traffic,
        flash_block: a.flash_block,
        causal: a.causal,
    };
    let hw_preset = match &a.hardware {
        Some(n) => Some(preset(n, unit).map_err(measure_hint)?),
        None => None,
    };
    let threads = match a.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => measure::default_threads(),
    };
    let measure_now = a.measure || (a.run && hw_preset.is_none());
    let (hardware, measured) = if measure_now {
        if a.measure_mib == 0 {
            bail!("--measure-mib must be at least 1");
        }
        let m = measure::measure(threads, a.measure_mib << 20, a.passes);
        (Hardware::from_measured(&m), Some(m))
    } else {
        (
            hw_preset.unwrap_or_else(|| preset("a100-80g", unit).expect("a100-80g is a preset")),
            None,
        )
    };
    let analysis = analyze(&shape, &dtypes, opts);
    let runs = match (&file, a.run) {
        (Some(f), true) => {
            super::init_threads(Some(threads))?;
            run::run_engine(f, shape.seq, a.steps, &dtypes, opts, &hardware)
                .map_err(|e| super::sampling::flag_error(e, &[("prompt", "--seq")]))?
        }
        _ => Vec::new(),
    };
    let summary = summarize(&hardware, &analysis);
    Ok(Report {
        ridge: hardware.ridge(),
        hardware,
        measured,
        model: model_name,
        analysis,
        summary,
        runs,
    })
}

/// `--measure` with neither a model nor any shape flag: measure this machine and stop there.
fn measure_only(a: &RooflineArgs) -> bool {
    a.measure
        && !a.run
        && a.model.is_none()
        && [
            a.batch, a.seq, a.hidden, a.heads, a.head_dim, a.layers, a.ffn, a.kv_heads, a.vocab,
        ]
        .iter()
        .all(Option::is_none)
}

/// An unknown preset's error, with the way out the command line offers.
fn measure_hint(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#} (or pass --measure for this machine)")
}

pub fn roofline(a: RooflineArgs) -> Result<()> {
    if a.list_hardware {
        for p in PRESETS {
            println!(
                "{:<10} {:>8.1} TFLOP/s {:<34} {:>6.0} GB/s  {}",
                p.name, p.tflops, p.compute_type, p.gbps, p.description
            );
        }
        return Ok(());
    }
    if let Some(n) = &a.hardware {
        // Fail fast on a bad name, before loading or measuring anything.
        preset(n, BandwidthUnit::GiB).map_err(measure_hint)?;
    }
    if measure_only(&a) {
        // The machine's roofs alone: no model or shape to place on them.
        if a.plot.is_some() {
            bail!(
                "--plot draws a model's operations on the roofs: give --model PATH or a shape (--hidden H --heads N)"
            );
        }
        if a.measure_mib == 0 {
            bail!("--measure-mib must be at least 1");
        }
        let threads = match a.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => n,
            None => measure::default_threads(),
        };
        let m = measure::measure(threads, a.measure_mib << 20, a.passes);
        let hw = Hardware::from_measured(&m);
        if a.json {
            let v = serde_json::json!({ "hardware": hw, "ridge": hw.ridge(), "measured": m });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_hardware(&hw, hw.ridge(), Some(&m));
        }
        return Ok(());
    }
    let r = report(&a)?;
    if let Some(path) = &a.plot {
        plot::plot(path, &r.hardware, &r.analysis, &r.runs).context("--plot")?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_table(&r);
        if let Some(path) = &a.plot {
            println!("\nplot written to {}", path.display());
        }
    }
    Ok(())
}
