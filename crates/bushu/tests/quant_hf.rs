//! `bushu quantize` from a Hugging Face directory: the GGUF it writes is the one llama.cpp's
//! `convert_hf_to_gguf.py` wrote for the Shakespeare models (every tensor byte and metadata value), its
//! q8_0 runs like llama-quantize's Q8_0, and converted Llama/Mistral/Qwen2 fixtures compute what the
//! directories compute (Q/K permutation, linear and Llama 3 RoPE, biases, tied embeddings); byte-level BPE
//! directories (Llama 3, Qwen2, SmolLM2 and GPT-2 pre-tokenizers) tokenize and compute like the GGUF.

mod common;
use bushu::formats::gguf::Gguf;
use bushu::model::{llama::Logits, load, Model};
use bushu::quant::affine::QuantError;
use bushu::quant::convert::hf_gguf::{llama3_rope_factors, permute_rows, size_label};
use bushu::quant::convert::{quantize_gguf, QuantizeOptions, Target};
use common::{fixture, shared, TempDir};
use std::path::{Path, PathBuf};

fn convert(input: &Path, out: &Path, ty: &str) -> anyhow::Result<PathBuf> {
    let opts = QuantizeOptions {
        target: Target::parse(ty).unwrap(),
        pure: false,
        hessians: None,
        gptq: Default::default(),
    };
    quantize_gguf(input, out, &opts, |_, _, _| {})?;
    Ok(out.to_path_buf())
}

#[test]
fn hf_dir_to_f16_is_what_convert_hf_to_gguf_wrote() {
    let tmp = TempDir::new("quant-hf-f16");
    for m in ["expert", "amateur"] {
        let dir = shared(&format!("models/shakespeare/shakespeare-{m}-hf"));
        let ours = Gguf::open(&convert(&dir, &tmp.0.join(format!("{m}.gguf")), "f16").unwrap()).unwrap();
        let theirs = Gguf::open(&shared(&format!("models/shakespeare/shakespeare-{m}-f16.gguf"))).unwrap();
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{m}: tensor count");
        for t in &theirs.tensors {
            let o = ours.tensors.iter().find(|x| x.name == t.name);
            let o = o.unwrap_or_else(|| panic!("{m}: {} missing", t.name));
            assert_eq!((o.dtype, &o.shape), (t.dtype, &t.shape), "{m}: {}", t.name);
            assert!(o.bytes() == t.bytes(), "{m}: bytes of {} differ", t.name);
        }
        let keys: Vec<&String> = theirs.metadata.keys().chain(ours.metadata.keys()).collect();
        for k in keys {
            assert_eq!(ours.metadata.get(k), theirs.metadata.get(k), "{m}: metadata {k}");
        }
        eprintln!(
            "{m}: {} tensors and {} metadata keys identical to convert_hf_to_gguf.py's",
            theirs.tensors.len(),
            theirs.metadata.len()
        );
    }
}

fn logits(path: &Path, toks: &[u32]) -> Vec<f32> {
    let m = Model::new(&load(path).unwrap()).unwrap();
    let mut st = m.new_state(toks.len());
    m.forward(&mut st, toks, Logits::All).unwrap().to_vec()
}

/// Positions where the argmax of `a` and `b` differ although `a`'s top-2 gap is at least 0.05.
fn argmax_flips(a: &[f32], b: &[f32], vocab: usize) -> Vec<usize> {
    let top2 = |r: &[f32]| {
        let mut i: Vec<usize> = (0..r.len()).collect();
        i.sort_by(|&x, &y| r[y].total_cmp(&r[x]));
        (i[0], r[i[0]] - r[i[1]])
    };
    let rows = a.chunks_exact(vocab).zip(b.chunks_exact(vocab));
    rows.enumerate()
        .filter(|(_, (x, y))| {
            let (ax, gap) = top2(x);
            ax != top2(y).0 && gap >= 0.05
        })
        .map(|(i, _)| i)
        .collect()
}

