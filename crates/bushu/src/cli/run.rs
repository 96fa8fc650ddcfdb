//! `bushu run`: generate from a prompt, streaming text, or one JSON object with `--json`.
//! Decoding strategy: sampling/greedy (default), `--beams N`, `--penalty-alpha` (contrastive search),
//! `--amateur PATH` (contrastive decoding, greedy/sampled or with `--beams`). Speculative decoding of
//! greedy or sampled output: `--draft-model PATH`, `--lookup`, `--self-speculate L` or `--medusa HEADS`
//! (one of them); with the heads, lossy semi-/non-autoregressive decoding (`--semi-ar K`, `--non-ar`).
//! Early exit by entropy (lossy): `--early-exit-entropy H [--exit-layers ...]` (docs/ADAPTIVE.md).

use super::adaptive::AdaptiveArgs;
use super::sampling::{flag_error, Command, SamplingArgs};
use super::spec::SpecArgs;
use super::structured::StructuredArgs;
use super::ModelArgs;
use crate::generate::contrastive::{generate_contrastive, CdParams};
use crate::generate::early_exit::generate_early_exit;
use crate::generate::{generate, GenerateOptions, Generation, Strategy};
use crate::model::GenerationDefaults;
use crate::sampling::beam::{BeamParams, EarlyStopping};
use crate::spec_decode::semi_ar::generate_semi_ar;
use crate::spec_decode::{generate_speculative, DraftLengthParams, SpecOptions, Speculation};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(short, long, required_unless_present = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file (llama.cpp's `-f`).
    #[arg(short, long, value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Number of tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub structured: StructuredArgs,
    /// Stop when the text contains STRING (never included in the output); repeatable.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// Beam search with N beams (1: no beam search).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub beams: i64,
    /// With --beams, return the N best sequences (with --json).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub num_return: i64,
    /// With --beams, the exponent of the length dividing sequence scores (> 0 favours longer).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// With --beams: true (stop when N sequences are done), false (HF heuristic), never.
    #[arg(long, default_value = "false")]
    pub early_stopping: String,
    /// Contrastive decoding against this smaller model (same tokenizer).
    #[arg(long)]
    pub amateur: Option<PathBuf>,
    /// Contrastive decoding plausibility threshold: keep tokens with p ≥ ALPHA · max p.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub cd_alpha: f32,
    /// Contrastive decoding: temperature of the amateur's distribution.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub cd_amateur_temperature: f32,
    /// Contrastive search (Su et al. 2022) with this degeneration penalty α, among --top-k tokens.
    #[arg(long, allow_negative_numbers = true)]
    pub penalty_alpha: Option<f32>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub cascade: super::cascade::CascadeArgs,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short, long, visible_alias = "ctx-size")]
    pub ctx: Option<usize>,
    /// Do not add the BOS token to the prompt.
    #[arg(long)]
    pub no_bos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// With --json, report the top-K log-probabilities of each generated token.
    #[arg(long)]
    pub logprobs: Option<usize>,
}

/// Parameters whose flag is not `--` and their name with dashes.
const FLAGS: &[(&str, &str)] = &[
    ("num_beams", "--beams"),
    ("alpha", "--cd-alpha"),
    ("amateur_temperature", "--cd-amateur-temperature"),
];

/// The speculative-decoding flags, checked (everything but what needs the model: its layer count, the
/// draft's vocabulary), and against the decoding strategies they cannot be combined with.
pub fn speculation(a: &RunArgs) -> Result<(Speculation, DraftLengthParams)> {
    let SpecOptions {
        method: spec, length, ..
    } = a.spec.options()?;
    if spec != Speculation::Off || a.spec.semi_ar.is_some() || a.spec.non_ar {
        if let Some(other) = other_strategy(a) {
            bail!("speculative decoding (--draft-model, --lookup, --self-speculate, --medusa) and {other} cannot be combined");
        }
    }
    if (a.spec.semi_ar.is_some() || a.spec.non_ar) && a.structured.constraint()?.is_some() {
        bail!(
            "--semi-ar and --non-ar emit unverified guesses: they cannot follow {} (structured output)",
            a.structured.flag()
        );
    }
    Ok((spec, length))
}

/// The decoding strategy other than sampling or greedy decoding the flags ask for, if any (speculative
/// decoding and structured output work with those two only).
pub(super) fn other_strategy(a: &RunArgs) -> Option<&'static str> {
    if a.beams > 1 {
        Some("--beams")
    } else if a.penalty_alpha.is_some() {
        Some("--penalty-alpha (contrastive search)")
    } else if a.amateur.is_some() {
        Some("--amateur (contrastive decoding)")
    } else {
        None
    }
}

