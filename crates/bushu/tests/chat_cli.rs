//! `bushu chat`: one message per line when stdin is not a terminal, `/reset`, `/exit`, `/help`, `/system`,
//! `/save`, a trailing `\` continuing a message, the precision banner, KV-cache reuse across turns (and that it
//! answers as a full re-prefill would), Ctrl-C stopping an answer without leaving the program (finish
//! reason `Abort`), and the README's question answered right with no flags. The tiny random-weight model runs everywhere; the SmolLM2 tests need
//! `bushu pull` (skipped with a message otherwise).

mod common;

use bushu::chat::session::{template_for, ChatSession, CHATML};
use bushu::chat::Message;
use bushu::formats::gguf::Value;
use bushu::generate::{generate, GenerateOptions};
use bushu::model::{load, Model};
use bushu::pull::{check_cached, find_model, models_dir, CacheStatus, DEFAULT_MODEL};
use bushu::sampling::SamplingParams;
use kernels::Precision;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tiny model with a ChatML template, in a directory removed when the returned guard drops.
fn tiny_chat_model() -> (common::TempDir, PathBuf) {
    let mut w = common::tiny_llama_gguf();
    w.set("tokenizer.chat_template", Value::String(CHATML.into()));
    w.set("llama.context_length", Value::U32(1024));
    let dir = common::TempDir::new("chat-tiny");
    let p = dir.0.join("tiny-chat.gguf");
    w.write(&p).unwrap();
    (dir, p)
}

fn smollm2() -> Option<PathBuf> {
    let spec = find_model(DEFAULT_MODEL).unwrap();
    let dir = models_dir();
    if check_cached(&spec, &dir).ok() == Some(CacheStatus::Ok) {
        Some(dir.join(spec.file_name))
    } else {
        eprintln!(
            "SKIPPED: SmolLM2-135M is not in the model cache {}; run `bushu pull`",
            dir.display()
        );
        None
    }
}

/// Turn statistics lines of `--verbose`: (reused, new) prompt tokens.
fn turn_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter(|l| l.contains("prompt tokens reused"))
        .map(|l| {
            let nums: Vec<usize> = l
                .trim_start_matches('[')
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(2)
                .map(|s| s.parse().unwrap())
                .collect();
            (nums[0], nums[1])
        })
        .collect()
}

#[test]
fn piped_lines_reset_exit_and_cache_reuse() {
    let (_dir, model) = tiny_chat_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "chat",
            "-m",
            model.to_str().unwrap(),
            "--system",
            "Be brief.",
            "-n",
            "6",
            "--verbose",
            "-t",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello there\n\nsecond message\n/reset\nthird\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("precision wide"),
        "the banner names the precision path: {stderr}"
    );
    assert!(stderr.contains("[conversation reset]"), "{stderr}");
    let stats = turn_stats(&stderr);
    assert_eq!(stats.len(), 3, "three answers, the line after /exit unread: {stderr}");
    assert_eq!(stats[0].0, 0, "nothing cached on the first turn");
    // The second turn reuses the whole first exchange except the re-tokenized answer's tail at most.
    assert!(
        stats[1].0 > stats[0].1,
        "turn 2 reused only {} tokens: {stderr}",
        stats[1].0
    );
    // After /reset only the system prompt's prefix is shared.
    assert!(stats[2].0 > 0 && stats[2].0 <= stats[0].1, "{stats:?}");
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 3);

    let out = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args(["chat", "-m", model.to_str().unwrap(), "--exact-activations", "-n", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("precision exact"));
}

