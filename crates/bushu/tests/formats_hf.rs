//! Hugging Face directories: config.json parsing (both RoPE styles), safetensors parsing (single and
//! sharded, F32/F16/BF16, truncated and unsupported files), GGUF tensor names and shapes, and an
//! independent check against the GGUF conversion of the same model.

mod common;
use bushu::formats::gguf::Gguf;
use bushu::model::config::RopeScaling;
use bushu::model::hf;
use bushu::tokenizer::Tokenizer;
use common::{shared, TempDir};
use half::{bf16, f16};
use kernels::ops::RopeStyle;
use kernels::DType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn expert_dir() -> PathBuf {
    shared("models/shakespeare/shakespeare-expert-hf")
}

/// One tensor to write: HF name, safetensors dtype, shape (outermost first), values (exact in F16/BF16).
#[derive(Clone)]
struct Raw {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn encode(dtype: &str, values: &[f32]) -> Vec<u8> {
    let bytes = |v: &f32| -> Vec<u8> {
        match dtype {
            "F32" => v.to_le_bytes().to_vec(),
            "F16" => f16::from_f32(*v).to_le_bytes().to_vec(),
            "BF16" => bf16::from_f32(*v).to_le_bytes().to_vec(),
            "I32" => (*v as i32).to_le_bytes().to_vec(),
            _ => panic!("dtype {dtype}"),
        }
    };
    values.iter().flat_map(bytes).collect()
}

fn write_safetensors(path: &Path, tensors: &[Raw]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let begin = data.len();
        data.extend_from_slice(&encode(t.dtype, &t.values));
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// Deterministic values exactly representable in F16 and BF16.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + seed * 13) % 33) as f32 / 16.0 - 1.0).collect()
}

const DIM: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 4;
const FFN: usize = 12;
const VOCAB: usize = 10;
const LAYERS: usize = 2;

fn tiny_config(model_type: &str, arch: &str) -> Value {
    json!({
        "architectures": [arch], "model_type": model_type, "hidden_size": DIM,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN, "vocab_size": VOCAB, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "eos_token_id": 2
    })
}

/// The tensors of a tiny Llama-layout model; every tensor after the first `f32_count` has `dtype`.
fn tiny_tensors(dtype: &'static str, lm_head: bool, biases: bool) -> Vec<Raw> {
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut specs: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, DIM]),
        ("model.norm.weight".into(), vec![DIM]),
    ];
    if lm_head {
        specs.push(("lm_head.weight".into(), vec![VOCAB, DIM]));
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        specs.push((format!("{p}.input_layernorm.weight"), vec![DIM]));
        specs.push((format!("{p}.self_attn.q_proj.weight"), vec![q, DIM]));
        specs.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, DIM]));
        specs.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, DIM]));
        specs.push((format!("{p}.self_attn.o_proj.weight"), vec![DIM, q]));
        if biases {
            specs.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            specs.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            specs.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![DIM]));
        specs.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, DIM]));
        specs.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, DIM]));
        specs.push((format!("{p}.mlp.down_proj.weight"), vec![DIM, FFN]));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let values = values(shape.iter().product(), i);
            Raw {
                name,
                dtype,
                shape,
                values,
            }
        })
        .collect()
}

/// Writes a tiny model directory; returns it.
fn tiny_dir(tag: &str, config: &Value, tensors: &[Raw]) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::write(dir.0.join("config.json"), config.to_string()).unwrap();
    write_safetensors(&dir.0.join("model.safetensors"), tensors);
    dir
}