/// The generation options the flags describe for a model shipping `model`'s sampling values (called
/// once with none before the model loads: everything checkable then is checked then).
pub fn options(a: &RunArgs, eos_ids: Vec<u32>, model: &GenerationDefaults) -> Result<GenerateOptions> {
    let (spec, _) = speculation(a)?;
    let spec_flags = "speculative decoding (--draft-model, --lookup, --self-speculate)";
    a.adaptive
        .check(other_strategy(a).or((spec != Speculation::Off).then_some(spec_flags)))?;
    let sampling = a.sampling.params(model, Command::Run)?;
    if a.beams < 1 {
        bail!("--beams must be at least 1 (got {})", a.beams);
    }
    if a.num_return < 1 || a.num_return > a.beams {
        bail!(
            "--num-return must be between 1 and --beams ({}), got {}",
            a.beams,
            a.num_return
        );
    }
    if a.structured.constraint()?.is_some() {
        if let Some(other) = other_strategy(a) {
            bail!(
                "{} (structured output) and {other} cannot be combined: structured output samples or decodes greedily, \
                 speculative decoding included",
                a.structured.flag()
            );
        }
    }
    let strategy = if let Some(alpha) = a.penalty_alpha {
        if a.beams > 1 {
            bail!("--penalty-alpha (contrastive search) and --beams cannot be combined");
        }
        if a.amateur.is_some() {
            bail!("--penalty-alpha (contrastive search) and --amateur (contrastive decoding) cannot be combined");
        }
        Strategy::ContrastiveSearch {
            penalty_alpha: alpha,
            top_k: sampling.top_k,
        }
    } else if a.beams > 1 {
        Strategy::Beam(BeamParams {
            num_beams: a.beams as usize,
            num_return: a.num_return as usize,
            length_penalty: a.length_penalty,
            early_stopping: a
                .early_stopping
                .parse::<EarlyStopping>()
                .map_err(|e| anyhow::anyhow!("--early-stopping: {e}"))?,
        })
    } else {
        Strategy::Sample
    };
    let opts = GenerateOptions {
        max_tokens: a.n,
        sampling,
        logprobs: a.logprobs,
        eos_ids,
        stop: a.stop.clone(),
        strategy,
        fast_forward: !a.structured.no_fast_forward,
    };
    opts.validate().map_err(|e| flag_error(e, FLAGS))?;
    if a.amateur.is_some() {
        CdParams {
            alpha: a.cd_alpha,
            amateur_temperature: a.cd_amateur_temperature,
        }
        .validate()
        .map_err(|e| flag_error(e, FLAGS))?;
    }
    Ok(opts)
}

