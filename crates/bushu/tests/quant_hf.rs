//! `bushu quantize` from a Hugging Face directory: the GGUF it writes is the one llama.cpp's
//! `convert_hf_to_gguf.py` wrote for the Shakespeare models (every tensor byte and metadata value), its
//! q8_0 runs like llama-quantize's Q8_0, and converted Llama/Mistral/Qwen2 fixtures compute what the
//! directories compute (Q/K permutation, linear RoPE, biases, tied embeddings).

mod common;
use bushu::formats::gguf::Gguf;
use bushu::model::{llama::Logits, load, Model};
use bushu::quant::affine::QuantError;
use bushu::quant::convert::hf_gguf::{permute_rows, size_label};
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
    let cases = [
        (fixture("hf/llama-linear"), "no tokenizer.model"),
        (with_spm(&fixture("hf/llama3-gqa"), &tmp.0), "Llama 3 RoPE scaling"),
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
