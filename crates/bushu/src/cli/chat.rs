//! `bushu chat`: an interactive terminal chat. Streams the answer, keeps the conversation (reusing the KV cache
//! of the turns already computed). On a terminal, input goes through a line editor (`rustyline`: editing,
//! history kept in the cache directory); with stdin not a terminal it reads one message per line. Either
//! way a line ending in `\` continues on the next one, and the commands are [`HELP`]'s. Ctrl-C stops the
//! current answer and keeps the program running. Speculative decoding (`--draft-model`, `--lookup`,
//! `--self-speculate`, as `bushu run`) decodes every answer; `--verbose` reports each turn's drafts.
//! `--early-exit-entropy H [--exit-layers ...]` decodes with early exit (lossy, as `bushu run`).

use super::adaptive::AdaptiveArgs;
use super::run::context_size;
use super::sampling::{flag_error, Command, SamplingArgs};
use super::spec::SpecArgs;
use super::structured::StructuredArgs;
use super::ModelArgs;
use crate::chat::session::{template_for, ChatSession};
use crate::generate::{ContextTooSmall, GenerateOptions};
use crate::model::GenerationDefaults;
use anyhow::{bail, Context, Result};
use clap::Args;
use kernels::Precision;
use rustyline::error::ReadlineError;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
// Chat answers are greedy unless the flags or the model say otherwise (`sampling::Command::Chat`).
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
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long, visible_alias = "ctx-size")]
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
             (faster; greedy answers can differ from the exact model's)"
        }
        Precision::Wide => {
            "wide: activations in 16-bit blocks where a kernel exists, f32 elsewhere \
             (--precision fast: 8-bit blocks, faster, less exact)"
        }
        Precision::Exact => "exact: f32 activations against the dequantized weights",
        Precision::Bf16 => {
            "bf16: fast, and F16/BF16 weights in bf16 where the CPU has AVX512_BF16 \
             (faster F16 prefill; greedy answers can differ from the exact model's)"
        }
    }
}