#[test]
fn second_turn_equals_full_prefill() {
    let Some(path) = smollm2() else { return };
    let file = load(&path).unwrap();
    let mut model = Model::new(&file).unwrap();
    model.precision = Precision::Exact;
    let (template, stops, _) = template_for(&file).unwrap();
    let tok = &file.tokenizer;
    let opts = GenerateOptions::new(24, SamplingParams::greedy(), stops.clone());
    let mut s = ChatSession::new(&model, tok, template, stops.clone(), 1024, None).unwrap();
    let never = AtomicBool::new(false);
    let t1 = s
        .reply("What is the capital of France?", &opts, &never, &mut |_| {})
        .unwrap();
    let t2 = s.reply("And of Germany?", &opts, &never, &mut |_| {}).unwrap();
    assert_eq!(t1.text, "The capital of France is Paris.");
    assert!(t2.reused_tokens >= 37 + t1.generated_tokens - 1, "{t2:?}");
    // The same conversation prefilled at once from an empty cache.
    let (template, _, _) = template_for(&file).unwrap();
    let msgs = [
        Message::new("user", "What is the capital of France?"),
        Message::new("assistant", &t1.text),
        Message::new("user", "And of Germany?"),
    ];
    let ids = tok
        .encode_with(&template.render(&msgs, true).unwrap(), false, true)
        .unwrap();
    let mut st = model.new_state(1024);
    let g = generate(&model, tok, &mut st, &ids, &opts, &mut |_| {}).unwrap();
    assert_eq!(t2.text, g.text);
    eprintln!(
        "turn 2 ({} reused, {} new tokens): {:?}",
        t2.reused_tokens, t2.new_tokens, t2.text
    );
}

#[test]
fn ctrl_c_stops_the_answer_not_the_program() {
    let Some(path) = smollm2() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .args([
            "chat",
            "-m",
            path.to_str().unwrap(),
            "-n",
            "3000",
            "--ctx",
            "4096",
            "--verbose",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Count from 1 to 1000, separated by commas.\n")
        .unwrap();
    stdin.flush().unwrap();
    // Wait for the answer to start streaming, then interrupt it.
    let mut stdout = child.stdout.take().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen_r = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            seen_r.store(all.len(), Ordering::SeqCst);
        }
        all
    });
    let mut stderr = child.stderr.take().unwrap();
    let t = Instant::now();
    while seen.load(Ordering::SeqCst) < 40 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.load(Ordering::SeqCst) >= 40, "the answer did not start streaming");
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    stdin.write_all(b"What is the capital of France?\n/exit\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(status.success(), "the program survives Ctrl-C: {status:?} {err}");
    assert!(err.contains("[stopped]"), "{err}");
    let gen: Vec<usize> = err
        .lines()
        .filter(|l| l.contains("generated at"))
        .map(|l| {
            l.split(';')
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(gen.len(), 2, "two answers: {err}");
    // The cut answer's finish is the interrupt's, the next one the model's own end of turn.
    let finishes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("generated at"))
        .map(|l| l.rsplit("; ").next().unwrap().trim_end_matches(']'))
        .collect();
    assert_eq!(finishes, ["Abort", "Stop"], "{err}");
    assert!(gen[0] < 3000, "the first answer was cut short: {err}");
    assert!(out.contains('2') && out.contains("Paris"), "{out}");
    eprintln!(
        "interrupted after {} tokens; then: {:?}",
        gen[0],
        out.lines().last().unwrap_or("")
    );
}

/// Runs `bushu chat ARGS` with `input` on stdin: (success, stdout, stderr).
fn chat_with(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bushu"))
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_system_save_and_continued_lines() {
    let (_dir, model) = tiny_chat_model();
    let saved = _dir.0.join("conversation.json");
    let input = format!(
        "/help\n/system\n/system You are terse.\n/system\nfirst line\\\nsecond line\n/nonsense\n/save {}\n/save\n",
        saved.display()
    );
    let (ok, _, err) = chat_with(&["-m", model.to_str().unwrap(), "-n", "3", "-t", "1"], &input);
    assert!(ok, "{err}");
    assert!(
        err.contains("/save FILE") && err.contains("continues the message"),
        "/help: {err}"
    );
    assert!(err.contains("[no system prompt set"), "{err}");
    assert!(err.contains("[system prompt: \"You are terse.\"]"), "{err}");
    assert!(err.contains("unknown command /nonsense"), "{err}");
    assert!(err.contains("/save needs a file name"), "{err}");
    let msgs: Vec<Message> = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert_eq!(msgs[0], Message::new("system", "You are terse."));
    // The two lines joined by the trailing backslash: one message, its line break kept.
    assert_eq!(msgs[1], Message::new("user", "first line\nsecond line"));
    assert_eq!(msgs[2].role, "assistant");
}

/// The README's first command: no flags, the default model, the right answer (the exact model's).
#[test]
fn default_chat_answers_paris() {
    let Some(path) = smollm2() else { return };
    let _ = path;
    let (ok, out, err) = chat_with(&[], "What is the capital of France?\n");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.", "{err}");
}
