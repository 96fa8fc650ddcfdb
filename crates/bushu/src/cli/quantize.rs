//! `bushu quantize IN OUT --type TYPE`: writes a quantized GGUF (see [`crate::quant::convert`]), with a
//! progress line per tensor and a table of reconstruction errors.

use crate::model::load;
use crate::perplexity::tokenize_text;
use crate::quant::calib;
use crate::quant::convert::{quantize_gguf, QuantizeOptions, Target};
use crate::quant::gptq::GptqConfig;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Input model: a GGUF file (F32/F16/BF16 or already quantized tensors), or a Hugging Face directory
    /// (config.json, safetensors, a SentencePiece tokenizer.model or a byte-level BPE tokenizer.json),
    /// converted as convert_hf_to_gguf.py does.
    pub input: PathBuf,
    /// Output GGUF file.
    pub output: PathBuf,
    /// Target type: llama-quantize's file types (Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q3_K_S, Q3_K_M, Q3_K_L,
    /// Q2_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, F32; Q4_K = Q4_K_M, any case), with its type for
    /// each tensor; bushu's int8-sym-channel, int4-asym-g128, ...; gptq-int4-g128, gptq-int4-g32, gptq-int3-g128.
    #[arg(long = "type", short = 'T')]
    pub ty: String,
    /// Calibration text for GPTQ.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration sequences of --calib-ctx tokens.
    #[arg(long, default_value_t = 32)]
    pub calib_seqs: usize,
    #[arg(long, default_value_t = 256)]
    pub calib_ctx: usize,
    /// GPTQ dampening (fraction of the mean Hessian diagonal).
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// GPTQ: quantize columns in order of decreasing activation energy (static groups).
    #[arg(long)]
    pub act_order: bool,
    /// Use the file type's base type for every tensor (no Q6_K output layer, no more bits for attn_v and
    /// ffn_down), like llama-quantize --pure.
    #[arg(long)]
    pub pure: bool,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let target = Target::parse(&a.ty)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global();
    let hessians = match (&target, &a.calib) {
        (Target::Gptq(_), None) => bail!("GPTQ needs a calibration text: --calib FILE"),
        (Target::Gptq(_), Some(path)) => {
            let file = load(&a.input)?;
            // Calibration statistics of the exact model (f32 activations).
            let model = crate::model::ModelOptions::exact().build(&file)?;
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let toks = tokenize_text(&file.tokenizer, &text)?;
            let seqs = calibration_sequences(&toks, a.calib_ctx, a.calib_seqs, file.tokenizer.bos_id());
            if seqs.is_empty() {
                bail!(
                    "{} is too short for one calibration sequence of {} tokens",
                    path.display(),
                    a.calib_ctx
                );
            }
            let h = calib::collect(&model, &seqs, |i, n| {
                if !a.quiet {
                    eprint!("\rcalibrating: sequence {}/{n}", i + 1);
                }
            })?;
            if !a.quiet {
                eprintln!(" ({} tokens)", h.tokens);
            }
            Some(h)
        }
        _ => None,
    };
    let opts = QuantizeOptions {
        target,
        pure: a.pure,
        hessians,
        gptq: GptqConfig {
            damp: a.damp,
            act_order: a.act_order,
        },
    };
    let quiet = a.quiet;
    // The progress line redraws itself: on a terminal only (a log would get every frame).
    let progress = !quiet && std::io::stderr().is_terminal();
    let reports = quantize_gguf(&a.input, &a.output, &opts, |i, n, name| {
        if progress {
            let done = (i + 1) * 30 / n;
            eprint!(
                "\r[{}{}] {}/{n} {name:<32}",
                "#".repeat(done),
                " ".repeat(30 - done),
                i + 1
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    if progress {
        eprintln!();
    }
    if !quiet {
        println!(
            "{:<28} {:>6} {:>12} {:>10} {:>8}",
            "tensor", "type", "||W-W~||²", "rel", "SQNR dB"
        );
        for r in &reports {
            println!(
                "{:<28} {:>6} {:>12.4e} {:>10.3e} {:>8.2}",
                r.name,
                r.dtype.name(),
                r.error.sq_error,
                r.error.rel_error,
                r.error.sqnr_db
            );
        }
        let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({:.2} MB)", a.output.display(), size as f64 / 1e6);
    }
    Ok(())
}

/// Evenly spaced windows of `ctx` tokens (BOS first) over the calibration text.
pub fn calibration_sequences(toks: &[u32], ctx: usize, n: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    let avail = toks.len() / ctx.max(1);
    let n = n.min(avail);
    (0..n)
        .map(|i| {
            let start = i * avail / n * ctx;
            let mut s = toks[start..start + ctx].to_vec();
            if let Some(b) = bos {
                s[0] = b;
            }
            s
        })
        .collect()
}