/// Checks that `model` holds exactly `raw` under GGUF names, reversed shapes and equal values.
fn assert_same(model: &hf::HfModel, raw: &[Raw]) {
    assert_eq!(model.tensors.len(), raw.len());
    for r in raw {
        let name = hf::gguf_name(&r.name).unwrap();
        let t = &model.tensors[&name];
        assert_eq!(t.name, name);
        let mut shape = r.shape.clone();
        shape.reverse();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.to_f32(), r.values, "{name}");
    }
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn shakespeare_config_and_tensors() {
    let m = hf::read(&expert_dir()).unwrap();
    let c = &m.config.config;
    assert_eq!(c.arch, "llama");
    assert_eq!(
        (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
        (288, 6, 6, 2, 48)
    );
    assert_eq!((c.ffn_dim, c.vocab_size, c.max_ctx, c.rope_dim), (768, 4096, 512, 48));
    assert_eq!(c.rms_eps, 1e-5);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert_eq!(m.config.config.sliding_window, None);
    assert_eq!(m.config.tie_word_embeddings, Some(false));
    assert_eq!(m.eos_ids, vec![2]);
    assert_eq!(
        m.file_bytes,
        std::fs::metadata(expert_dir().join("model.safetensors")).unwrap().len()
    );
    assert_eq!(m.name.as_deref(), Some("shakespeare-expert-hf"));
    assert_eq!(m.tensors.len(), 3 + 9 * 6);
    let (d, f, v, kv) = (288, 768, 4096, 96);
    let mut expect: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![d, v]),
        ("output.weight".into(), vec![d, v]),
        ("output_norm.weight".into(), vec![d]),
    ];
    for l in 0..6 {
        for (n, s) in [
            ("attn_norm.weight", vec![d]),
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d, kv]),
            ("attn_v.weight", vec![d, kv]),
            ("attn_output.weight", vec![d, d]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_gate.weight", vec![d, f]),
            ("ffn_up.weight", vec![d, f]),
            ("ffn_down.weight", vec![f, d]),
        ] {
            expect.push((format!("blk.{l}.{n}"), s));
        }
    }
    for (name, shape) in expect {
        let t = m.tensors.get(&name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.nbytes, 4 * shape.iter().product::<usize>());
    }
}

/// The GGUF file was converted from the same checkpoint by llama.cpp's `convert_hf_to_gguf.py`: every
/// tensor must match after F16 rounding, except that the converter reordered each head's Q/K rows from
/// Hugging Face's half split (dimension i pairs with i + head_dim/2, rotated with `RopeStyle::Neox`) into
/// adjacent pairs (2i, 2i+1, rotated with `RopeStyle::Interleaved`): GGUF row `h*hd + 2i + j` is Hugging
/// Face row `h*hd + j*hd/2 + i`.
#[test]
fn shakespeare_matches_gguf_conversion() {
    let m = hf::read(&expert_dir()).unwrap();
    let g = Gguf::open(&shared("models/shakespeare/shakespeare-expert-f16.gguf")).unwrap();
    let mut gguf_names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut hf_names: Vec<&str> = m.tensors.keys().map(String::as_str).collect();
    gguf_names.sort();
    hf_names.sort();
    assert_eq!(hf_names, gguf_names);
    let c = &m.config.config;
    let hd = c.head_dim;
    let mut permuted = 0;
    for (name, t) in &m.tensors {
        let gt = g.tensor(name).unwrap();
        assert_eq!(t.shape, gt.shape, "{name}");
        let ours: Vec<f32> = match gt.dtype {
            DType::F16 => t.to_f32().iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            DType::F32 => t.to_f32(),
            other => panic!("{name}: GGUF dtype {other}"),
        };
        let theirs = gt.to_f32();
        if !(name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight")) {
            assert!(ours == theirs, "{name} differs from the GGUF tensor");
            continue;
        }
        let cols = t.shape[0];
        let row = |v: &[f32], r: usize| v[r * cols..(r + 1) * cols].to_vec();
        assert!(ours != theirs, "{name}: expected the GGUF rows to be permuted");
        for r in 0..t.shape[1] {
            let (h, k) = (r / hd, r % hd);
            let hf_row = h * hd + (k % 2) * (hd / 2) + k / 2;
            assert_eq!(
                row(&theirs, r),
                row(&ours, hf_row),
                "{name}: GGUF row {r} vs HF row {hf_row}"
            );
        }
        permuted += 1;
    }
    assert_eq!(permuted, 2 * c.n_layers);
}

#[test]
fn load_attaches_the_tokenizer() {
    let dir = expert_dir();
    match Tokenizer::from_hf_dir(&dir) {
        Ok(tok) => {
            let mf = hf::load(&dir).unwrap();
            assert_eq!(mf.format, "safetensors");
            assert!(mf.eos_ids.contains(&2));
            for id in tok.eos_ids() {
                assert!(mf.eos_ids.contains(id));
            }
            assert_eq!(mf.tensors.len(), 57);
            assert_eq!(mf.config.n_kv_heads, 2);
        }
        // Until the tokenizer exists, load fails on it (and only on it).
        Err(_) => assert!(err_text(hf::load(&dir)).contains("tokenizer")),
    }
}