fn fnv1a64(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[test]
fn hf_dir_to_q8_0_is_convert_hf_to_gguf_q8_0_and_runs_like_llama_quantize_q8_0() {
    // Q8_0 straight from the F32 checkpoint: every tensor is the one `convert_hf_to_gguf.py --outtype q8_0`
    // wrote (hashes in the fixture, scripts/refs/quant_hashes.py).
    let tmp = TempDir::new("quant-hf-q8");
    let dir = shared("models/shakespeare/shakespeare-expert-hf");
    let ours = convert(&dir, &tmp.0.join("q8_0.gguf"), "q8_0").unwrap();
    let refs = common::read_json(&fixture("quant/convert-hf-hashes.json"));
    let want = refs["files"][0]["tensors"].as_object().unwrap();
    let g = Gguf::open(&ours).unwrap();
    assert_eq!(g.tensors.len(), want.len());
    for t in &g.tensors {
        let w = &want[&t.name];
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "type of {}", t.name);
        assert_eq!(
            fnv1a64(t.bytes()),
            w["fnv1a64"].as_str().unwrap(),
            "bytes of {}",
            t.name
        );
    }
    // Against llama-quantize's Q8_0 of the F16 file the blocks differ where F16 rounding moved a value
    // across a rounding boundary; the models agree to Q8_0 precision.
    let theirs = shared("models/shakespeare/shakespeare-expert-q8_0.gguf");
    let text = std::fs::read_to_string(shared("testdata/shakespeare/val.txt")).unwrap();
    let file = load(&theirs).unwrap();
    let toks = bushu::perplexity::tokenize_text(&file.tokenizer, &text[..4000]).unwrap();
    let toks = &toks[..128];
    let (a, b) = (logits(&theirs, toks), logits(&ours, toks));
    let f16 = logits(&shared("models/shakespeare/shakespeare-expert-f16.gguf"), toks);
    let (e_ab, e_a, e_b) = (
        QuantError::of(&a, &b),
        QuantError::of(&f16, &a),
        QuantError::of(&f16, &b),
    );
    eprintln!(
        "logits rel. error: HF q8_0 vs llama-quantize Q8_0 {:.2e}; vs F16: llama-quantize {:.2e}, HF {:.2e}",
        e_ab.rel_error, e_a.rel_error, e_b.rel_error
    );
    // rel_error is ||a − b||² / ||a||².
    assert!(e_ab.rel_error < 1e-4, "{e_ab:?}");
    assert!(
        e_b.rel_error < 2.0 * e_a.rel_error,
        "HF q8_0 is further from F16 than llama-quantize's"
    );
    let flips = argmax_flips(&a, &b, 4096);
    assert!(flips.is_empty(), "argmax differs at positions {flips:?}");
    // Greedy generation: equal until a near-tie (top-2 logit gap < 0.05), if any.
    let prompt = bushu::perplexity::tokenize_text(&file.tokenizer, "ROMEO: What light is this").unwrap();
    let (ga, gb) = (greedy(&theirs, &prompt, 48), greedy(&ours, &prompt, 48));
    let same = ga.iter().zip(&gb).take_while(|(x, y)| x.0 == y.0).count();
    if same < ga.len() {
        assert!(
            ga[same].1 < 0.05 || gb[same].1 < 0.05,
            "greedy tokens part at step {same} without a near-tie"
        );
    }
    eprintln!("greedy: {same}/48 tokens equal");
}

/// Greedy tokens after `prompt`, each with its top-2 logit gap.
fn greedy(path: &Path, prompt: &[u32], n: usize) -> Vec<(u32, f32)> {
    let m = Model::new(&load(path).unwrap()).unwrap();
    let mut st = m.new_state(prompt.len() + n);
    let mut logits = m.forward(&mut st, prompt, Logits::Last).unwrap().to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        let t = idx[0] as u32;
        out.push((t, logits[idx[0]] - logits[idx[1]]));
        logits = m.forward(&mut st, &[t], Logits::Last).unwrap().to_vec();
    }
    out
}

