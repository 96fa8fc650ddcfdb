//! How often a precision's greedy chat answer differs from the exact model's (issue 22): each prompt of a file
//! (one per line) is rendered with the model's chat template as `bushu chat` does, answered greedily for up
//! to `-n` tokens (to the first end-of-turn token) at every precision, and each answer is compared with the
//! `exact` one. Prints one line per differing answer (step of the first difference, the exact model's top-2
//! gap there) and a summary per precision: answers that differ, decode tokens/s.
//!
//! `cargo run --release --example precision_flips -- [--model M] [--prompts FILE] [-n 32] [--threads T]
//! [--precisions exact,wide,fast]` (defaults: the default model, bench/prompts/chat-prompts.txt).
//! Results: docs/PRECISION.md.

use anyhow::{bail, Context, Result};
use bushu::chat::session::template_for;
use bushu::chat::Message;
use bushu::model::llama::Logits;
use bushu::model::{load, Model, ModelOptions};
use kernels::Precision;
use std::time::Instant;

struct Answer {
    tokens: Vec<u32>,
    /// Top-2 logit gap at each step, in log-probability units.
    gaps: Vec<f32>,
    decode_s: f64,
    prefill_s: f64,
}

fn greedy(model: &Model, prompt: &[u32], n: usize, stops: &[u32]) -> Result<Answer> {
    let mut st = model.new_state(prompt.len() + n + 1);
    let t = Instant::now();
    let mut logits = model.forward(&mut st, prompt, Logits::Last)?.to_vec();
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (mut tokens, mut gaps) = (Vec::new(), Vec::new());
    for step in 0..n {
        let (mut best, mut second) = (0usize, usize::MAX);
        for i in 1..logits.len() {
            if logits[i] > logits[best] {
                second = best;
                best = i;
            } else if second == usize::MAX || logits[i] > logits[second] {
                second = i;
            }
        }
        tokens.push(best as u32);
        gaps.push(logits[best] - logits[second]);
        if stops.contains(&(best as u32)) || step + 1 == n {
            break;
        }
        logits = model.forward(&mut st, &[best as u32], Logits::Last)?.to_vec();
    }
    // Decode steps: one forward per token after the first.
    Ok(Answer {
        decode_s: t.elapsed().as_secs_f64(),
        prefill_s,
        tokens,
        gaps,
    })
}

fn parse_precision(s: &str) -> Result<Precision> {
    Ok(match s {
        "exact" => Precision::Exact,
        "wide" => Precision::Wide,
        "fast" => Precision::Fast,
        _ => bail!("unknown precision {s:?} (exact, wide, fast)"),
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model_path, mut prompts_path, mut n, mut threads) = (None, None, 32usize, None);
    let mut precisions = vec![Precision::Exact, Precision::Wide, Precision::Fast];
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" | "-m" => model_path = Some(std::path::PathBuf::from(val()?)),
            "--prompts" => prompts_path = Some(val()?),
            "-n" => n = val()?.parse()?,
            "--threads" | "-t" => threads = Some(val()?.parse::<usize>()?),
            "--precisions" => {
                precisions = val()?.split(',').map(parse_precision).collect::<Result<_>>()?;
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    if precisions.first() != Some(&Precision::Exact) {
        bail!("--precisions must start with exact (the reference)");
    }
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    let prompts_path = prompts_path
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/prompts/chat-prompts.txt").to_string());
    let prompts: Vec<String> = std::fs::read_to_string(&prompts_path)
        .with_context(|| format!("cannot read {prompts_path}"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let file = load(&bushu::pull::resolve(model_path.as_deref())?)?;
    let (template, stops, _) = template_for(&file)?;
    let tok = &file.tokenizer;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode_with(&template.render(&[Message::new("user", p)], true)?, false, true))
        .collect::<Result<_>>()?;
    let models: Vec<Model> = precisions
        .iter()
        .map(|&p| {
            ModelOptions {
                precision: p,
                background_packing: false,
                ..ModelOptions::default()
            }
            .build(&file)
        })
        .collect::<Result<_>>()?;
    let names: Vec<String> = precisions.iter().map(|p| format!("{p:?}").to_lowercase()).collect();
    // Per precision: differing answers, differing first tokens, decode tokens and seconds, prefill tokens and seconds.
    let mut differ = vec![0usize; models.len()];
    let mut differ_first = vec![0usize; models.len()];
    let mut dec = vec![(0usize, 0f64); models.len()];
    let mut pre = vec![(0usize, 0f64); models.len()];
    // Warm up each model (packing, first-touch of the mapped file) outside the timings.
    for m in &models {
        greedy(m, &ids[0], 2, &stops)?;
    }
    for (i, (p, prompt)) in prompts.iter().zip(&ids).enumerate() {
        let answers: Vec<Answer> = models
            .iter()
            .map(|m| greedy(m, prompt, n, &stops))
            .collect::<Result<_>>()?;
        let exact = &answers[0];
        for (k, a) in answers.iter().enumerate() {
            dec[k].0 += a.tokens.len() - 1;
            dec[k].1 += a.decode_s;
            pre[k].0 += prompt.len();
            pre[k].1 += a.prefill_s;
            if k == 0 || a.tokens == exact.tokens {
                continue;
            }
            differ[k] += 1;
            let step = a.tokens.iter().zip(&exact.tokens).take_while(|(x, y)| x == y).count();
            if step == 0 {
                differ_first[k] += 1;
            }
            let gap = exact.gaps.get(step).copied().unwrap_or(f32::NAN);
            println!(
                "{}: prompt {i} {p:?}: step {step}, exact top-2 gap {gap:.3}\n  exact: {:?}\n  {}: {:?}",
                names[k],
                tok.decode(&exact.tokens),
                names[k],
                tok.decode(&a.tokens)
            );
        }
        // Progress (stderr): a run on a large model takes hours, and a stopped one still counts.
        let counts: Vec<String> = (1..models.len())
            .map(|k| format!("{} {}", names[k], differ[k]))
            .collect();
        eprintln!("[{}/{}] differing so far: {}", i + 1, prompts.len(), counts.join(", "));
    }
    println!(
        "\n{} prompts, greedy up to {n} tokens, {}",
        prompts.len(),
        file.name.as_deref().unwrap_or("model")
    );
    for k in 0..models.len() {
        println!(
            "{:>6}: answers differing from exact {:>3}/{} ({:.1} %), first token differs {:>3}; prefill {:.0} t/s, decode {:.1} t/s",
            names[k],
            differ[k],
            prompts.len(),
            100.0 * differ[k] as f64 / prompts.len() as f64,
            differ_first[k],
            pre[k].0 as f64 / pre[k].1,
            dec[k].0 as f64 / dec[k].1
        );
    }
    Ok(())
}
