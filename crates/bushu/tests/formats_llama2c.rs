//! llama2.c checkpoints: tiny checkpoints written here (legacy and version-1 layouts, shared and
//! separate classifiers), checked tensor by tensor; truncated and malformed files; the tokenizer lookup.

mod common;
use bushu::formats::Storage;
use bushu::model::config::RopeScaling;
use bushu::model::llama2c;
use bushu::tokenizer::Tokenizer;
use common::TempDir;
use kernels::ops::RopeStyle;
use kernels::DType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Small deterministic pseudo-random generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0).collect()
    }
}

#[derive(Clone, Copy)]
struct Dims {
    dim: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    seq_len: usize,
}

const TINY: Dims = Dims {
    dim: 16,
    hidden: 40,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 32,
    seq_len: 8,
};

/// Expected tensors: GGUF name → (shape innermost first, values).
type Expected = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes a checkpoint as llama2.c's `export.py` does (`version` 0 = legacy, 1 = `ak42` header) with
/// random weights; returns the file image and what each tensor must read as.
fn checkpoint(d: Dims, shared: bool, version: u32, seed: u64) -> (Vec<u8>, Expected) {
    let head = d.dim / d.heads;
    let kv = head * d.kv_heads;
    let vocab = if shared || version == 1 {
        d.vocab as i32
    } else {
        -(d.vocab as i32)
    };
    let params = [
        d.dim as i32,
        d.hidden as i32,
        d.layers as i32,
        d.heads as i32,
        d.kv_heads as i32,
        vocab,
        d.seq_len as i32,
    ];
    let mut out = Vec::new();
    if version == 1 {
        out.extend_from_slice(&0x616b_3432u32.to_le_bytes());
        out.extend_from_slice(&1i32.to_le_bytes());
    }
    for p in params {
        out.extend_from_slice(&p.to_le_bytes());
    }
    if version == 1 {
        out.push(shared as u8);
        out.resize(256, 0);
    }
    let mut w = Writer {
        out,
        rng: Rng(seed),
        expected: Expected::new(),
        layers: d.layers,
    };
    if version == 0 {
        w.one("token_embd.weight", d.vocab, d.dim);
        w.layered("attn_norm.weight", 1, d.dim);
        w.layered("attn_q.weight", d.dim, d.dim);
        w.layered("attn_k.weight", kv, d.dim);
        w.layered("attn_v.weight", kv, d.dim);
        w.layered("attn_output.weight", d.dim, d.dim);
        w.layered("ffn_norm.weight", 1, d.dim);
        w.layered("ffn_gate.weight", d.hidden, d.dim);
        w.layered("ffn_down.weight", d.dim, d.hidden);
        w.layered("ffn_up.weight", d.hidden, d.dim);
        w.one("output_norm.weight", 1, d.dim);
        w.emit(None, d.seq_len, head / 2); // freq_cis_real
        w.emit(None, d.seq_len, head / 2); // freq_cis_imag
    } else {
        w.layered("attn_norm.weight", 1, d.dim);
        w.layered("ffn_norm.weight", 1, d.dim);
        w.one("output_norm.weight", 1, d.dim);
        w.one("token_embd.weight", d.vocab, d.dim);
        w.layered("attn_q.weight", d.dim, d.dim);
        w.layered("attn_k.weight", kv, d.dim);
        w.layered("attn_v.weight", kv, d.dim);
        w.layered("attn_output.weight", d.dim, d.dim);
        w.layered("ffn_gate.weight", d.hidden, d.dim);
        w.layered("ffn_down.weight", d.dim, d.hidden);
        w.layered("ffn_up.weight", d.hidden, d.dim);
    }
    if !shared {
        w.one("output.weight", d.vocab, d.dim);
    }
    (w.out, w.expected)
}

/// Appends random f32 matrices, remembering what each named one must read as.
struct Writer {
    out: Vec<u8>,
    rng: Rng,
    expected: Expected,
    layers: usize,
}

impl Writer {
    /// A `[rows, cols]` row-major matrix (a vector when `rows == 1`): shape `[cols, rows]` innermost first.
    fn emit(&mut self, name: Option<String>, rows: usize, cols: usize) {
        let v = self.rng.f32s(rows * cols);
        self.out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        if let Some(n) = name {
            let shape = if rows == 1 { vec![cols] } else { vec![cols, rows] };
            self.expected.insert(n, (shape, v));
        }
    }
    fn one(&mut self, name: &str, rows: usize, cols: usize) {
        self.emit(Some(name.to_owned()), rows, cols);
    }
    /// A weight stacked over layers, `[L, rows, cols]`.
    fn layered(&mut self, name: &str, rows: usize, cols: usize) {
        for l in 0..self.layers {
            self.emit(Some(format!("blk.{l}.{name}")), rows, cols);
        }
    }
}

