//! What a distilled draft needs beyond plain distillation: self-distillation data (the teacher's own
//! greedy text, generated in bushu's batching engine, against single-sequence greedy generation),
//! its caching and its place in the training stream; `--tokens 0` (the layer-truncated, untrained
//! teacher — the undistilled baseline), checked tensor by tensor against the teacher's file; and
//! `--freeze-embeddings`, whose hand-carried gradient must be plain autograd's. Small Shakespeare
//! models as teachers; each test runs in seconds.

mod common;
use common::{distill_cli, shared, tmpdir};

use bushu::generate::{generate, GenerateOptions};
use bushu::model::{load, Logits, Model};
use bushu::sampling::SamplingParams;
use bushu_train::distill::{batch_grads, batch_loss, distill, read_data, DistillOptions, Init, Quiet, Trainee};
use bushu_train::selfgen;
use bushu_train::student::{is_embedding, Student, StudentConfig};
use bushu_train::teacher::{TeacherCache, Windows};
use std::path::{Path, PathBuf};

fn expert() -> PathBuf {
    shared("models/shakespeare/shakespeare-expert-f16.gguf")
}

fn amateur() -> PathBuf {
    shared("models/shakespeare/shakespeare-amateur-f16.gguf")
}

/// `bytes` bytes of the Shakespeare training text from `skip`, written to `dir/name`.
fn text(skip: usize, bytes: usize, dir: &Path, name: &str) -> PathBuf {
    let t = std::fs::read_to_string(shared("testdata/shakespeare/train.txt")).unwrap();
    let (mut a, mut b) = (skip, skip + bytes);
    while !t.is_char_boundary(a) {
        a += 1;
    }
    while !t.is_char_boundary(b) {
        b += 1;
    }
    let p = dir.join(name);
    std::fs::write(&p, &t[a..b]).unwrap();
    p
}

#[test]
fn engine_generation_is_the_teachers_greedy_text() {
    let file = load(&expert()).unwrap();
    let plain = vec![
        "ROMEO:".to_string(),
        "First Citizen:\nBefore we proceed any further".to_string(),
    ];
    let chat = vec!["Speak to me of the sea.".to_string()];
    let p = selfgen::prompts(&file, &plain, &chat).unwrap();
    assert_eq!(p.prompts.len(), 3);
    // Plain openings are tokenized as written, with BOS; the instruction in the model's template (the
    // expert has none: ChatML), its generation prompt last.
    assert_eq!(p.prompts[0], file.tokenizer.encode("ROMEO:", true).unwrap());
    let chatml = "<|im_start|>user\nSpeak to me of the sea.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(p.prompts[2], file.tokenizer.encode(chatml, false).unwrap());
    let n = 20;
    let seqs = selfgen::generate_all(Model::new(&file).unwrap(), &file.eos_ids, &p, n, 2).unwrap();
    assert_eq!(seqs.len(), 3);
    // The reference: one sequence at a time, bushu's plain greedy generation.
    let model = Model::new(&file).unwrap();
    for (seq, (prompt, stops)) in seqs.iter().zip(p.prompts.iter().zip(&p.stops)) {
        let mut eos = file.eos_ids.clone();
        eos.extend(stops);
        let mut state = model.new_state(prompt.len() + n + 1);
        let opts = GenerateOptions::new(n, SamplingParams::greedy(), eos.clone());
        let g = generate(&model, &file.tokenizer, &mut state, prompt, &opts, &mut |_| {}).unwrap();
        assert_eq!(&seq[..prompt.len()], &prompt[..], "the sequence starts with its prompt");
        // Both keep the token that stopped them (a document's end is worth learning).
        assert!(!g.tokens.is_empty());
        assert_eq!(
            &seq[prompt.len()..],
            &g.tokens[..],
            "engine greedy text vs plain greedy text"
        );
    }
}

fn small(dir: &Path, data: PathBuf, out: &str) -> DistillOptions {
    let mut o = DistillOptions::new(amateur(), vec![data], dir.join(out));
    o.student_layers = 1;
    o.student_dim = Some(32);
    o.student_heads = Some(2);
    o.student_kv_heads = Some(1);
    o.student_ffn = Some(64);
    o.ctx = 32;
    o.batch = 4;
    o.tokens = 4 * 4 * 32;
    o.top_k = 16;
    o
}