fn with_spm(src: &Path, tmp: &Path) -> PathBuf {
    let dir = tmp.join(src.file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let spm = shared("models/shakespeare/shakespeare-expert-hf/tokenizer.model");
    std::fs::copy(spm, dir.join("tokenizer.model")).unwrap();
    dir
}

#[test]
fn converted_fixtures_compute_what_the_directories_compute() {
    // Random-weight Llama (linear RoPE), Mistral (GQA, head_dim 8) and Qwen2 (biases, tied embeddings)
    // fixtures, with the Shakespeare tokenizer.model added: the f16 GGUF (llama.cpp layout, Q/K permuted
    // for llama) gives the logits of the directory (Hugging Face layout) up to f16 weight rounding.
    let tmp = TempDir::new("quant-hf-fixtures");
    let toks: Vec<u32> = (0..24).map(|i| 3 + (i * 397) % 4000).collect();
    for name in ["llama-linear", "mistral", "qwen2-tied"] {
        let dir = with_spm(&fixture(&format!("hf/{name}")), &tmp.0);
        let gguf = convert(&dir, &tmp.0.join(format!("{name}.gguf")), "f16").unwrap();
        let g = Gguf::open(&gguf).unwrap();
        let arch = g.metadata["general.architecture"].as_str().unwrap().to_owned();
        let (want, got) = (logits(&dir, &toks), logits(&gguf, &toks));
        let e = QuantError::of(&want, &got);
        eprintln!("{name} ({arch}): logits rel. error {:.2e}", e.rel_error);
        assert_eq!(arch, if name == "qwen2-tied" { "qwen2" } else { "llama" });
        assert!(e.rel_error < 1e-5, "{name}: {e:?}"); // ||a − b||² / ||a||²
        assert!(argmax_flips(&want, &got, 4096).is_empty(), "{name}: argmax flips");
    }
}

#[test]
fn unconvertible_directories_are_clear_errors() {
    let tmp = TempDir::new("quant-hf-errors");
    // A byte-level BPE whose pre-tokenizer regex is none of bushu's named ones.
    let mut odd = bpe_kinds().remove(3);
    odd.pre = "odd";
    odd.pre_tokenizer = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{L}+|\p{N}{1,4}"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    let cases = [
        (fixture("hf/llama-linear"), "no tokenizer.model"),
        (with_bpe(&odd, &tmp.0), "matches none of bushu's named pre-tokenizers"),
        (with_spm(&fixture("hf/mistral-swa"), &tmp.0), "sliding-window"),
    ];
    for (dir, want) in cases {
        let e = convert(&dir, &tmp.0.join("x.gguf"), "f16").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(want) && msg.contains("convert_hf_to_gguf.py"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

#[test]
fn llama3_rope_scaling_is_the_converters_rope_freqs_tensor() {
    // The divisors are bit for bit those of convert_hf_to_gguf.py (torch, f32), for the fixture's and real
    // Llama 3.1/3.2 parameters; the converted fixture computes the directory's logits.
    let refs = common::read_json(&fixture("quant/llama3-rope-factors.json"));
    for c in refs["cases"].as_array().unwrap() {
        let a: Vec<f64> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let got = llama3_rope_factors(
            a[0] as f32,
            a[1] as usize,
            a[2] as f32,
            a[3] as f32,
            a[4] as f32,
            a[5] as f32,
        );
        let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, common::u32s(&c["bits"]), "{a:?}");
    }
    let tmp = TempDir::new("quant-hf-llama3-rope");
    let dir = with_spm(&fixture("hf/llama3-gqa"), &tmp.0);
    let gguf = convert(&dir, &tmp.0.join("llama3.gguf"), "f16").unwrap();
    let g = Gguf::open(&gguf).unwrap();
    let f = g.tensor("rope_freqs.weight").expect("rope_freqs.weight");
    assert_eq!((f.dtype.name(), f.shape.clone()), ("F32", vec![8]));
    assert!(g.get("llama.rope.scaling.type").is_none());
    let toks: Vec<u32> = (0..200).map(|i| 3 + (i * 397) % 4000).collect();
    let (want, got) = (logits(&dir, &toks), logits(&gguf, &toks));
    let e = QuantError::of(&want, &got);
    eprintln!(
        "llama3-gqa: logits rel. error {:.2e} over {} positions",
        e.rel_error,
        toks.len()
    );
    assert!(e.rel_error < 1e-5, "{e:?}");
    assert!(argmax_flips(&want, &got, 4096).is_empty(), "argmax flips");
}

#[test]
fn permutation_and_size_label_match_the_converter() {
    // LlamaModel.permute on 2 heads of 4 rows: (h, s, i) -> (h, i, s).
    let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
    assert_eq!(
        permute_rows(&w, 2, 1).unwrap(),
        vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    );
    assert!(permute_rows(&w, 3, 1).is_err());
    let labels: Vec<String> = [7_722_528usize, 1_365_120, 134_515_008, 1_100_048_384, 999]
        .into_iter()
        .map(size_label)
        .collect();
    assert_eq!(labels, ["7.7M", "1.4M", "135M", "1.1B", "1.0K"]);
}

/// The Hugging Face `tokenizer.json` regexes of Llama 3 and Qwen2 (as in the models' files).
const HF_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const HF_QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer in a Hugging Face directory, as the models ship it.
struct BpeKind {
    /// Fixture directory with the weights.
    model: &'static str,
    /// llama.cpp vocabulary whose first 3800 tokens (and the merges among them) make the BPE model.
    vocab: &'static str,
    pre_tokenizer: serde_json::Value,
    normalizer: serde_json::Value,
    ignore_merges: bool,
    /// Added tokens (content, special), given ids from 3800 on.
    added: &'static [(&'static str, bool)],
    /// `tokenizer_config.json` without the template.
    config: serde_json::Value,
    /// The TemplateProcessing post-processor adds this token first.
    bos_template: Option<&'static str>,
    /// The name `tokenizer.ggml.pre` must get.
    pre: &'static str,
}

