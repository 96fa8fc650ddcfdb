//! `bushu quantize` files in llama.cpp and llama-quantize files in bushu: greedy tokens agree.
//!
//! The fixture (tests/fixtures/quant/llamacpp-greedy.json, made by scripts/refs/llamacpp_greedy.py) holds,
//! per type, the sha256 of the file `bushu quantize` wrote and llama.cpp's greedy tokens on it (llama-server,
//! checked against llama-simple), plus llama.cpp's tokens on the file llama-quantize wrote for the same
//! container. Here the file is written again and must hash the same (so it is the file llama.cpp ran), and
//! bushu's greedy tokens on it (`--precision fast`: 8-bit activation blocks, like llama.cpp) must equal
//! llama.cpp's until the first step where either side's top-2 logprob gap is under [`NEAR_TIE`]; a
//! divergence anywhere else fails. llama-quantize's files were bit-identical (tensor bytes) to a bushu file
//! of the recorded `equivalent_bushu_args`, which stands in for them here.

mod common;
use common::{fixture, read_json, shared, u32s};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Top-1 minus top-2 logprob under which the two engines' rounding may legitimately pick different tokens.
const NEAR_TIE: f64 = 0.05;

fn bushu() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    // GPTQ's calibration forward pass is the one SIMD-dependent step of quantization; the fixture was
    // made with the scalar kernels, which give the same bytes on every machine.
    c.env("BUSHU_SIMD", "scalar");
    c
}

fn quantize(args: &[Value], out: &Path) -> PathBuf {
    let shared_dir = shared("").display().to_string();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.as_str().unwrap().replace("{shared}/", &shared_dir))
        .collect();
    let src = shared("models/shakespeare/shakespeare-expert-f16.gguf");
    let o = bushu()
        .arg("quantize")
        .arg(&src)
        .arg(out)
        .args(&args)
        .args(["-t", "2", "-q"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bushu quantize {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_path_buf()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

struct Greedy {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    gaps: Vec<f64>,
}

fn bushu_greedy(model: &Path, prompt: &str, n: usize) -> Greedy {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bushu"));
    let o = c
        .args([
            "run",
            "--precision",
            "fast",
            "--temperature",
            "0",
            "--json",
            "--logprobs",
            "2",
            "-t",
            "2",
            "-n",
        ])
        .arg(n.to_string())
        .arg("-m")
        .arg(model)
        .arg("-p")
        .arg(prompt)
        .output()
        .unwrap();
    assert!(o.status.success(), "bushu run: {}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gaps = v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0]["logprob"].as_f64().unwrap() - s[1]["logprob"].as_f64().unwrap())
        .collect();
    Greedy {
        prompt: u32s(&v["prompt_tokens"]),
        tokens: u32s(&v["tokens"]),
        gaps,
    }
}

/// Leading steps where the tokens agree; `Err` if they part where neither side has a near-tie.
fn agreement(ours: &Greedy, theirs: &Value) -> Result<(usize, Option<String>), String> {
    let (toks, gaps) = (u32s(&theirs["tokens"]), common::f32s(&theirs["gaps"]));
    for (i, &t) in toks.iter().enumerate() {
        let Some(&o) = ours.tokens.get(i) else {
            return Err(format!("bushu stopped after {i} tokens, llama.cpp went on with {t}"));
        };
        if o != t {
            let (g_lc, g_b) = (gaps[i] as f64, ours.gaps[i]);
            if g_lc < NEAR_TIE || g_b < NEAR_TIE {
                return Ok((
                    i,
                    Some(format!("near-tie at step {i}: gap llama.cpp {g_lc:.4}, bushu {g_b:.4}")),
                ));
            }
            return Err(format!(
                "step {i}: bushu {o}, llama.cpp {t}, top-2 gaps llama.cpp {g_lc:.4}, bushu {g_b:.4} (no near-tie)"
            ));
        }
    }
    Ok((toks.len(), None))
}

fn compare_runs(what: &str, file: &Path, refs: &Value, runs: &Value) -> usize {
    let n = refs["n_predict"].as_u64().unwrap() as usize;
    let mut total = 0;
    for (p, run) in refs["prompts"].as_array().unwrap().iter().zip(runs.as_array().unwrap()) {
        let text = p["text"].as_str().unwrap();
        let ours = bushu_greedy(file, text, n);
        assert_eq!(ours.prompt, u32s(&p["ids"]), "{what}: prompt tokens");
        match agreement(&ours, run) {
            Ok((k, tie)) => {
                eprintln!("{what} {text:?}: {k}/{n} tokens agree {}", tie.unwrap_or_default());
                total += k;
            }
            Err(e) => panic!("{what}, prompt {text:?}: {e}"),
        }
    }
    total
}

fn check_case(name: &str) {
    let refs = read_json(&fixture("quant/llamacpp-greedy.json"));
    let case = refs["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the fixture"));
    let dir = common::TempDir::new(&format!("quant-lcpp-{name}"));

    // The file llama.cpp ran is the file bushu writes today.
    let ours = quantize(
        case["bushu_args"].as_array().unwrap(),
        &dir.0.join(format!("{name}.gguf")),
    );
    assert_eq!(
        sha256(&ours),
        case["sha256"].as_str().unwrap(),
        "{name}: bushu's file changed"
    );
    let k1 = compare_runs(&format!("{name} (bushu file)"), &ours, &refs, &case["llamacpp"]);

    // llama-quantize's file of the same container: bit-identical tensors to bushu's equivalent.
    let lq = &case["llama_quantize"];
    assert_eq!(
        lq["tensors_differing_from_equivalent"].as_array().unwrap().len(),
        0,
        "{name}: llama-quantize's file is not reproduced by bushu"
    );
    let equiv = if lq["equivalent_bushu_args"] == case["bushu_args"] {
        ours.clone()
    } else {
        quantize(
            lq["equivalent_bushu_args"].as_array().unwrap(),
            &dir.0.join(format!("{name}-equiv.gguf")),
        )
    };
    assert_eq!(
        sha256(&equiv),
        lq["equivalent_sha256"].as_str().unwrap(),
        "{name}: equivalent file"
    );
    let k2 = compare_runs(&format!("{name} (llama-quantize file)"), &equiv, &refs, &lq["llamacpp"]);
    eprintln!("{name}: {k1} and {k2} tokens agree before a near-tie");
}

#[test]
fn q8_0_greedy_matches_llamacpp() {
    check_case("q8_0");
}

#[test]
fn q4_0_greedy_matches_llamacpp() {
    check_case("q4_0");
}

#[test]
fn q4_k_greedy_matches_llamacpp() {
    check_case("q4_k");
}

#[test]
fn q6_k_greedy_matches_llamacpp() {
    check_case("q6_k");
}

#[test]
fn int4_asym_g32_greedy_matches_llamacpp() {
    check_case("int4-asym-g32");
}

#[test]
fn gptq_int4_g128_greedy_matches_llamacpp() {
    check_case("gptq-int4-g128");
}
