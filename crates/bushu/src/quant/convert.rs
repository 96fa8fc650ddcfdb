//! GGUF → GGUF quantization (`bushu quantize`): which tensors get which type, and the file around them.
//! The input may also be a Hugging Face directory, read as llama.cpp's converter would ([`hf_gguf`]).
//!
//! Tensor choice follows `llama-quantize`: only tensors named `*.weight` with two or more dimensions are
//! quantized (norms and other vectors keep their type); `output.weight` goes to Q6_K for the sub-8-bit
//! llama.cpp types unless `--pure`; a type whose block does not divide the row length falls back as in
//! llama.cpp (Q4_K → Q5_0, Q6_K → Q8_0, 32-blocks → F16). Metadata is copied with `general.file_type`
//! and `general.quantization_version` set.

use super::affine::QuantError;
use super::calib::Hessians;
use super::gguf_types::{can_encode, quantize_matrix};
use super::gptq::GptqConfig;
use super::int_types::{encode_rtn, IntType};
use crate::formats::gguf::{Gguf, Value};
use crate::formats::gguf_writer::GgufWriter;
use crate::formats::Tensor;
use anyhow::{bail, Context, Result};
use kernels::DType;
use std::path::Path;

pub mod hf_gguf;

/// What `--type` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A llama.cpp block type.
    Gguf(DType),
    /// A bushu integer type (round to nearest).
    Int(IntType),
    /// GPTQ into an integer type's container.
    Gptq(IntType),
}

impl Target {
    /// Parses `q8_0`, `q4_0`, `q4_1`, `q4_k`, `q6_k`, `f16`, `int4-asym-g128`, `gptq-int4-g128`, ...
    pub fn parse(name: &str) -> Result<Target> {
        let lower = name.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("gptq-") {
            // GPTQ types are symmetric unless the name says asym: gptq-int4-g128, gptq-int4-asym-g128.
            let full = if rest.contains("sym") {
                rest.to_owned()
            } else {
                rest.replacen('-', "-sym-", 1)
            };
            if let Some(t) = IntType::parse(&full).filter(|t| t.spec.bits <= 4) {
                return Ok(Target::Gptq(t));
            }
        } else if let Some(t) = IntType::parse(&lower) {
            return Ok(Target::Int(t));
        } else if let Some(d) = DType::from_name(&lower).filter(|&d| can_encode(d)) {
            return Ok(Target::Gguf(d));
        }
        bail!(
            "unknown quantization type '{name}' (llama.cpp: q8_0, q4_0, q4_1, q5_0, q4_k, q6_k, f16; bushu: \
             int8-sym-channel, int4-asym-g128, ... (int8/int4/int3, sym/asym, tensor/channel/g32/g64/g128); \
             gptq-int4-g128, gptq-int4-g32, gptq-int3-g128)"
        )
    }

    /// llama.cpp's `general.file_type` for the mix.
    fn file_type(&self) -> u32 {
        let d = match self {
            Target::Gguf(d) => *d,
            Target::Int(t) | Target::Gptq(t) => t.container(),
        };
        match d {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 7,
            DType::Q5_0 => 8,
            DType::Q4K => 15,
            DType::Q6K => 18,
            _ => 1,
        }
    }
}

/// Options of one conversion.
pub struct QuantizeOptions {
    pub target: Target,
    /// Same type for every quantized tensor (llama-quantize `--pure`).
    pub pure: bool,
    /// Calibration Hessians (GPTQ).
    pub hessians: Option<Hessians>,
    pub gptq: GptqConfig,
}

/// One tensor's outcome.
#[derive(Clone, Debug)]
pub struct TensorReport {
    pub name: String,
    pub dtype: DType,
    pub error: QuantError,
    pub bytes: usize,
}

fn fallback(d: DType, cols: usize) -> DType {
    if cols.is_multiple_of(d.block_len()) {
        return d;
    }
    match d {
        DType::Q4K => DType::Q5_0,
        DType::Q6K => DType::Q8_0,
        _ => DType::F16,
    }
}

fn quantizable(t: &Tensor) -> bool {
    t.name.ends_with(".weight") && t.shape.iter().filter(|&&d| d > 1).count() >= 2 && !t.name.contains("norm")
}

/// The llama.cpp type of a tensor under a llama.cpp target.
pub fn gguf_type_for(name: &str, cols: usize, d: DType, pure: bool) -> DType {
    let d = if !pure && name == "output.weight" && d != DType::Q8_0 && d.is_quantized() {
        if !cols.is_multiple_of(d.block_len()) {
            DType::Q8_0
        } else {
            DType::Q6K
        }
    } else {
        d
    };
    fallback(d, cols)
}

/// Quantizes the GGUF file or Hugging Face directory at `input` into the GGUF `output`;
/// `progress(i, n, name)` is called before each tensor.
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    opts: &QuantizeOptions,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<TensorReport>> {
    let (metadata, tensors) = if input.is_dir() {
        let s = hf_gguf::read(input)?;
        (s.metadata, s.tensors)
    } else {
        let g = Gguf::open(input)?;
        (g.metadata.into_iter().collect(), g.tensors)
    };
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.set(&k, v);
    }
    w.set("general.file_type", Value::U32(opts.target.file_type()));
    w.set("general.quantization_version", Value::U32(2));
    let mut reports = Vec::new();
    let n = tensors.len();
    for (i, t) in tensors.iter().enumerate() {
        progress(i, n, &t.name);
        if !quantizable(t) {
            w.add_tensor(&t.name, t.shape.clone(), t.dtype, t.bytes().to_vec());
            continue;
        }
        let cols = t.shape[0];
        let rows = t.numel() / cols;
        let x = t.to_f32();
        let (dtype, data, deq) = match &opts.target {
            Target::Gguf(d) => {
                let dt = gguf_type_for(&t.name, cols, *d, opts.pure);
                let data = quantize_matrix(dt, &x, cols)?;
                let deq = if kernels::quants::supported(dt) {
                    Some(dequantize(dt, &data, rows, cols))
                } else {
                    None
                };
                (dt, data, deq)
            }
            Target::Int(ty) | Target::Gptq(ty) if cols % 32 != 0 => {
                let _ = ty;
                (DType::F16, quantize_matrix(DType::F16, &x, cols)?, None)
            }
            Target::Int(ty) => {
                let (data, deq, _) = encode_rtn(ty, &x, rows, cols)?;
                (ty.container(), data, Some(deq))
            }
            Target::Gptq(ty) => {
                let h = opts.hessians.as_ref().and_then(|h| h.get(&t.name));
                let (data, deq) = match h {
                    Some(h) => super::gptq::gptq_quantize(ty, &x, rows, cols, &h, &opts.gptq)
                        .with_context(|| format!("GPTQ of {}", t.name))?,
                    // No calibration input (the embedding table): round to nearest.
                    None => {
                        let (d, q, _) = encode_rtn(ty, &x, rows, cols)?;
                        (d, q)
                    }
                };
                (ty.container(), data, Some(deq))
            }
        };
        let error = deq.map(|d| QuantError::of(&x, &d)).unwrap_or_default();
        reports.push(TensorReport {
            name: t.name.clone(),
            dtype,
            error,
            bytes: data.len(),
        });
        w.add_tensor(&t.name, t.shape.clone(), dtype, data);
    }
    w.write(output)?;
    Ok(reports)
}

fn dequantize(dt: DType, data: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let m = kernels::QMatrix::new(dt, rows, cols, data);
    let mut out = vec![0.0f32; rows * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        m.dequantize_row(r, row);
    }
    out
}