fn bpe_kinds() -> Vec<BpeKind> {
    use serde_json::json;
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let byte_level =
        |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    vec![
        BpeKind {
            model: "llama3-gqa",
            vocab: "ggml-vocab-llama-bpe.gguf",
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [split(HF_LLAMA3), byte_level(false)]}),
            normalizer: serde_json::Value::Null,
            ignore_merges: true,
            added: &[
                ("<|begin_of_text|>", true),
                ("<|end_of_text|>", true),
                ("<|eot_id|>", true),
                ("<think>", false),
            ],
            config: json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
            bos_template: Some("<|begin_of_text|>"),
            pre: "llama-bpe",
        },
        BpeKind {
            model: "qwen2-tied",
            vocab: "ggml-vocab-qwen2.gguf",
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [split(HF_QWEN2), byte_level(false)]}),
            normalizer: json!({"type": "NFC"}),
            ignore_merges: false,
            added: &[("<|endoftext|>", true), ("<|im_start|>", true), ("<|im_end|>", true)],
            config: json!({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                           "add_prefix_space": false}),
            bos_template: None,
            pre: "qwen2",
        },
        BpeKind {
            model: "mistral",
            vocab: "ggml-vocab-gpt-2.gguf",
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            normalizer: serde_json::Value::Null,
            ignore_merges: false,
            added: &[
                ("<|endoftext|>", true),
                ("<|im_start|>", true),
                ("<|im_end|>", true),
                ("<repo_name>", false),
            ],
            config: json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                           "pad_token": "<|im_end|>", "add_prefix_space": false}),
            bos_template: None,
            pre: "smollm",
        },
        BpeKind {
            model: "llama-linear",
            vocab: "ggml-vocab-gpt-2.gguf",
            pre_tokenizer: byte_level(true),
            normalizer: serde_json::Value::Null,
            ignore_merges: false,
            added: &[("<|endoftext|>", true)],
            config: json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
            bos_template: None,
            pre: "gpt-2",
        },
    ]
}

const N_BPE: usize = 3800;