/// What `/help` prints.
pub const HELP: &str = "\
/help            this list
/system [TEXT]   show the system prompt, or set it to TEXT (starts a new conversation)
/save FILE       write the conversation so far to FILE as JSON ([{\"role\", \"content\"}, ...])
/reset           forget the conversation (keeps the system prompt)
/exit            leave (also /quit, /bye, Ctrl-D)
A line ending in \\ continues the message on the next line. Ctrl-C stops an answer.";

/// Where messages come from: a line editor on a terminal, else the lines of stdin.
enum Input {
    Editor {
        editor: Box<rustyline::DefaultEditor>,
        history: Option<PathBuf>,
    },
    Lines(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Input {
    fn new(tty: bool) -> Result<Input> {
        if !tty {
            return Ok(Input::Lines(std::io::stdin().lock().lines()));
        }
        let mut editor = rustyline::DefaultEditor::new().context("cannot set up the line editor")?;
        let history = crate::pull::models_dir().parent().map(|d| d.join("chat_history"));
        if let Some(h) = &history {
            // No history yet is not an error.
            let _ = editor.load_history(h);
        }
        Ok(Input::Editor {
            editor: Box::new(editor),
            history,
        })
    }

    /// The next message, its lines joined while they end in `\`; `None` at the end of the input.
    fn next_message(&mut self) -> Result<Option<String>> {
        let mut msg = String::new();
        loop {
            let line = match self {
                Input::Editor { editor, .. } => match editor.readline(if msg.is_empty() { ">>> " } else { "... " }) {
                    Ok(l) => l,
                    Err(ReadlineError::Interrupted) => {
                        eprintln!("(use /exit or Ctrl-D to leave)");
                        msg.clear();
                        continue;
                    }
                    Err(ReadlineError::Eof) => return Ok(None),
                    Err(e) => return Err(e).context("cannot read the terminal"),
                },
                Input::Lines(lines) => match lines.next() {
                    Some(l) => l.context("cannot read the standard input")?,
                    None if msg.is_empty() => return Ok(None),
                    None => break,
                },
            };
            match line.strip_suffix('\\') {
                Some(head) => {
                    msg.push_str(head);
                    msg.push('\n');
                }
                None => {
                    msg.push_str(&line);
                    break;
                }
            }
        }
        if let Input::Editor { editor, history } = self {
            if !msg.trim().is_empty() {
                let _ = editor.add_history_entry(msg.as_str());
                if let Some(h) = history {
                    if let Some(dir) = h.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Err(e) = editor.save_history(h) {
                        eprintln!("warning: cannot save the chat history to {}: {e}", h.display());
                        *history = None;
                    }
                }
            }
        }
        Ok(Some(msg))
    }
}

/// A `/` command's outcome.
enum Action {
    Handled,
    Exit,
}

/// Runs a `/command` line (`None`: not a command, a message).
fn command(line: &str, session: &mut ChatSession) -> Option<Action> {
    let rest = line.strip_prefix('/')?;
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    match name {
        "exit" | "quit" | "bye" => return Some(Action::Exit),
        "reset" => {
            session.reset();
            eprintln!("[conversation reset]");
        }
        "help" | "?" => eprintln!("{HELP}"),
        "system" if arg.is_empty() => match session.system() {
            Some(s) => eprintln!("[system prompt: {s:?}]"),
            None => eprintln!("[no system prompt set: the chat template's own, if it has one]"),
        },
        "system" => {
            session.set_system(Some(arg.to_string()));
            eprintln!("[system prompt set; new conversation]");
        }
        "save" if arg.is_empty() => eprintln!("error: /save needs a file name: /save FILE"),
        "save" => {
            let json = serde_json::to_string_pretty(session.messages()).expect("messages serialize");
            match std::fs::write(arg, json + "\n") {
                Ok(()) => eprintln!("[conversation saved to {arg}: {} messages]", session.messages().len()),
                Err(e) => eprintln!("error: cannot write {arg}: {e}"),
            }
        }
        _ => eprintln!("error: unknown command /{name}: /help lists the commands"),
    }
    Some(Action::Handled)
}

pub fn chat(a: ChatArgs) -> Result<()> {
    a.sampling.params(&GenerationDefaults::default(), Command::Chat)?;
    a.structured.constraint()?;
    let spec = a.spec.options()?;
    let spec_flags = "speculative decoding (--draft-model, --lookup, --self-speculate)";
    a.adaptive
        .check((spec.method != crate::spec_decode::Speculation::Off).then_some(spec_flags))?;
    let (file, _) = a.model.open()?;
    let mut sampling = a.sampling.params(&file.generation, Command::Chat)?;
    let ctx = context_size(a.ctx, &file.config, a.model.kv_type)?;
    let mut model = a.model.build(&file)?;
    model.routing = a.adaptive.routing(&file, &model)?;
    sampling
        .validate_for_vocab(model.config.vocab_size)
        .map_err(|e| flag_error(e, &[]))?;
    let draft = super::spec::load_draft_for(&spec, &file, &model, &a.model)?;
    if a.spec.semi_ar.is_some() || a.spec.non_ar {
        bail!("--semi-ar and --non-ar are for bushu run");
    }
    let medusa = super::spec::load_medusa_for(&a.spec, &file)?;
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
        eprintln!("Type a message; /help lists the commands, /exit (or Ctrl-D) leaves, Ctrl-C stops an answer.");
    }
    let mut session = ChatSession::new(&model, &file.tokenizer, template, stops, ctx, a.system.clone())?;
    let mut opts = GenerateOptions::new(a.n, sampling, Vec::new());
    opts.fast_forward = !a.structured.no_fast_forward;
    if let Some(p) = super::spec::proposer(&spec, draft.as_ref(), medusa.as_ref(), &model, ctx, &opts.sampling)? {
        match &spec.method {
            crate::spec_decode::Speculation::Medusa { nodes, .. } => {
                eprintln!("bushu chat: speculative decoding by medusa (token trees of up to {nodes} drafts per step)")
            }
            _ => eprintln!(
                "bushu chat: speculative decoding by {} (up to {} drafts per step)",
                p.name(),
                spec.length.max
            ),
        }
        session.set_speculation(p, spec.length)?;
        super::spec::draft_note(&spec, draft.as_ref());
    }

    if let Some(r) = &model.routing {
        eprintln!(
            "bushu chat: mixture of depths (lossy), capacity {} (routers trained at {}): a token below a layer's router threshold skips it",
            r.capacity, r.routers.trained_capacity
        );
    }
    if let Some(rule) = a.adaptive.early_exit(&file, &model)? {
        eprintln!(
            "bushu chat: early exit (lossy) below {} nats of entropy, after layers {:?} of {}",
            rule.threshold, rule.layers, model.config.n_layers
        );
        session.set_early_exit(rule)?;
    }

    let interrupt = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (interrupt, generating) = (interrupt.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                eprintln!("\n(use /exit or Ctrl-D to leave)");
            }
        })
        .context("cannot install the Ctrl-C handler")?;
    }

    let mut input = Input::new(tty)?;
    while let Some(message) = input.next_message()? {
        let msg = message.trim();
        if msg.is_empty() {
            continue;
        }
        match command(msg, &mut session) {
            Some(Action::Exit) => break,
            Some(Action::Handled) => continue,
            None => {}
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
            if let Some(s) = &turn.early_exit {
                eprintln!(
                    "[early exit: {:.2} layers per decode step on average, {:.1} % of full-depth compute]",
                    s.mean_layers(),
                    100.0 * s.compute_fraction()
                );
            }
            if let Some(s) = &turn.spec {
                // llama-server's names for the two counts.
                eprintln!(
                    "[draft_n {} draft_n_accepted {}; mean accepted length {:.2} over {} target passes{}]",
                    s.draft_n,
                    s.draft_n_accepted,
                    s.mean_accepted_length(),
                    s.target_passes,
                    if s.switched_off {
                        ", switched off for lack of acceptance"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}