fn config_with(extra: Value) -> Value {
    let mut c = tiny_config("llama", "LlamaForCausalLM");
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn rope_in_both_config_styles() {
    let parse = |extra: Value| hf::parse_config(&config_with(extra)).map(|c| c.config);
    let rope = |extra: Value| {
        let c = parse(extra).unwrap();
        (c.rope_theta, c.rope_scaling)
    };
    let c = parse(json!({})).unwrap();
    assert_eq!((c.head_dim, c.rope_dim, c.rms_eps), (4, 4, 1e-6));
    assert_eq!(rope(json!({})), (1e6, RopeScaling::None));
    // transformers 4: rope_theta + rope_scaling, with `type` or `rope_type`.
    let linear4 = RopeScaling::Linear { factor: 4.0 };
    let old = json!({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}});
    assert_eq!(rope(old), (5e5, linear4.clone()));
    let mut llama3 = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let want = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    };
    assert_eq!(rope(json!({"rope_scaling": llama3})).1, want);
    assert_eq!(
        rope(json!({"rope_scaling": {"rope_type": "default"}})).1,
        RopeScaling::None
    );
    assert_eq!(rope(json!({"rope_scaling": null})).1, RopeScaling::None);
    // transformers 5: everything in rope_parameters (which wins over a top-level rope_theta).
    llama3["rope_theta"] = json!(500000.0);
    assert_eq!(rope(json!({"rope_theta": 1e4, "rope_parameters": llama3})), (5e5, want));
    let v5 = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}});
    assert_eq!(rope(v5), (1e4, RopeScaling::None));
    let v5 = json!({"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}});
    assert_eq!(rope(v5), (1e4, linear4));
    // Unsupported types are refused by name.
    for ty in ["yarn", "dynamic", "longrope"] {
        let e = err_text(parse(json!({"rope_scaling": {"type": ty, "factor": 2.0}})));
        assert!(e.contains(&format!("RoPE type '{ty}'")), "{e}");
        let v5 = json!({"rope_parameters": {"rope_type": ty, "factor": 2.0, "rope_theta": 1e4}});
        assert!(err_text(parse(v5)).contains(&format!("RoPE type '{ty}'")));
    }
    let e = err_text(parse(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})));
    assert!(e.contains("low_freq_factor"), "{e}");
}

#[test]
fn config_defaults_architectures_and_sliding_window() {
    let mut c = tiny_config("llama", "LlamaForCausalLM");
    c.as_object_mut().unwrap().remove("num_key_value_heads");
    c["head_dim"] = Value::Null;
    let hc = hf::parse_config(&c).unwrap();
    assert_eq!((hc.config.n_kv_heads, hc.config.head_dim), (HEADS, DIM / HEADS));
    assert_eq!(hc.eos_ids, vec![2]);
    assert_eq!(hc.tie_word_embeddings, None);

    let c = hf::parse_config(&tiny_config("qwen2", "Qwen2ForCausalLM"))
        .unwrap()
        .config;
    assert_eq!((c.arch.as_str(), c.rope_style), ("qwen2", RopeStyle::Neox));

    for (model_type, arch) in [("gemma", "GemmaForCausalLM"), ("phi3", "Phi3ForCausalLM")] {
        let e = err_text(hf::parse_config(&tiny_config(model_type, arch)));
        assert!(e.contains(&format!("model_type '{model_type}'")), "{e}");
    }
    let e = err_text(hf::parse_config(&tiny_config(
        "llama",
        "LlamaForSequenceClassification",
    )));
    assert!(e.contains("LlamaForSequenceClassification"), "{e}");
    let mut c = tiny_config("llama", "LlamaForCausalLM");
    c.as_object_mut().unwrap().remove("model_type");
    assert_eq!(hf::parse_config(&c).unwrap().config.arch, "llama");
    let e = err_text(hf::parse_config(&config_with(json!({"hidden_act": "gelu"}))));
    assert!(e.contains("gelu"), "{e}");
    let e = err_text(hf::parse_config(&config_with(json!({"hidden_size": null}))));
    assert!(e.contains("hidden_size"), "{e}");

    let mistral = |w: Value| {
        let mut c = tiny_config("mistral", "MistralForCausalLM");
        c["sliding_window"] = w;
        hf::parse_config(&c).unwrap()
    };
    let m = mistral(json!(16));
    assert_eq!((m.config.arch.as_str(), m.config.sliding_window), ("mistral", Some(16)));
    assert_eq!(mistral(json!(null)).config.sliding_window, None);
    assert_eq!(mistral(json!(64)).config.sliding_window, None);
    assert_eq!(mistral(json!(4096)).config.sliding_window, None);
    // Qwen2 configs name a window that is off unless use_sliding_window.
    let mut q = tiny_config("qwen2", "Qwen2ForCausalLM");
    q["sliding_window"] = json!(16);
    q["use_sliding_window"] = json!(false);
    assert_eq!(hf::parse_config(&q).unwrap().config.sliding_window, None);
    q["use_sliding_window"] = json!(true);
    assert!(err_text(hf::parse_config(&q)).contains("sliding"));
}