/// A llama2.c `tokenizer.bin`: max token length, then per token a score, a length and the bytes.
fn tokenizer_bin(vocab: usize) -> Vec<u8> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "\n<s>\n".into(), "\n</s>\n".into()];
    tokens.extend((3..vocab).map(|i| ((b'a' + (i % 26) as u8) as char).to_string().repeat(1 + i / 26)));
    let mut out = (tokens.iter().map(String::len).max().unwrap() as u32)
        .to_le_bytes()
        .to_vec();
    for (i, t) in tokens.iter().enumerate() {
        out.extend_from_slice(&(-(i as f32)).to_le_bytes());
        out.extend_from_slice(&(t.len() as i32).to_le_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    out
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn check(ck: &llama2c::Checkpoint, d: Dims, expected: &Expected) {
    let c = &ck.config;
    assert_eq!(c.arch, "llama");
    assert_eq!(
        (c.dim, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads),
        (d.dim, d.hidden, d.layers, d.heads, d.kv_heads)
    );
    assert_eq!(
        (c.vocab_size, c.max_ctx, c.head_dim, c.rope_dim),
        (d.vocab, d.seq_len, d.dim / d.heads, d.dim / d.heads)
    );
    assert_eq!((c.rms_eps, c.rope_theta), (1e-5, 10000.0));
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!(ck.tensors.len(), expected.len());
    for (name, (shape, values)) in expected {
        let t = ck.tensors.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(&t.name, name);
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(&t.shape, shape, "{name}");
        assert_eq!(&t.to_f32(), values, "{name}");
        assert!(
            matches!(*t.storage, Storage::Mapped(_)),
            "{name} is not a view into the file"
        );
    }
}

#[test]
fn legacy_shared_and_separate_classifier() {
    let dir = TempDir::new("legacy");
    for shared in [true, false] {
        let (bytes, expected) = checkpoint(TINY, shared, 0, 7 + shared as u64);
        let path = write(&dir, "model.bin", &bytes);
        let ck = llama2c::read(&path).unwrap();
        check(&ck, TINY, &expected);
        assert_eq!(ck.header.shared_classifier, shared);
        assert_eq!(ck.header.version, 0);
        assert_eq!(ck.tensors.contains_key("output.weight"), !shared);
        assert_eq!(ck.file_bytes, bytes.len() as u64);
        // Each layer's slice is its own view, one after another.
        let (q0, q1) = (&ck.tensors["blk.0.attn_q.weight"], &ck.tensors["blk.1.attn_q.weight"]);
        assert_eq!(q1.offset, q0.offset + q0.nbytes);
        assert_eq!(ck.tensors["token_embd.weight"].offset, 28);
    }
}

#[test]
fn version1_export() {
    let dir = TempDir::new("v1");
    let d = Dims {
        dim: 24,
        hidden: 64,
        layers: 3,
        heads: 6,
        kv_heads: 3,
        vocab: 20,
        seq_len: 16,
    };
    for shared in [true, false] {
        let (bytes, expected) = checkpoint(d, shared, 1, 99 + shared as u64);
        let path = write(&dir, "v1.bin", &bytes);
        let ck = llama2c::read(&path).unwrap();
        check(&ck, d, &expected);
        assert_eq!((ck.header.version, ck.header.shared_classifier), (1, shared));
    }
    let (mut bytes, _) = checkpoint(d, true, 1, 1);
    bytes[4] = 2;
    let e = err_text(llama2c::read(&write(&dir, "v2.bin", &bytes)));
    assert!(e.contains("version 2"), "{e}");
}

#[test]
fn multi_query_attention() {
    let dir = TempDir::new("mqa");
    let d = Dims { kv_heads: 1, ..TINY };
    let (bytes, expected) = checkpoint(d, true, 0, 3);
    let ck = llama2c::read(&write(&dir, "mqa.bin", &bytes)).unwrap();
    check(&ck, d, &expected);
    assert_eq!(ck.tensors["blk.0.attn_k.weight"].shape, vec![16, 4]);
}

#[test]
fn truncated_and_malformed_files() {
    let dir = TempDir::new("bad");
    let (bytes, _) = checkpoint(TINY, false, 0, 5);
    for cut in [bytes.len() - 4, bytes.len() - 1, bytes.len() / 2, 29, 28] {
        let e = err_text(llama2c::read(&write(&dir, "cut.bin", &bytes[..cut])));
        assert!(e.contains("truncated") && e.contains("cut.bin"), "cut at {cut}: {e}");
        assert!(
            e.contains(&format!("has {cut} bytes")) && e.contains(&format!("implies {}", bytes.len())),
            "{e}"
        );
    }
    for cut in [27, 4, 0] {
        let e = err_text(llama2c::read(&write(&dir, "cut.bin", &bytes[..cut])));
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 4]);
    assert!(err_text(llama2c::read(&write(&dir, "long.bin", &long))).contains("longer"));
    // A header that is no model's.
    let mut bad = bytes.clone();
    bad[12..16].copy_from_slice(&5i32.to_le_bytes()); // 5 heads do not divide dim 16
    assert!(err_text(llama2c::read(&write(&dir, "heads.bin", &bad))).contains("does not describe a model"));
    bad[12..16].copy_from_slice(&0i32.to_le_bytes());
    assert!(err_text(llama2c::read(&write(&dir, "zero.bin", &bad))).contains("does not describe a model"));
    // Text and random bytes are refused without panicking.
    let text = b"Hello, this is not a llama2.c checkpoint at all, just some text.\n".repeat(10);
    assert!(llama2c::read(&write(&dir, "text.bin", &text)).is_err());
    let mut rng = Rng(12345);
    for n in [7usize, 28, 100, 256, 1000, 4096] {
        let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        assert!(llama2c::read(&write(&dir, "junk.bin", &junk)).is_err());
        // Plausible small headers with random dimensions.
        let mut junk = Vec::new();
        for _ in 0..7 {
            junk.extend_from_slice(&((rng.next() % 64) as i32 - 4).to_le_bytes());
        }
        junk.resize(28 + n, 0);
        let _ = llama2c::read(&write(&dir, "junk.bin", &junk));
    }
    // Huge dimensions must not overflow.
    let mut huge = Vec::new();
    for v in [1 << 30, i32::MAX, i32::MAX, 2, 2, i32::MIN + 1, i32::MAX] {
        huge.extend_from_slice(&v.to_le_bytes());
    }
    assert!(err_text(llama2c::read(&write(&dir, "huge.bin", &huge))).contains("truncated"));
}

#[test]
fn tokenizer_lookup() {
    let dir = TempDir::new("tok");
    let (bytes, _) = checkpoint(TINY, true, 0, 11);
    let model = write(&dir, "stories.bin", &bytes);
    let beside = dir.0.join("tokenizer.bin");
    assert_eq!(llama2c::tokenizer_path(&model, None), beside);

    // Missing: the error says where it looked.
    let e = err_text(llama2c::load(&model, None));
    assert!(e.contains(&beside.display().to_string()), "{e}");
    let elsewhere = dir.0.join("sub/tok.bin");
    let e = err_text(llama2c::load(&model, Some(&elsewhere)));
    assert!(e.contains(&elsewhere.display().to_string()), "{e}");
    // The model loader sends a non-GGUF file here.
    let e = err_text(bushu::model::loader::load(&model));
    assert!(e.contains("tokenizer.bin"), "{e}");

    std::fs::write(&beside, tokenizer_bin(TINY.vocab)).unwrap();
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    std::fs::write(&elsewhere, tokenizer_bin(TINY.vocab)).unwrap();
    for tok in [None, Some(elsewhere.as_path())] {
        let path = llama2c::tokenizer_path(&model, tok);
        match Tokenizer::from_llama2c(&path, TINY.vocab) {
            Ok(_) => {
                let mf = llama2c::load(&model, tok).unwrap();
                assert_eq!(mf.format, "llama2.c");
                assert_eq!(mf.name.as_deref(), Some("stories"));
                assert_eq!(mf.config.vocab_size, TINY.vocab);
                assert_eq!(mf.file_bytes, bytes.len() as u64);
                // run.c stops on BOS, which separates training documents.
                assert!(mf.eos_ids.contains(&1), "{:?}", mf.eos_ids);
                assert!(!mf.tensors.contains_key("output.weight"));
            }
            // Until the tokenizer exists, load fails on it.
            Err(_) => assert!(err_text(llama2c::load(&model, tok)).contains("tokenizer")),
        }
    }
}

#[test]
fn header_is_read_alone() {
    let (bytes, _) = checkpoint(TINY, false, 0, 1);
    let (h, start) = llama2c::parse_header(&bytes).unwrap();
    assert_eq!(start, 28);
    assert_eq!(
        (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads),
        (16, 40, 2, 4, 2)
    );
    assert_eq!(
        (h.vocab_size, h.seq_len, h.shared_classifier, h.version),
        (32, 8, false, 0)
    );
    assert!(llama2c::parse_header(Path::new("x").to_str().unwrap().as_bytes()).is_err());
}
