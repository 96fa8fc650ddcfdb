//! llama.cpp's file types ("mixtures": `Q4_K_M`, `Q3_K_S`, `Q8_0`, ...) and the tensor type each gives
//! every tensor, as `llama-quantize` chooses it without an importance matrix: a port of
//! `tensor_allows_quantization`, `llama_tensor_get_type_impl` and `tensor_type_fallback` (llama.cpp's
//! `src/llama-quant.cpp`) for the file types whose block types bushu writes.
//!
//! - Only tensors named `*weight` with two or more dimensions are quantized (not `*_norm.weight`, MoE
//!   router inputs, positional embeddings and the other small tensors llama.cpp lists).
//! - `output.weight` (and `token_embd.weight` when the model has no `output.weight`: tied embeddings)
//!   goes to Q6_K, or Q8_0 when its rows are not a multiple of the file type's block.
//! - `attn_v` and `ffn_down` get more bits in some layers (`use_more_bits`: the first and last eighth, and
//!   every third layer between), `attn_output` in the 2- and 3-bit mixtures; the counters run over the
//!   tensors in llama.cpp's order (by layer number, then name).
//! - A type whose block does not divide the row length falls back: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0,
//!   Q5_K → Q5_1, Q6_K → Q8_0, and to F16 when a 32-block does not divide it either.
//!
//! The importance-matrix mixtures (IQ*, TQ*, Q2_K_S, ...) are refused by name.

use anyhow::{bail, Result};
use kernels::DType;

use crate::formats::gguf::Value;

/// A llama.cpp file type bushu writes (`llama_ftype`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ftype {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// `(name, file type)` as `llama-quantize` spells them, with its aliases `Q3_K`, `Q4_K`, `Q5_K` (the `_M`
/// mixtures).
const NAMES: &[(&str, Ftype)] = &[
    ("Q4_0", Ftype::Q4_0),
    ("Q4_1", Ftype::Q4_1),
    ("Q5_0", Ftype::Q5_0),
    ("Q5_1", Ftype::Q5_1),
    ("Q2_K", Ftype::Q2_K),
    ("Q3_K", Ftype::Q3_K_M),
    ("Q3_K_S", Ftype::Q3_K_S),
    ("Q3_K_M", Ftype::Q3_K_M),
    ("Q3_K_L", Ftype::Q3_K_L),
    ("Q4_K", Ftype::Q4_K_M),
    ("Q4_K_S", Ftype::Q4_K_S),
    ("Q4_K_M", Ftype::Q4_K_M),
    ("Q5_K", Ftype::Q5_K_M),
    ("Q5_K_S", Ftype::Q5_K_S),
    ("Q5_K_M", Ftype::Q5_K_M),
    ("Q6_K", Ftype::Q6_K),
    ("Q8_0", Ftype::Q8_0),
    ("F16", Ftype::F16),
    ("F32", Ftype::F32),
];

/// llama-quantize's other type names, which bushu does not write.
const NOT_WRITTEN: &[&str] = &[
    "Q1_0",
    "Q2_0",
    "MXFP4_MOE",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ1_S",
    "IQ1_M",
    "TQ1_0",
    "TQ2_0",
    "Q2_K_S",
    "IQ3_XXS",
    "IQ3_S",
    "IQ3_M",
    "IQ3_XS",
    "IQ4_NL",
    "IQ4_XS",
    "BF16",
    "COPY",
];