/// The fixture `k.model` with the byte-level BPE tokenizer of `k` instead of its own.
fn with_bpe(k: &BpeKind, tmp: &Path) -> PathBuf {
    use serde_json::json;
    let dir = tmp.join(format!("{}-{}", k.model, k.pre));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture(&format!("hf/{}", k.model))).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("tokenizer") {
            std::fs::copy(&p, dir.join(name)).unwrap();
        }
    }
    let g = Gguf::open(&shared(&format!("testdata/vocab/{}", k.vocab))).unwrap();
    let tokens = g.get_strings("tokenizer.ggml.tokens").unwrap();
    let keep: std::collections::HashSet<&str> = tokens.iter().take(N_BPE).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .take(N_BPE)
        .enumerate()
        .map(|(i, t)| (t.to_owned(), json!(i)))
        .collect();
    let merges: Vec<serde_json::Value> = g
        .get_strings("tokenizer.ggml.merges")
        .unwrap()
        .iter()
        .filter(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            keep.contains(a) && keep.contains(b) && keep.contains(format!("{a}{b}").as_str())
        })
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            json!([a, b])
        })
        .collect();
    let added: Vec<serde_json::Value> = k
        .added
        .iter()
        .enumerate()
        .map(|(i, (t, sp))| {
            json!({"id": N_BPE + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": sp})
        })
        .collect();
    let byte_level_pp =
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post = match k.bos_template {
        Some(b) => {
            let id = N_BPE + k.added.iter().position(|a| a.0 == b).unwrap();
            json!({"type": "Sequence", "processors": [byte_level_pp, {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [id], "tokens": [b]}}}]})
        }
        None => byte_level_pp,
    };
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": k.normalizer, "pre_tokenizer": k.pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": k.ignore_merges, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tj).unwrap()).unwrap();
    let mut tc = k.config.clone();
    tc["chat_template"] =
        json!("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}");
    tc["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tc).unwrap(),
    )
    .unwrap();
    dir
}

/// llama.cpp's tokenizer test texts (code, numbers, contractions, non-Latin scripts, emoji, runs of spaces and
/// newlines) and a few with added tokens.
fn tokenizer_texts() -> Vec<String> {
    let inp = std::fs::read_to_string(shared("testdata/vocab/ggml-vocab-llama-bpe.gguf.inp")).unwrap();
    let mut texts: Vec<String> = inp.split("\n__ggml_vocab_test__\n").map(str::to_owned).collect();
    texts.pop();
    let val = std::fs::read_to_string(shared("testdata/shakespeare/val.txt")).unwrap();
    texts.push(val[..val.floor_char_boundary(3000)].to_owned());
    texts.extend(
        [
            "fn main() {\n    let x = 1_000_000 * 3.14159;\n\tprintln!(\"{x:>8}\");\n}\n",
            "I'm sure they'll say WE'VE done it; she'd've known. 12345678 + 9 = 12345687",
            "<|im_start|>user\nHi there<|im_end|>\n<think> a plan </think><repo_name>x",
            "Привет, мир! 你好，世界。 こんにちは 🚀🦙 👩‍👩‍👧 مرحبا",
            "   leading and trailing   \n\n\n  \t  ",
        ]
        .map(str::to_owned),
    );
    texts
}

