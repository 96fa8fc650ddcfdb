//! `bushu bench`: the llama-bench-style JSON of one sequence and of a batch, and its argument errors.

mod common;

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    let model = common::shared("models/tiny-llama-q8_0.gguf");
    Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["bench", "-m", model.to_str().unwrap(), "-t", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn rows(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn one_sequence_and_a_batch() {
    for (batch, label) in [("1", ["pp16", "tg8"]), ("3", ["pp16 x3", "tg8 x3"])] {
        let r = rows(&bench(&["-p", "16", "-n", "8", "-b", batch, "-r", "2", "--json"]));
        assert_eq!(r.len(), 2);
        for (row, label) in r.iter().zip(label) {
            assert_eq!(row["test"], label);
            assert_eq!(row["n_batch"].as_u64(), Some(batch.parse().unwrap()));
            assert_eq!(row["samples_ts"].as_array().unwrap().len(), 2);
            assert!(row["avg_ts"].as_f64().unwrap() > 0.0);
            for k in [
                "n_prompt",
                "n_gen",
                "n_threads",
                "stddev_ts",
                "model_bytes",
                "bandwidth_gbs",
                "load_ms",
            ] {
                assert!(!row[k].is_null(), "{k} missing");
            }
        }
        assert_eq!(r[0]["n_prompt"], 16);
        assert_eq!(r[1]["n_gen"], 8);
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for (args, msg) in [
        (&["-b", "0"][..], "--batch must be at least 1"),
        (&["-r", "0"][..], "--repetitions must be at least 1"),
        (&["-p", "0", "-n", "0"][..], "nothing to run"),
        (&["-p", "1000000"][..], "exceeds the model's"),
        (&["-b", "2", "-p", "600000", "-n", "600000"][..], "exceeds the model's"),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// `--verify`: one row per size, times per pass, t(1) / t(1) = 1; bad sizes and depths are refused.
#[test]
fn verification_cost() {
    let r = rows(&bench(&["--verify", "1,3,8", "--depth", "32", "-r", "2", "--json"]));
    let ks: Vec<u64> = r.iter().map(|x| x["k"].as_u64().unwrap()).collect();
    assert_eq!(ks, [1, 3, 8]);
    assert_eq!(r[0]["test"], "verify1@d32");
    assert_eq!(r[0]["t_k_over_t_1"].as_f64(), Some(1.0));
    assert!(r.iter().all(|x| x["avg_ms"].as_f64().unwrap() > 0.0));
    for bad in [&["--verify", "0,2"][..], &["--verify", "4", "--depth", "100000"]] {
        let out = bench(bad);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--verify") || err.contains("--depth"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// The model column names the layers' type, as llama-bench does: the tiny Q4_0 file keeps its large
/// embedding and classifier in other types (most of its bytes), yet is a Q4_0 model.
#[test]
fn model_type_is_the_layers_type() {
    for (file, want) in [
        ("tiny-llama-q4_0.gguf", "llama q4_0"),
        ("tiny-llama-q8_0.gguf", "llama q8_0"),
    ] {
        let model = common::shared(&format!("models/{file}"));
        let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
            .args([
                "bench",
                "-m",
                model.to_str().unwrap(),
                "-t",
                "1",
                "-p",
                "4",
                "-n",
                "0",
                "-r",
                "1",
                "--json",
            ])
            .output()
            .unwrap();
        let r = rows(&out);
        assert_eq!(r[0]["model_type"].as_str().unwrap().to_lowercase(), want, "{file}");
    }
}