#[test]
fn generated_text_joins_the_training_stream_and_is_cached() {
    let dir = tmpdir("stream");
    let data = text(0, 3_000, &dir, "train.txt");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "ROMEO:\n\nJULIET:\nKING HENRY:\n  \nHAMLET:\n").unwrap();
    let mut o = small(&dir, data.clone(), "a.gguf");
    o.generate_prompts = vec![prompts.clone()];
    o.generate_tokens = 24;
    let r1 = distill(&o, &mut Quiet).unwrap();
    assert_eq!(r1.generated_sequences, 4, "one sequence per non-blank line");
    assert!(!r1.generated_cached);
    assert!(r1.generated_tokens > 0 && r1.generated_tokens <= 4 * 24);
    // The stream is the data files' tokens followed by the generated sequences (prompt + text).
    let file = load(&amateur()).unwrap();
    let file_tokens = read_data(&file, std::slice::from_ref(&data)).unwrap().len();
    let cache = dir.join("a.gguf.generated");
    let key_prompts = selfgen::prompts(
        &file,
        &selfgen::read_lines(std::slice::from_ref(&prompts), "--generate-prompts").unwrap(),
        &[],
    )
    .unwrap();
    let key = selfgen::gen_key(&amateur(), &key_prompts, 24).unwrap();
    let seqs = selfgen::load(&cache, key)
        .unwrap()
        .expect("the generated sequences are cached");
    let seq_tokens: usize = seqs.iter().map(Vec::len).sum();
    assert_eq!(r1.data_tokens, file_tokens + seq_tokens);
    assert_eq!(
        seq_tokens - key_prompts.prompts.iter().map(Vec::len).sum::<usize>(),
        r1.generated_tokens
    );
    // Another budget is another key: the cache is not taken for it.
    assert!(
        selfgen::load(&cache, selfgen::gen_key(&amateur(), &key_prompts, 25).unwrap())
            .unwrap()
            .is_none()
    );
    // A second run reads the cache and trains the same student, bit for bit.
    std::fs::create_dir_all(dir.join("2")).unwrap();
    let mut o2 = o.clone();
    o2.out = dir.join("2/a.gguf");
    o2.generate_cache = Some(cache.clone());
    let r2 = distill(&o2, &mut Quiet).unwrap();
    assert!(r2.generated_cached);
    assert_eq!(r2.data_tokens, r1.data_tokens);
    assert!(std::fs::read(&o.out).unwrap() == std::fs::read(&o2.out).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokens_zero_writes_the_layer_truncated_teacher() {
    let dir = tmpdir("trunc");
    let data = text(0, 8_000, &dir, "train.txt");
    let out = dir.join("trunc.gguf");
    let teacher = expert();
    let (code, err) = distill_cli(&[
        "--teacher",
        teacher.to_str().unwrap(),
        "--init",
        "teacher",
        "--student-layers",
        "3",
        "--tokens",
        "0",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !dir.join("trunc.gguf.teacher-cache").exists(),
        "the teacher must not run"
    );
    let (s, t) = (load(&out).unwrap(), load(&expert()).unwrap());
    assert_eq!(s.config.n_layers, 3);
    assert_eq!(
        s.config.max_ctx, t.config.max_ctx,
        "the file declares the teacher's context"
    );
    // Evenly spaced, first and last included: the expert's layers 0, 2 and 5.
    for (sl, tl) in [(0, 0), (1, 2), (2, 5)] {
        for part in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let a = s.tensors[&format!("blk.{sl}.{part}.weight")].to_f32();
            let b = t.tensors[&format!("blk.{tl}.{part}.weight")].to_f32();
            assert!(a == b, "student layer {sl} {part} is not the teacher's layer {tl}");
        }
    }
    for name in ["token_embd.weight", "output_norm.weight", "output.weight"] {
        assert!(s.tensors[name].to_f32() == t.tensors[name].to_f32(), "{name}");
    }
    // And it runs in bushu.
    let m = Model::new(&s).unwrap();
    let ids = s.tokenizer.encode("ROMEO: But soft", true).unwrap();
    let logits = m.forward(&mut m.new_state(16), &ids, Logits::Last).unwrap().to_vec();
    assert!(logits.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frozen_embeddings_get_autograds_gradients_by_hand_and_stay_the_teachers() {
    let dir = tmpdir("frozen");
    let file = load(&amateur()).unwrap();
    let c = &file.config;
    let config = StudentConfig {
        vocab: c.vocab_size,
        dim: c.dim,
        layers: 1,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        ffn: c.ffn_dim,
        ctx: 24,
        rope_theta: c.rope_theta,
        rms_eps: c.rms_eps,
    };
    let data = read_data(&file, &[text(50_000, 4_000, &dir, "train.txt")]).unwrap();
    let windows = Windows::sample(&data, 24, 2, file.tokenizer.bos_id(), 3).unwrap();
    let teacher = Model::new(&load(&expert()).unwrap()).unwrap();
    let cache = TeacherCache::build(&teacher, &windows, 16, 2.0, &[3], |_, _| {}).unwrap();
    let mut o = DistillOptions::new(expert(), vec![], dir.join("x.gguf"));
    o.alpha = 0.6;
    o.temperature = 2.0;
    o.feature_layers = vec![(0, 3)];
    o.feature_weight = 0.5;
    let phi = candle_core::Var::from_tensor(
        &candle_core::Tensor::randn(0f32, 0.05, (288, c.dim), &candle_core::Device::Cpu).unwrap(),
    )
    .unwrap();
    let mk = |frozen: bool| {
        let mut s = Student::from_teacher(config.clone(), &file, &[1]).unwrap();
        s.frozen_embeddings = frozen;
        Trainee {
            student: s,
            phi: vec![phi.clone()],
        }
    };
    let (plain, frozen) = (mk(false), mk(true));
    let (loss, log_plain) = batch_loss(&plain, &o, &windows, Some(&cache), 0, 2).unwrap();
    let g_plain = loss.backward().unwrap();
    let (g_frozen, log_frozen) = batch_grads(&frozen, &o, &windows, Some(&cache), 0, 2).unwrap();
    assert!(
        (log_plain.loss - log_frozen.loss).abs() <= 1e-5 * log_plain.loss.abs(),
        "{log_plain:?} vs {log_frozen:?}"
    );
    assert!(log_frozen.kd > 0.0 && log_frozen.feature > 0.0);
    let frozen_vars = frozen.student.vars();
    assert_eq!(
        frozen_vars.len(),
        frozen.student.params.len() - 2,
        "embedding and head are not trained"
    );
    let mut checked = 0;
    for ((name, pv), (_, fv)) in plain.student.params.iter().zip(&frozen.student.params) {
        if is_embedding(name) {
            assert!(g_frozen.get(fv.as_tensor()).is_none(), "{name} got a gradient");
            continue;
        }
        let a: Vec<f32> = g_plain
            .get(pv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = g_frozen
            .get(fv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            scale > 0.0 && diff <= 1e-4 * scale + 1e-7,
            "{name}: max diff {diff}, scale {scale}"
        );
        checked += 1;
    }
    assert_eq!(checked, 1 + 9);
    let (a, b): (Vec<f32>, Vec<f32>) = (
        g_plain
            .get(phi.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
        g_frozen
            .get(phi.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
    );
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5), "Φ's gradient");

    // A training run keeps the teacher's embedding and head and changes the layers.
    let mut o = DistillOptions::new(amateur(), vec![text(0, 5_000, &dir, "t.txt")], dir.join("f.gguf"));
    o.init = Init::Teacher;
    o.student_layers = 1;
    o.freeze_embeddings = true;
    o.ctx = 32;
    o.batch = 2;
    o.tokens = 3 * 2 * 32;
    o.lr = 1e-2;
    let r = distill(&o, &mut Quiet).unwrap();
    assert_eq!(r.steps, 3);
    let s = load(&o.out).unwrap();
    for name in ["token_embd.weight", "output.weight"] {
        assert!(s.tensors[name].to_f32() == file.tensors[name].to_f32(), "{name} moved");
    }
    // The one layer is the amateur's last (layer 1 of 0..1), trained.
    assert!(s.tensors["blk.0.ffn_up.weight"].to_f32() != file.tensors["blk.1.ffn_up.weight"].to_f32());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_self_distillation_input_is_one_clear_line() {
    let dir = tmpdir("bad");
    let data = text(0, 3_000, &dir, "train.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let prompts = dir.join("p.txt");
    std::fs::write(&prompts, "ROMEO:\n").unwrap();
    let teacher = amateur();
    let (t, d, e, p) = (
        teacher.to_str().unwrap(),
        data.to_str().unwrap(),
        empty.to_str().unwrap(),
        prompts.to_str().unwrap(),
    );
    let out = dir.join("s.gguf");
    let out = out.to_str().unwrap();
    let base = [
        "--teacher",
        t,
        "--data",
        d,
        "--out",
        out,
        "--student-layers",
        "1",
        "--ctx",
        "32",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--generate-prompts", e], "has no prompt"),
        (vec!["--generate-chat", "/nonexistent/prompts.txt"], "cannot read"),
        (vec!["--generate-prompts", p, "--tokens", "0"], "--tokens 0"),
        (vec!["--generate-prompts", p, "--generate-tokens", "0"], "at least 1"),
        (vec!["--freeze-embeddings"], "--init teacher"),
    ];
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend(extra.iter());
        let (code, err) = distill_cli(&args);
        assert_ne!(code, 0, "{extra:?} succeeded");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {err}");
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(want),
            "{extra:?}: {err}"
        );
        assert!(!Path::new(out).exists(), "{extra:?} wrote a student");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