#[test]
fn byte_level_bpe_directories_convert_like_convert_hf_to_gguf() {
    // Llama 3 (Split regex + ByteLevel, ignore_merges, BOS from the post-processor, Llama 3 RoPE scaling),
    // Qwen2 (NFC, single digits, no BOS), SmolLM2 (Digits + ByteLevel regex) and GPT-2 (ByteLevel) tokenizers
    // on the random-weight fixtures: the GGUF tokenizes like the directory (the `tokenizers` library) and
    // computes its logits.
    let tmp = TempDir::new("quant-hf-bpe");
    let texts = tokenizer_texts();
    // BUSHU_QUANT_HF_BPE_OUT=DIR keeps the directories and GGUF files (for llama.cpp, scripts/refs/README.md).
    let keep = std::env::var_os("BUSHU_QUANT_HF_BPE_OUT").map(PathBuf::from);
    for k in bpe_kinds() {
        let dir = with_bpe(&k, &tmp.0);
        let gguf = convert(&dir, &tmp.0.join(format!("{}.gguf", k.pre)), "f16").unwrap();
        if let Some(out) = &keep {
            std::fs::create_dir_all(out).unwrap();
            std::fs::copy(&gguf, out.join(format!("{}.gguf", k.pre))).unwrap();
            let hf = out.join(format!("{}-hf", k.pre));
            std::fs::create_dir_all(&hf).unwrap();
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, hf.join(p.file_name().unwrap())).unwrap();
            }
        }
        let g = Gguf::open(&gguf).unwrap();
        assert_eq!(g.get_str("tokenizer.ggml.model"), Some("gpt2"));
        assert_eq!(g.get_str("tokenizer.ggml.pre"), Some(k.pre), "{}", k.model);
        let types = g.get_i64s("tokenizer.ggml.token_type").unwrap();
        let gtok = g.get_strings("tokenizer.ggml.tokens").unwrap();
        assert_eq!(types.len(), 4096);
        assert_eq!(&gtok[4095], "[PAD4095]");
        for (i, (t, sp)) in k.added.iter().enumerate() {
            assert_eq!(&gtok[N_BPE + i], *t);
            assert_eq!(types[N_BPE + i], if *sp { 3 } else { 4 }, "type of {t}");
        }
        assert!(types[..N_BPE].iter().all(|&t| t == 1) && types[4095] == 5);
        assert!(g.get_str("tokenizer.chat_template").is_some());

        let hf_tok = bushu::tokenizer::Tokenizer::from_hf_dir(&dir).unwrap();
        let gg_tok = bushu::tokenizer::Tokenizer::from_gguf(&g).unwrap();
        // Without a bos_token (Qwen2) gguf-py takes config.json's bos_token_id; it is not added either way.
        if hf_tok.bos_id().is_some() {
            assert_eq!(hf_tok.bos_id(), gg_tok.bos_id(), "{}: BOS", k.pre);
        }
        assert_eq!(hf_tok.eos_ids(), gg_tok.eos_ids(), "{}: EOS", k.pre);
        let mut n_ids = 0;
        for t in &texts {
            let (a, b) = (hf_tok.encode(t, true).unwrap(), gg_tok.encode(t, true).unwrap());
            assert_eq!(a, b, "{}: {t:?}", k.pre);
            assert_eq!(hf_tok.decode(&a), gg_tok.decode(&b), "{}: decode {t:?}", k.pre);
            n_ids += a.len();
        }
        let toks = hf_tok.encode(&texts[texts.len() - 6], true).unwrap();
        let toks = &toks[..toks.len().min(48)];
        let (want, got) = (logits(&dir, toks), logits(&gguf, toks));
        let e = QuantError::of(&want, &got);
        eprintln!(
            "{} on {}: {} texts, {n_ids} tokens identical; logits rel. error {:.2e} over {} positions",
            k.pre,
            k.model,
            texts.len(),
            e.rel_error,
            toks.len()
        );
        assert!(e.rel_error < 1e-5, "{}: {e:?}", k.pre);
        assert!(argmax_flips(&want, &got, 4096).is_empty(), "{}: argmax flips", k.pre);
        if k.model == "llama3-gqa" {
            let f = g.tensor("rope_freqs.weight").expect("rope_freqs.weight");
            assert_eq!((f.dtype.name(), f.shape.clone()), ("F32", vec![8]));
        }
        gguf_py_reads(&gguf, k.pre);
    }
}

/// If Python's `gguf` package is installed, gguf-py reads the file and sees the same tokenizer.
fn gguf_py_reads(path: &Path, pre: &str) {
    let script = "import sys, gguf\nr = gguf.GGUFReader(sys.argv[1])\nf = r.fields\n\
                  s = lambda k: bytes(f[k].parts[f[k].data[0]]).decode()\n\
                  print(s('tokenizer.ggml.model'), s('tokenizer.ggml.pre'), len(f['tokenizer.ggml.tokens'].data), \
                  len(f['tokenizer.ggml.merges'].data), len(r.tensors))";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            eprintln!("gguf-py: {}", s.trim());
            assert!(s.starts_with(&format!("gpt2 {pre} 4096 ")), "{s}");
        }
        _ => eprintln!("gguf-py not available: skipped"),
    }
}