impl Ftype {
    /// The file type named `name` (any case), `Ok(None)` if llama.cpp has no such name, an error naming
    /// the type if llama.cpp has it and bushu does not write it.
    pub fn parse(name: &str) -> Result<Option<Ftype>> {
        if let Some(&(_, f)) = NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Ok(Some(f));
        }
        if let Some(n) = NOT_WRITTEN.iter().find(|n| n.eq_ignore_ascii_case(name)) {
            bail!(
                "bushu quantize cannot write llama.cpp's {n} (the importance-matrix, ternary and BF16 types are \
                 llama-quantize's only); it writes {}",
                Self::names()
            );
        }
        Ok(None)
    }

    /// The names `parse` accepts, for messages.
    pub fn names() -> String {
        NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// The canonical name (`Q4_K_M` for the alias `Q4_K`).
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .rev()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// `general.file_type` (llama.h's `LLAMA_FTYPE_*`).
    pub fn id(self) -> u32 {
        match self {
            Ftype::F32 => 0,
            Ftype::F16 => 1,
            Ftype::Q4_0 => 2,
            Ftype::Q4_1 => 3,
            Ftype::Q8_0 => 7,
            Ftype::Q5_0 => 8,
            Ftype::Q5_1 => 9,
            Ftype::Q2_K => 10,
            Ftype::Q3_K_S => 11,
            Ftype::Q3_K_M => 12,
            Ftype::Q3_K_L => 13,
            Ftype::Q4_K_S => 14,
            Ftype::Q4_K_M => 15,
            Ftype::Q5_K_S => 16,
            Ftype::Q5_K_M => 17,
            Ftype::Q6_K => 18,
        }
    }

    /// The type of the tensors no rule changes (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> DType {
        match self {
            Ftype::F32 => DType::F32,
            Ftype::F16 => DType::F16,
            Ftype::Q4_0 => DType::Q4_0,
            Ftype::Q4_1 => DType::Q4_1,
            Ftype::Q5_0 => DType::Q5_0,
            Ftype::Q5_1 => DType::Q5_1,
            Ftype::Q8_0 => DType::Q8_0,
            Ftype::Q2_K => DType::Q2K,
            Ftype::Q3_K_S | Ftype::Q3_K_M | Ftype::Q3_K_L => DType::Q3K,
            Ftype::Q4_K_S | Ftype::Q4_K_M => DType::Q4K,
            Ftype::Q5_K_S | Ftype::Q5_K_M => DType::Q5K,
            Ftype::Q6_K => DType::Q6K,
        }
    }

    /// The file type whose default type is `d` and that changes nothing else for bushu's int containers
    /// (`general.file_type` of int/GPTQ files).
    pub fn of_container(d: DType) -> u32 {
        match d {
            DType::F32 => 0,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 7,
            _ => 1,
        }
    }
}

/// What of the model the rules read: its metadata and its tensor names.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Query heads per KV head (`head_count / head_count_kv`, layer 0).
    pub n_gqa: usize,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: usize,
    /// llama.cpp's `LLM_TYPE_70B` (the Llama/Qwen2/OLMo 80-layer models with GQA): more bits for `attn_v`.
    pub is_70b: bool,
    /// No `output.weight`: the output layer is the token embedding, which gets its rule.
    pub tied: bool,
}

fn first_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Numbers(n) => n.get(0).and_then(|x| x.as_i64()).map(|x| x as u64),
        Value::Array(a) => a.first().and_then(|x| x.as_i64()).map(|x| x as u64),
        other => other.as_i64().map(|x| x as u64),
    }
}

impl ModelFacts {
    /// Reads the facts from a file's metadata and tensor names.
    pub fn of(metadata: &[(String, Value)], names: &[&str]) -> ModelFacts {
        let get = |k: &str| metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let arch = get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let key = |k: &str| get(&format!("{arch}.{k}"));
        let n_layer = first_u64(key("block_count")).unwrap_or(0) as usize;
        let n_head = first_u64(key("attention.head_count")).unwrap_or(0) as usize;
        let n_head_kv = first_u64(key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0);
        let n_expert = first_u64(key("expert_count")).unwrap_or(0) as usize;
        let is_70b = match arch.as_str() {
            "llama" => n_layer == 80 && n_head != n_head_kv,
            "qwen2" | "olmo" | "deci" => n_layer == 80,
            "jais2" => n_layer == 68,
            _ => false,
        };
        let tied = !names.contains(&"output.weight");
        ModelFacts {
            arch,
            n_layer,
            n_gqa,
            n_expert,
            is_70b,
            tied,
        }
    }
}

/// ggml's `ggml_n_dims`: the index of the last dimension above 1, plus one.
fn n_dims(shape: &[usize]) -> usize {
    shape.iter().rposition(|&d| d > 1).map(|i| i + 1).unwrap_or(1)
}

