//! llama.cpp's tokenizer test vectors: every text of `testdata/vocab/X.gguf.inp` must encode to the ids of
//! the same line of `X.gguf.out` (no BOS) and decode back to the text.

use bushu::formats::gguf::Gguf;
use bushu::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn load(name: &str) -> Tokenizer {
    let p = shared().join("testdata/vocab").join(name);
    let g = Gguf::open(&p).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

/// Texts between separator lines, without the newline preceding each separator.
fn read_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = shared().join("testdata/vocab");
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
    let texts: Vec<String> = inp.split("\n__ggml_vocab_test__\n").map(str::to_owned).collect();
    // The file ends with a separator line: the last split element is empty trailing text.
    let texts = &texts[..texts.len() - 1];
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: .inp and .out disagree on the number of cases"
    );
    texts.iter().cloned().zip(ids).collect()
}

fn check(name: &str) {
    let t0 = Instant::now();
    let tok = load(name);
    let load_time = t0.elapsed();
    let cases = read_cases(name);
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false).unwrap();
        if &got != want {
            failures.push(format!("encode {text:?}\n   expected {want:?}\n   got      {got:?}"));
            continue;
        }
        let back = tok.decode(want);
        if &back != text {
            failures.push(format!("decode {want:?}\n   expected {text:?}\n   got      {back:?}"));
        }
    }
    let passed = cases.len() - failures.len();
    eprintln!("{name}: {passed}/{} cases pass (load {load_time:?})", cases.len());
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm() {
    check("ggml-vocab-llama-spm.gguf");
}

#[test]
fn llama_bpe() {
    check("ggml-vocab-llama-bpe.gguf");
}

#[test]
fn qwen2() {
    check("ggml-vocab-qwen2.gguf");
}

#[test]
fn gpt2() {
    check("ggml-vocab-gpt-2.gguf");
}

/// Special tokens written in the text are single ids when parsing specials, plain text otherwise.
#[test]
fn special_tokens_in_text() {
    let q = load("ggml-vocab-qwen2.gguf");
    let im_start = q.token_to_id("<|im_start|>").unwrap();
    let im_end = q.token_to_id("<|im_end|>").unwrap();
    let ids = q.encode("<|im_start|>user\nHi<|im_end|>\n", false).unwrap();
    assert_eq!(ids[0], im_start);
    assert!(ids.contains(&im_end));
    assert_eq!(q.decode_with_special(&ids), "<|im_start|>user\nHi<|im_end|>\n");
    let plain = q.encode_with("<|im_start|>", false, false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&im_start));
    assert!(q.eos_ids().contains(&im_end), "<|im_end|> ends a turn");

    let s = load("ggml-vocab-llama-spm.gguf");
    assert_eq!(s.bos_id(), Some(1));
    assert_eq!(s.eos_ids(), &[2]);
    let a = s.encode("<s>Hello</s>", false).unwrap();
    let b = s.encode("Hello", true).unwrap();
    assert_eq!(a[0], 1);
    assert_eq!(&a[..a.len() - 1], &b[..]);
    assert_eq!(*a.last().unwrap(), 2);
    assert_eq!(s.decode(&a), "Hello");
}

/// add_special follows llama.cpp's defaults: BOS for SentencePiece and Llama 3, nothing for GPT-2.
#[test]
fn bos_defaults() {
    let s = load("ggml-vocab-llama-spm.gguf");
    assert_eq!(s.encode("Hi", true).unwrap()[0], 1);
    let l3 = load("ggml-vocab-llama-bpe.gguf");
    assert_eq!(l3.encode("Hi", true).unwrap()[0], 128000);
    assert_eq!(l3.eos_ids()[0], 128001);
    let g = load("ggml-vocab-gpt-2.gguf");
    assert_eq!(g.encode("Hi", true).unwrap(), g.encode("Hi", false).unwrap());
    assert_eq!(s.encode("", true).unwrap(), vec![1]);
    assert!(s.encode("", false).unwrap().is_empty());
}

/// Encoding ~10k tokens of text takes milliseconds.
#[test]
fn speed() {
    let text = std::fs::read_to_string(shared().join("testdata/shakespeare/val.txt")).unwrap();
    let text = &text[..text.floor_char_boundary(60_000)];
    for name in [
        "ggml-vocab-llama-spm.gguf",
        "ggml-vocab-llama-bpe.gguf",
        "ggml-vocab-qwen2.gguf",
    ] {
        let tok = load(name);
        let t0 = Instant::now();
        let ids = tok.encode(text, false).unwrap();
        let dt = t0.elapsed();
        eprintln!("{name}: {} bytes -> {} tokens in {dt:?}", text.len(), ids.len());
        assert_eq!(tok.decode(&ids), text);
        assert!(
            dt.as_secs_f64() < 1.0,
            "{name}: encoding {} tokens took {dt:?}",
            ids.len()
        );
    }
}

/// Long runs of one character (one huge pre-token, one huge whitespace match) stay fast and round-trip.
#[test]
fn pathological_inputs() {
    let texts = [
        " ".repeat(50_000) + "x",
        "a".repeat(50_000),
        "\n".repeat(20_000) + &"\t ".repeat(10_000),
        "🦙".repeat(5_000),
        "1234567890".repeat(5_000),
    ];
    for name in [
        "ggml-vocab-llama-spm.gguf",
        "ggml-vocab-llama-bpe.gguf",
        "ggml-vocab-qwen2.gguf",
        "ggml-vocab-gpt-2.gguf",
    ] {
        let tok = load(name);
        for text in &texts {
            let t0 = Instant::now();
            let ids = tok.encode(text, false).unwrap();
            let dt = t0.elapsed();
            assert_eq!(&tok.decode(&ids), text, "{name}");
            assert!(dt.as_secs_f64() < 2.0, "{name}: {:?}… took {dt:?}", &text[..8]);
        }
    }
}