#[test]
fn f16_bf16_f32_tied_and_biases() {
    for dtype in ["F32", "F16", "BF16"] {
        let raw = tiny_tensors(dtype, false, true);
        let mut cfg = tiny_config("qwen2", "Qwen2ForCausalLM");
        cfg["tie_word_embeddings"] = json!(true);
        let dir = tiny_dir(&format!("dtype-{dtype}"), &cfg, &raw);
        std::fs::write(dir.0.join("generation_config.json"), r#"{"eos_token_id": [7, 2]}"#).unwrap();
        std::fs::write(dir.0.join("chat_template.jinja"), "{{ messages }}").unwrap();
        let m = hf::read(&dir.0).unwrap();
        assert_same(&m, &raw);
        let want = DType::from_name(dtype).unwrap();
        assert!(m.tensors.values().all(|t| t.dtype == want));
        assert!(!m.tensors.contains_key("output.weight"));
        assert_eq!(m.tensors["blk.1.attn_k.bias"].shape, vec![KV_HEADS * HEAD_DIM]);
        assert_eq!(m.eos_ids, vec![7, 2]);
        assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(
            m.file_bytes,
            std::fs::metadata(dir.0.join("model.safetensors")).unwrap().len()
        );
        // The tensors are views into the mapped file, not copies.
        let t = &m.tensors["token_embd.weight"];
        assert!(matches!(*t.storage, bushu::formats::Storage::Mapped(_)));
    }
    // An explicit tie_word_embeddings = false needs lm_head.weight.
    let mut cfg = tiny_config("llama", "LlamaForCausalLM");
    cfg["tie_word_embeddings"] = json!(false);
    let dir = tiny_dir("untied", &cfg, &tiny_tensors("F32", false, false));
    assert!(err_text(hf::read(&dir.0)).contains("lm_head.weight"));
}

#[test]
fn chat_template_from_tokenizer_config() {
    let raw = tiny_tensors("F32", true, false);
    let dir = tiny_dir("template", &tiny_config("llama", "LlamaForCausalLM"), &raw);
    assert_eq!(hf::read(&dir.0).unwrap().chat_template, None);
    let cfg = json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
    std::fs::write(dir.0.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    assert_eq!(hf::read(&dir.0).unwrap().chat_template.as_deref(), Some("D"));
    std::fs::write(dir.0.join("tokenizer_config.json"), r#"{"chat_template": "S"}"#).unwrap();
    assert_eq!(hf::read(&dir.0).unwrap().chat_template.as_deref(), Some("S"));
}

#[test]
fn sharded_checkpoint() {
    let raw = tiny_tensors("BF16", true, false);
    let cfg = tiny_config("mistral", "MistralForCausalLM");
    let single = tiny_dir("single", &cfg, &raw);
    let dir = TempDir::new("sharded");
    std::fs::write(dir.0.join("config.json"), cfg.to_string()).unwrap();
    let (a, b) = raw.split_at(raw.len() / 2);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write_safetensors(&dir.0.join(names[0]), a);
    write_safetensors(&dir.0.join(names[1]), b);
    let mut map = serde_json::Map::new();
    for (part, file) in [(a, names[0]), (b, names[1])] {
        for t in part {
            map.insert(t.name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.0.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let m = hf::read(&dir.0).unwrap();
    assert_same(&m, &raw);
    let len = |n: &str| std::fs::metadata(dir.0.join(n)).unwrap().len();
    assert_eq!(m.file_bytes, len(names[0]) + len(names[1]));
    let s = hf::read(&single.0).unwrap();
    for (name, t) in &s.tensors {
        assert_eq!(t.to_f32(), m.tensors[name].to_f32(), "{name}");
    }
    // Tensors from both files, each a view into its own map.
    let first = &m.tensors[&hf::gguf_name(&a[0].name).unwrap()];
    let last = &m.tensors[&hf::gguf_name(&b[b.len() - 1].name).unwrap()];
    assert!(!std::sync::Arc::ptr_eq(&first.storage, &last.storage));

    // An index naming a tensor its shard does not have.
    map.insert("model.layers.0.mlp.up_proj.weight".into(), json!(names[0]));
    let index = json!({"weight_map": map});
    std::fs::write(dir.0.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = err_text(hf::read(&dir.0));
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight") && e.contains(names[0]),
        "{e}"
    );
}

#[test]
fn truncated_and_malformed_files() {
    let raw = tiny_tensors("F16", true, false);
    let dir = tiny_dir("truncated", &tiny_config("llama", "LlamaForCausalLM"), &raw);
    let path = dir.0.join("model.safetensors");
    let full = std::fs::read(&path).unwrap();
    for cut in [full.len() - 1, full.len() - 100, 100, 9, 3, 0] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = err_text(hf::read(&dir.0));
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
        assert!(e.contains("model.safetensors"), "{e}");
    }
    // Offsets that do not match the shape.
    let mut bad = raw.clone();
    bad[0].shape = vec![VOCAB, DIM + 1];
    write_safetensors(&path, &bad);
    assert!(err_text(hf::read(&dir.0)).contains("data_offsets"));
    // Not JSON.
    let mut junk = 16u64.to_le_bytes().to_vec();
    junk.extend_from_slice(b"not a json objec");
    std::fs::write(&path, junk).unwrap();
    assert!(err_text(hf::read(&dir.0)).contains("JSON"));
    // No weights at all.
    std::fs::remove_file(&path).unwrap();
    assert!(err_text(hf::read(&dir.0)).contains("no model.safetensors"));
}

#[test]
fn unsupported_dtypes_and_unknown_tensors() {
    let cfg = tiny_config("llama", "LlamaForCausalLM");
    let mut raw = tiny_tensors("F32", true, false);
    raw[3].dtype = "I32";
    let dir = tiny_dir("dtype", &cfg, &raw);
    let e = err_text(hf::read(&dir.0));
    assert!(e.contains("dtype I32") && e.contains(&raw[3].name), "{e}");

    let mut raw = tiny_tensors("F32", true, false);
    raw.push(Raw {
        name: "model.layers.0.self_attn.q_norm.weight".into(),
        ..raw[1].clone()
    });
    let dir = tiny_dir("unknown", &cfg, &raw);
    assert!(err_text(hf::read(&dir.0)).contains("q_norm"));

    // Old checkpoints' RoPE buffers are skipped.
    let mut raw = tiny_tensors("F32", true, false);
    let inv = Raw {
        name: "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        ..raw[1].clone()
    };
    let dir = tiny_dir("inv-freq", &cfg, &[raw.clone(), vec![inv]].concat());
    assert_same(&hf::read(&dir.0).unwrap(), &raw);

    // A shape that does not fit config.json.
    let k = raw
        .iter()
        .position(|r| r.name.ends_with("0.self_attn.k_proj.weight"))
        .unwrap();
    raw[k] = Raw {
        shape: vec![HEADS * HEAD_DIM, DIM],
        values: values(64, 0),
        ..raw[k].clone()
    };
    let dir = tiny_dir("shape", &cfg, &raw);
    let e = err_text(hf::read(&dir.0));
    assert!(e.contains("blk.0.attn_k.weight"), "{e}");

    // Layers past num_hidden_layers, and missing ones.
    let mut c = cfg.clone();
    c["num_hidden_layers"] = json!(1);
    let dir = tiny_dir("extra-layer", &c, &tiny_tensors("F32", true, false));
    assert!(err_text(hf::read(&dir.0)).contains("blk.1."));
    c["num_hidden_layers"] = json!(3);
    let dir = tiny_dir("missing-layer", &c, &tiny_tensors("F32", true, false));
    assert!(err_text(hf::read(&dir.0)).contains("blk.2.attn_norm.weight is missing"));
}

/// The repository's random-weight fixtures (made with transformers 5): llama3 and linear RoPE scaling in
/// `rope_parameters`, Qwen2 with Q/K/V biases and tied embeddings, Mistral without a window.
#[test]
fn repository_fixtures() {
    let fixture = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/hf")
            .join(n)
    };
    let m = hf::read(&fixture("llama3-gqa")).unwrap();
    let c = &m.config.config;
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta), (8, 2, 16, 5e5));
    let want = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 64,
    };
    assert_eq!(c.rope_scaling, want);
    let m = hf::read(&fixture("llama-linear")).unwrap();
    assert_eq!(m.config.config.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    let m = hf::read(&fixture("qwen2-tied")).unwrap();
    assert_eq!(
        (m.config.config.arch.as_str(), m.config.tie_word_embeddings),
        ("qwen2", Some(true))
    );
    assert!(!m.tensors.contains_key("output.weight"));
    assert_eq!(m.tensors["blk.1.attn_k.bias"].shape, vec![m.config.config.kv_dim()]);
    assert_eq!(m.tensors.len(), 26);
    let m = hf::read(&fixture("mistral")).unwrap();
    assert_eq!(
        (m.config.config.arch.as_str(), m.config.config.sliding_window),
        ("mistral", None)
    );
    assert_eq!(m.eos_ids, vec![2]);
}