/// llama.cpp's `tensor_allows_quantization` (with the names of the architectures bushu reads and the common
/// exclusions; `quantize_output_tensor` on).
pub fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    if n_dims(shape) < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    const EXCLUDED: &[&str] = &[
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    name != "position_embd.weight" && name != "token_types.weight" && !EXCLUDED.iter().any(|e| name.contains(e))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

/// llama.cpp's `tensor_get_category` (substring matches, in its order).
fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    for (pat, c) in [
        ("attn_qkv.weight", Category::AttnQkv),
        ("attn_kv_b.weight", Category::AttnKvB),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ] {
        if name.contains(pat) {
            return c;
        }
    }
    Category::Other
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The layer number in `blk.N.` (llama.cpp's weight order sorts by it; -1 for other names).
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// llama.cpp's `tensor_type_fallback`: a type whose block divides the row length `cols`.
pub fn fallback(t: DType, cols: usize) -> DType {
    if cols.is_multiple_of(t.block_len()) {
        return t;
    }
    let f = match t {
        DType::Q2K | DType::Q3K => DType::Q4_0,
        DType::Q4K => DType::Q5_0,
        DType::Q5K => DType::Q5_1,
        DType::Q6K => DType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(f.block_len()) {
        f
    } else {
        DType::F16
    }
}

/// The type `llama-quantize FTYPE` (with `--pure` if `pure`) gives each tensor, `None` for a tensor it
/// copies unchanged. `tensors` are `(name, shape)` in any order (shape as GGUF's `ne`, row length first).
pub fn choose_types(ftype: Ftype, pure: bool, facts: &ModelFacts, tensors: &[(&str, &[usize])]) -> Vec<Option<DType>> {
    let default = ftype.default_type();
    let mut out = vec![None; tensors.len()];
    // llama.cpp visits the weights by layer number, then name: its counters advance in that order.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (tensors[a].0, tensors[b].0);
        layer_of(na).cmp(&layer_of(nb)).then(na.cmp(nb))
    });
    let n_attention_wv = tensors.iter().filter(|t| is_attn_v(category(t.0))).count();
    let mut i_attention_wv = 0usize;
    let mut i_ffn_down = 0usize;
    for i in order {
        let (name, shape) = tensors[i];
        if !allows_quantization(name, shape) {
            continue;
        }
        let cols = shape[0];
        let mut t = default;
        if default.is_quantized() {
            if !pure {
                t = mixture_rule(
                    ftype,
                    default,
                    facts,
                    name,
                    cols,
                    n_attention_wv,
                    &mut i_attention_wv,
                    &mut i_ffn_down,
                );
            }
            t = fallback(t, cols);
        }
        out[i] = Some(t);
    }
    out
}

/// `llama_tensor_get_type_impl` for the file types of [`Ftype`] (no importance matrix, no overrides).
#[allow(clippy::too_many_arguments)]
fn mixture_rule(
    ftype: Ftype,
    default: DType,
    facts: &ModelFacts,
    name: &str,
    cols: usize,
    n_attention_wv: usize,
    i_attention_wv: &mut usize,
    i_ffn_down: &mut usize,
) -> DType {
    use Ftype as F;
    let falcon = facts.arch == "falcon";
    let cat = category(name);
    let mut t = default;
    if cat == Category::Output || (facts.tied && cat == Category::TokenEmbd) {
        if falcon || !cols.is_multiple_of(default.block_len()) {
            t = DType::Q8_0;
        } else if t != DType::Q8_0 {
            t = DType::Q6K;
        }
    } else if cat == Category::TokenEmbd {
        // Only the importance-matrix and ternary mixtures change the token embedding.
    } else if is_attn_v(cat) {
        let i = *i_attention_wv;
        match ftype {
            F::Q2_K => t = if facts.n_gqa >= 4 { DType::Q4K } else { DType::Q3K },
            F::Q3_K_M => t = if i < 2 { DType::Q5K } else { DType::Q4K },
            F::Q3_K_L => t = DType::Q5K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(i, n_attention_wv) => t = DType::Q6K,
            F::Q4_K_S if i < 4 => t = DType::Q5K,
            _ => {}
        }
        if facts.is_70b && (t == DType::Q3K || t == DType::Q4K) {
            t = DType::Q5K;
        }
        if facts.n_expert == 8 {
            t = DType::Q8_0;
        }
        *i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if facts.n_expert == 8 {
            t = DType::Q8_0;
        }
    } else if cat == Category::FfnDown {
        // Dense models count ffn_down tensors; MoE models read the layer from the name.
        let i_layer = if facts.n_expert > 1 {
            layer_of(name).max(0) as usize
        } else {
            *i_ffn_down
        };
        let n = facts.n_layer;
        match ftype {
            F::Q2_K => t = DType::Q3K,
            F::Q3_K_M => {
                t = if i_layer < n / 16 {
                    DType::Q5K
                } else if !falcon || use_more_bits(i_layer, n) {
                    DType::Q4K
                } else {
                    DType::Q3K
                }
            }
            F::Q3_K_L => t = if falcon { DType::Q4K } else { DType::Q5K },
            F::Q4_K_M => {
                if falcon {
                    t = if i_layer < n / 16 {
                        DType::Q6K
                    } else if use_more_bits(i_layer, n) {
                        DType::Q5K
                    } else {
                        DType::Q4K
                    };
                } else if use_more_bits(i_layer, n) {
                    t = DType::Q6K;
                }
            }
            F::Q5_K_M if use_more_bits(i_layer, n) => t = DType::Q6K,
            F::Q4_K_S if !falcon && i_layer < n / 8 => t = DType::Q5K,
            _ => {}
        }
        *i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if !falcon {
            if facts.n_expert == 8 {
                if matches!(ftype, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::Q4_K_S | F::Q4_K_M) {
                    t = DType::Q5K;
                }
            } else {
                match ftype {
                    F::Q2_K => t = DType::Q3K,
                    F::Q3_K_M => t = DType::Q4K,
                    F::Q3_K_L => t = DType::Q5K,
                    _ => {}
                }
            }
        } else if ftype == F::Q3_K_L {
            t = DType::Q4K;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n_layer: usize, n_gqa: usize, tied: bool) -> ModelFacts {
        ModelFacts {
            arch: "llama".into(),
            n_layer,
            n_gqa,
            tied,
            ..Default::default()
        }
    }

    #[test]
    fn names_and_aliases_are_llama_quantizes() {
        assert_eq!(Ftype::parse("q4_k_m").unwrap(), Some(Ftype::Q4_K_M));
        assert_eq!(Ftype::parse("Q4_K").unwrap(), Some(Ftype::Q4_K_M));
        assert_eq!(Ftype::parse("q3_k").unwrap(), Some(Ftype::Q3_K_M));
        assert_eq!(Ftype::parse("Q5_K").unwrap(), Some(Ftype::Q5_K_M));
        assert_eq!(Ftype::Q4_K_M.name(), "Q4_K_M");
        assert_eq!(Ftype::parse("int4-sym-g32").unwrap(), None);
        let e = Ftype::parse("iq2_xs").unwrap_err().to_string();
        assert!(
            e.contains("cannot write llama.cpp's IQ2_XS") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn use_more_bits_is_llamas() {
        // 8 layers: the first eighth (0), the last eighth (7), and every third from n/8 (3, 6).
        let got: Vec<usize> = (0..8).filter(|&i| use_more_bits(i, 8)).collect();
        assert_eq!(got, [0, 3, 6, 7]);
    }

    #[test]
    fn fallbacks_follow_the_row_length() {
        assert_eq!(fallback(DType::Q4K, 512), DType::Q4K);
        assert_eq!(fallback(DType::Q4K, 288), DType::Q5_0);
        assert_eq!(fallback(DType::Q5K, 288), DType::Q5_1);
        assert_eq!(fallback(DType::Q6K, 288), DType::Q8_0);
        assert_eq!(fallback(DType::Q3K, 288), DType::Q4_0);
        assert_eq!(fallback(DType::Q2K, 288), DType::Q4_0);
        assert_eq!(fallback(DType::Q4K, 100), DType::F16);
        assert_eq!(fallback(DType::Q8_0, 100), DType::F16);
    }

    #[test]
    fn tied_embedding_gets_the_output_rule() {
        let shape = [256usize, 512];
        let ts = [("token_embd.weight", &shape[..]), ("blk.0.attn_q.weight", &shape[..])];
        let tied = choose_types(Ftype::Q4_0, false, &facts(1, 1, true), &ts);
        assert_eq!(tied, [Some(DType::Q6K), Some(DType::Q4_0)]);
        let untied = choose_types(Ftype::Q4_0, false, &facts(1, 1, false), &ts);
        assert_eq!(untied, [Some(DType::Q4_0), Some(DType::Q4_0)]);
        // --pure: one type everywhere.
        let pure = choose_types(Ftype::Q4_0, true, &facts(1, 1, true), &ts);
        assert_eq!(pure, [Some(DType::Q4_0), Some(DType::Q4_0)]);
    }

    #[test]
    fn norms_and_vectors_are_not_quantized() {
        assert!(!allows_quantization("blk.0.attn_norm.weight", &[256]));
        assert!(!allows_quantization("blk.0.attn_q_norm.weight", &[64, 1]));
        assert!(!allows_quantization("blk.0.ffn_gate_inp.weight", &[256, 8]));
        assert!(!allows_quantization("blk.0.attn_q.bias", &[256, 256]));
        assert!(allows_quantization("blk.0.ffn_down_exps.weight", &[256, 256, 8]));
    }
}
