//! Writing a trained student as a Llama GGUF file that `bushu run` and `bushu perplexity` load, with
//! bushu's own GGUF writer (the one `bushu quantize` uses) and the teacher's tokenizer metadata copied
//! (`tokenizer.*`), so student and teacher tokenize text the same way.

use crate::student::Student;
use anyhow::Result;
use bushu::formats::gguf::{Gguf, Value};
use bushu::formats::gguf_writer::GgufWriter;
use half::f16;
use kernels::DType;
use std::path::Path;

/// Tensor type of the exported matrices (norms stay F32, as llama.cpp's converter keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportType {
    F32,
    F16,
}

/// The GGUF image of `student`, with the tokenizer metadata of `teacher` and `name`.
pub fn student_gguf(student: &Student, teacher: &Gguf, name: &str, ty: ExportType) -> Result<GgufWriter> {
    let c = &student.config;
    let mut w = GgufWriter::new();
    let u = |x: usize| Value::U32(x as u32);
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.name", Value::String(name.into()));
    w.set(
        "general.file_type",
        Value::U32(if ty == ExportType::F16 { 1 } else { 0 }),
    );
    w.set("llama.context_length", u(c.ctx));
    w.set("llama.embedding_length", u(c.dim));
    w.set("llama.block_count", u(c.layers));
    w.set("llama.feed_forward_length", u(c.ffn));
    w.set("llama.attention.head_count", u(c.heads));
    w.set("llama.attention.head_count_kv", u(c.kv_heads));
    w.set("llama.rope.dimension_count", u(c.head_dim()));
    w.set("llama.rope.freq_base", Value::F32(c.rope_theta));
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(c.rms_eps));
    w.set("llama.vocab_size", u(c.vocab));
    for (k, v) in &teacher.metadata {
        if k.starts_with("tokenizer.") {
            w.set(k, v.clone());
        }
    }
    for (name, shape, values) in student.values()? {
        // candle's [out, in] row-major is GGUF's [in, out], innermost first.
        let gguf_shape: Vec<usize> = shape.iter().rev().copied().collect();
        if ty == ExportType::F16 && shape.len() == 2 {
            let data = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            w.add_tensor(&name, gguf_shape, DType::F16, data);
        } else {
            w.add_f32(&name, gguf_shape, &values);
        }
    }
    Ok(w)
}

/// Writes `student` to `path` ([`student_gguf`]).
pub fn write_student(student: &Student, teacher: &Gguf, name: &str, ty: ExportType, path: &Path) -> Result<()> {
    student_gguf(student, teacher, name, ty)?.write(path)
}