/// The prompt: `--prompt`, or the contents of `--file`.
pub(super) fn prompt_text(a: &RunArgs) -> Result<String> {
    match (&a.prompt, &a.file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read the prompt file {}", f.display()))?;
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the prompt file {} is not UTF-8 text", f.display()))
        }
        (None, None) => anyhow::bail!("give a prompt: --prompt TEXT or --file FILE"),
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    if a.cascade.on() {
        return super::cascade::run(&a);
    }
    a.cascade.threshold()?;
    options(&a, Vec::new(), &GenerationDefaults::default())?;
    let (file, load_ms) = a.model.open()?;
    let mut opts = options(&a, file.eos_ids.clone(), &file.generation)?;
    let ctx = context_size(a.ctx, &file.config, a.model.kv_type)?;
    let mut model = a.model.build(&file)?;
    if a.adaptive.mod_routers.is_some() && (a.spec.semi_ar.is_some() || a.spec.non_ar) {
        bail!(
            "--mod-routers (mixture of depths) and --semi-ar/--non-ar cannot be combined: one lossy method at a time"
        );
    }
    model.routing = a.adaptive.routing(&file, &model)?;
    if a.beams > 1 {
        // Each beam may hold up to a context of KV rows, and a step scores every beam's vocabulary.
        let c = &model.config;
        let per_pos = a.model.kv_type.bytes_per_position(c.n_layers, c.kv_dim(), c.head_dim);
        let beams = a.beams as usize;
        let bytes =
            crate::model::memory::product(beams, ctx, per_pos) + crate::model::memory::product(beams, c.vocab_size, 8);
        crate::model::memory::ensure_fits(
            bytes,
            &format!("beam search with --beams {beams} over a context of {ctx}"),
            "give fewer --beams or a smaller --ctx",
        )?;
    }
    let tok = &file.tokenizer;
    opts.sampling.grammar = a.structured.compile(tok, model.config.vocab_size, &file.eos_ids)?;
    let prompt = tok.encode(&prompt_text(&a)?, !a.no_bos)?;
    let mut state = model.new_state(ctx);
    let amateur = match &a.amateur {
        Some(path) => {
            let f = crate::model::load(path).with_context(|| format!("cannot open the amateur {}", path.display()))?;
            let m = a.model.build(&f)?;
            Some((f, m))
        }
        None => None,
    };
    let (_, length) = speculation(&a)?;
    let spec = a.spec.options()?;
    let draft = super::spec::load_draft_for(&spec, &file, &model, &a.model)?;
    let medusa = super::spec::load_medusa_for(&a.spec, &file)?;
    let mut proposer = super::spec::proposer(&spec, draft.as_ref(), medusa.as_ref(), &model, ctx, &opts.sampling)?;
    super::spec::draft_note(&spec, draft.as_ref());
    // Semi- or non-autoregressive decoding with the heads (lossy): K head tokens per pass.
    let semi_ar = match (&medusa, a.spec.semi_ar, a.spec.non_ar) {
        (Some(h), Some(k), _) => {
            if k > h.len() {
                bail!(
                    "--semi-ar {k}: the heads file has {} heads (0 to {} guesses per pass)",
                    h.len(),
                    h.len()
                );
            }
            Some(k)
        }
        (Some(h), None, true) => {
            opts.max_tokens = opts.max_tokens.min(h.len() + 1);
            Some(h.len())
        }
        _ => None,
    };
    let mut semi_passes = 0;
    let early = a.adaptive.early_exit(&file, &model)?;
    let mut exit_stats = None;
    let mut stats = None;
    let mut stdout = std::io::stdout().lock();
    let mut on_text = |s: &str| {
        if !a.json {
            let _ = stdout.write_all(s.as_bytes());
            let _ = stdout.flush();
        }
    };
    let g: Generation = match (&amateur, &mut proposer) {
        _ if early.is_some() => {
            let rule = early.as_ref().expect("early exit");
            generate_early_exit((&model, tok, &mut state), &prompt, &opts, rule, &mut on_text).map(|(g, s)| {
                exit_stats = Some(s);
                g
            })
        }
        _ if semi_ar.is_some() => generate_semi_ar(
            (&model, tok, &mut state),
            &prompt,
            &opts,
            medusa.as_ref().expect("--medusa"),
            semi_ar.unwrap_or(0),
            &mut on_text,
        )
        .map(|(g, passes)| {
            semi_passes = passes;
            g
        }),
        (_, Some(p)) => generate_speculative(
            (&model, tok, &mut state),
            &prompt,
            &opts,
            p.as_mut(),
            length,
            &mut on_text,
        )
        .map(|(g, s)| {
            stats = Some((p.name(), s));
            g
        }),
        (Some((af, am)), None) => {
            let mut astate = am.new_state(ctx);
            let cd = CdParams {
                alpha: a.cd_alpha,
                amateur_temperature: a.cd_amateur_temperature,
            };
            generate_contrastive(
                (&model, tok, &mut state),
                (am, &af.tokenizer, &mut astate),
                &prompt,
                &opts,
                cd,
                &mut on_text,
            )
        }
        (None, None) => generate(&model, tok, &mut state, &prompt, &opts, &mut on_text),
    }
    .map_err(|e| flag_error(e, FLAGS))?;
    drop(stdout);
    if a.json {
        let mut out = json!({
            "prompt_tokens": prompt,
            "tokens": g.tokens,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "timings": {
                "load_ms": load_ms,
                "prefill_ms": g.timings.prefill_ms,
                "decode_ms": g.timings.decode_ms,
                "prefill_tokens_per_s": g.timings.prefill_tokens_per_s,
                "decode_tokens_per_s": g.timings.decode_tokens_per_s,
                // Target forward passes, prefill included (fewer than tokens with fast-forward or drafts).
                "forward_passes": state.passes(),
            },
            "kv_cache": {"type": state.cache.kv_type().name(), "bytes": state.cache.bytes(), "positions": ctx},
        });
        if a.logprobs.is_some() && !g.logprobs.is_empty() {
            out["logprobs"] = serde_json::to_value(&g.logprobs)?;
        }
        if let (Some(e), Some(s)) = (&early, &exit_stats) {
            out["early_exit"] = json!({
                "threshold": e.threshold,
                "exit_layers": e.layers,
                "adapters": e.adapters.is_some(),
                "layers": model.config.n_layers,
                "decode_steps": s.steps,
                "mean_layers": s.mean_layers(),
                "steps_by_layers_run": s.exits,
                "compute_fraction": s.compute_fraction(),
            });
        }
        if let Some(r) = &model.routing {
            let (run, slots) = state.layer_pairs();
            out["mixture_of_depths"] = json!({
                "capacity": r.capacity,
                "trained_capacity": r.routers.trained_capacity,
                "layers": model.config.n_layers,
                // Over every position computed, the prompt's included (whose pass saves nothing: see
                // docs/ADAPTIVE.md); decode steps save what they skip.
                "layer_pairs_run": run,
                "layer_pairs": slots,
                "mean_layers_per_token": model.config.n_layers as f64 * run as f64 / slots.max(1) as f64,
            });
        }
        if !g.sequences.is_empty() {
            out["sequences"] = serde_json::to_value(&g.sequences)?;
        }
        if let Some(k) = semi_ar {
            out["semi_ar"] = json!({
                "k": k,
                "non_ar": a.spec.non_ar,
                "passes_after_prefill": semi_passes,
                "tokens_per_pass": g.tokens.len() as f64 / (semi_passes + 1) as f64,
                "lossy": true,
            });
        }
        if let Some((name, s)) = &stats {
            // llama-server reports these two among its timings.
            out["timings"]["draft_n"] = json!(s.draft_n);
            out["timings"]["draft_n_accepted"] = json!(s.draft_n_accepted);
            out["speculative"] = json!({
                "proposer": name,
                "draft_n": s.draft_n,
                "draft_n_accepted": s.draft_n_accepted,
                "acceptance_rate": s.acceptance_rate(),
                "mean_accepted_length": s.mean_accepted_length(),
                "draft_steps": s.draft_steps,
                "target_passes": s.target_passes,
                "switched_off": s.switched_off,
                "pauses": s.pauses,
                "tree_steps": s.tree_steps,
                "tree_second_choices": s.tree_second_choices,
            });
        }
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s, finish: {}]",
            prompt.len(),
            g.timings.prefill_tokens_per_s,
            g.tokens.len(),
            g.timings.decode_tokens_per_s,
            serde_json::to_value(g.finish_reason)?.as_str().unwrap_or("?")
        );
        if let Some((name, s)) = &stats {
            eprintln!(
                "[{name}: {} drafted, {} accepted ({:.0} %), mean accepted length {:.2} over {} target passes{}{}]",
                s.draft_n,
                s.draft_n_accepted,
                100.0 * s.acceptance_rate(),
                s.mean_accepted_length(),
                s.target_passes,
                if s.switched_off {
                    ", switched off for lack of acceptance"
                } else {
                    ""
                },
                match s.pauses {
                    0 => String::new(),
                    n => format!(", paused {n} times for being slower than plain decoding"),
                }
            );
        }
        if let Some(s) = &exit_stats {
            eprintln!(
                "[early exit: {:.2} of {} layers per decode step on average, {:.1} % of full-depth compute]",
                s.mean_layers(),
                model.config.n_layers,
                100.0 * s.compute_fraction()
            );
        }
        for (i, s) in g.sequences.iter().enumerate().skip(1) {
            eprintln!("[sequence {} score {:.4}] {}", i + 1, s.score, s.text);
        }
    }
    Ok(())
}

/// The context size to allocate: what was asked, else the model's own capped at 4096. Beyond the
/// trained context is allowed with a warning; a KV cache (of `kv_type`) that cannot fit in the memory
/// available is refused before it is allocated, with the numbers.
pub fn context_size(
    asked: Option<usize>,
    config: &crate::model::Config,
    kv_type: crate::model::KvType,
) -> Result<usize> {
    use crate::model::memory::{ensure_fits, product};
    let ctx = match asked {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(n) => n,
        None => config.max_ctx.min(4096),
    };
    if let Some(note) = config.beyond_training(ctx) {
        eprintln!("warning: {note}");
    }
    let per_pos = kv_type.bytes_per_position(config.n_layers, config.kv_dim(), config.head_dim);
    ensure_fits(
        product(ctx, per_pos, 1),
        &format!("the {} KV cache of --ctx {ctx} positions", kv_type.name()),
        "give a smaller --ctx",
    )?;
    Ok(ctx)
}
