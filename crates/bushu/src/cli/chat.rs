//! `bushu chat`: an interactive terminal chat. Streams the answer, keeps the conversation (reusing the KV cache
//! of the turns already computed), `/reset` forgets it, `/exit` (or end of input) leaves, Ctrl-C stops the
//! current answer and keeps the program running. With stdin not a terminal it reads one message per line.

use super::run::context_size;
use super::sampling::{flag_error, SamplingArgs};
use super::structured::StructuredArgs;
use super::ModelArgs;
use crate::chat::session::{template_for, ChatSession};
use crate::generate::{ContextTooSmall, GenerateOptions};
use anyhow::{Context, Result};
use clap::Args;
use kernels::Precision;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
// Chat answers are greedy unless asked otherwise (run samples at 0.8 by default).
#[command(mut_arg("temperature", |a| a.default_value("0")))]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt (default: the chat template's own, if it has one).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of tokens per answer.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub structured: StructuredArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print prompt-reuse and speed figures after each answer (always on stderr).
    #[arg(long)]
    pub verbose: bool,
}

/// Describes the precision path, for the banner.
pub fn precision_line(p: Precision) -> &'static str {
    match p {
        Precision::Fast => {
            "fast: activations rounded to 8-bit blocks as llama.cpp does, 16-bit for the classifier \
             (--exact-activations keeps them in f32)"
        }
        Precision::Wide => "wide: activations rounded to 16-bit blocks",
        Precision::Exact => "exact: f32 activations against the dequantized weights (--exact-activations)",
    }
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let mut sampling = a.sampling.params()?;
    a.structured.constraint()?;
    let (file, _) = a.model.open()?;
    let ctx = context_size(a.ctx, &file.config, a.model.kv_type)?;
    let model = a.model.build(&file)?;
    sampling
        .validate_for_vocab(model.config.vocab_size)
        .map_err(|e| flag_error(e, &[]))?;
    let (template, stops, own_template) = template_for(&file)?;
    // Each answer follows the grammar and ends with an end-of-turn token.
    sampling.grammar = a.structured.compile(&file.tokenizer, model.config.vocab_size, &stops)?;
    let tty = std::io::stdin().is_terminal();
    let name = file.name.clone().unwrap_or_else(|| "model".into());
    eprintln!(
        "bushu chat: {name}, context {ctx}, precision {}",
        precision_line(model.precision)
    );
    if let Some(kernels::int8_mixed::ActInt8::Mixed { threshold }) = model.int8.as_ref().map(|w| w.mode) {
        eprintln!("bushu chat: layer projections in LLM.int8, outlier threshold {threshold}");
    }
    if model.kv_type != crate::model::KvType::F32 {
        eprintln!("bushu chat: KV cache in {}", model.kv_type.name());
    }
    if !own_template {
        eprintln!("bushu chat: the model file has no chat template; using ChatML");
    }
    if tty {
        eprintln!("Type a message; /reset forgets the conversation, /exit (or Ctrl-D) leaves, Ctrl-C stops an answer.");
    }
    let mut session = ChatSession::new(&model, &file.tokenizer, template, stops, ctx, a.system.clone())?;
    let opts = GenerateOptions::new(a.n, sampling, Vec::new());

    let interrupt = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (interrupt, generating) = (interrupt.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                eprint!("\n(use /exit or Ctrl-D to leave)\n>>> ");
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }

    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            eprint!(">>> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read the standard input")?;
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" | "/bye" => break,
            "/reset" => {
                session.reset();
                eprintln!("[conversation reset]");
                continue;
            }
            _ => {}
        }
        interrupt.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let mut stdout = std::io::stdout().lock();
        let turn = session.reply(msg, &opts, &interrupt, &mut |s| {
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        });
        generating.store(false, Ordering::SeqCst);
        let _ = writeln!(stdout);
        let _ = stdout.flush();
        drop(stdout);
        let turn = match turn {
            Ok(t) => t,
            Err(e) => {
                // The conversation stays usable: report and read the next message.
                match e.downcast_ref::<ContextTooSmall>() {
                    Some(c) => eprintln!("error: {c}: /reset to start over (or a larger --ctx)"),
                    None => eprintln!("error: {e:#}"),
                }
                if !tty {
                    return Err(e);
                }
                continue;
            }
        };
        if turn.interrupted {
            eprintln!("[stopped]");
        }
        if a.verbose {
            eprintln!(
                "[{} prompt tokens reused from the cache, {} new at {:.1} t/s; {} generated at {:.1} t/s; {:?}]",
                turn.reused_tokens,
                turn.new_tokens,
                turn.prefill_tokens_per_s,
                turn.generated_tokens,
                turn.decode_tokens_per_s,
                turn.finish_reason
            );
        }
    }
    Ok(())
}
