//! GGUF → GGUF quantization (`bushu quantize`): which tensors get which type, and the file around them.
//! The input may also be a Hugging Face directory, read as llama.cpp's converter would ([`hf_gguf`]).
//!
//! Tensor choice follows `llama-quantize` ([`super::mixture`]): for llama.cpp's file types (`Q4_K_M`,
//! `Q3_K_S`, `Q8_0`, ...) the same type per tensor; for bushu's int and GPTQ types the tensors llama.cpp
//! would quantize, in the type's container (F16 where a row is not a multiple of 32). A tensor already of
//! the chosen type is copied unchanged, as llama-quantize does. Metadata is copied with
//! `general.file_type` and `general.quantization_version` set.

use super::affine::QuantError;
use super::calib::Hessians;
use super::gguf_types::{can_encode, dequantize_row, quantize_matrix};
use super::gptq::GptqConfig;
use super::int_types::{encode_rtn, IntType};
use super::mixture::{allows_quantization, choose_types, Ftype, ModelFacts};
use crate::formats::gguf::{Gguf, Value};
use crate::formats::gguf_writer::GgufWriter;
use anyhow::{bail, Context, Result};
use kernels::DType;
use std::path::Path;

pub mod hf_gguf;

/// What `--type` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A llama.cpp file type (a mixture of block types, as llama-quantize chooses them).
    Gguf(Ftype),
    /// A bushu integer type (round to nearest).
    Int(IntType),
    /// GPTQ into an integer type's container.
    Gptq(IntType),
}

impl Target {
    /// Parses llama-quantize's names (`Q4_K_M`, `q4_k` = `Q4_K_M`, `Q8_0`, `F16`, ... any case),
    /// `int4-asym-g128`, `gptq-int4-g128`, ...
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
        } else if let Some(f) = Ftype::parse(name)? {
            debug_assert!(can_encode(f.default_type()));
            return Ok(Target::Gguf(f));
        }
        bail!(
            "unknown quantization type '{name}' (llama.cpp: {}; bushu: int8-sym-channel, int4-asym-g128, ... \
             (int8/int4/int3, sym/asym, tensor/channel/g32/g64/g128); gptq-int4-g128, gptq-int4-g32, gptq-int3-g128)",
            Ftype::names()
        )
    }

    /// llama.cpp's `general.file_type`.
    fn file_type(&self) -> u32 {
        match self {
            Target::Gguf(f) => f.id(),
            Target::Int(t) | Target::Gptq(t) => Ftype::of_container(t.container()),
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
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let chosen = match &opts.target {
        Target::Gguf(f) => {
            let facts = ModelFacts::of(&w.metadata, &names);
            let shapes: Vec<(&str, &[usize])> = tensors.iter().map(|t| (t.name.as_str(), &t.shape[..])).collect();
            choose_types(*f, opts.pure, &facts, &shapes)
        }
        _ => tensors
            .iter()
            .map(|t| allows_quantization(&t.name, &t.shape).then_some(DType::F16))
            .collect(),
    };
    for (i, t) in tensors.iter().enumerate() {
        progress(i, n, &t.name);
        // Not quantized, or already of the chosen type: copied as it is (llama-quantize does the same).
        let Some(chosen) = chosen[i].filter(|&d| !(matches!(opts.target, Target::Gguf(_)) && d == t.dtype)) else {
            w.add_tensor(&t.name, t.shape.clone(), t.dtype, t.bytes().to_vec());
            continue;
        };
        let cols = t.shape[0];
        let rows = t.numel() / cols;
        let x = t.to_f32();
        let (dtype, data, deq) = match &opts.target {
            Target::Gguf(_) => {
                let data = quantize_matrix(chosen, &x, cols)?;
                let deq = dequantize(chosen, &data, rows, cols);
                (chosen, data, deq)
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

/// The values a quantized matrix stands for (`None` for a type nothing here decodes).
fn dequantize(dt: DType, data: &[u8], rows: usize, cols: usize) -> Option<Vec<f32>> {
    let mut out = vec![0.0f32; rows * cols];
    let rb = data.len() / rows.max(1);
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        dequantize_row(dt, &data[r * rb..(r + 1) * rb], row)?;
    }
    Some(out)
}
