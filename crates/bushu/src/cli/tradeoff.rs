//! `bushu tradeoff --model M --method early-exit|mod --file TEXT [--points a,b,...] [--out DIR]`: sweeps an
//! adaptive-computation method's knob and writes its quality/compute table (`tradeoff-METHOD.md`) and
//! chart (`tradeoff-METHOD.svg`) into `--out` ([`crate::tradeoff`]; docs/ADAPTIVE.md).

use super::ModelArgs;
use crate::model::exit_adapters::ExitAdapters;
use crate::model::mixture_of_depths::Routers;
use crate::perplexity::tokenize_text;
use crate::tradeoff::early_exit::EarlyExitMethod;
use crate::tradeoff::mixture_of_depths::ModMethod;
use crate::tradeoff::{heldout, measure, parse_points, plot, table, Method, Sizes};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// The methods `--method` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Early exit by entropy; the knob is the threshold H (nats).
    EarlyExit,
    /// Mixture of depths (--mod-routers); the knob is the capacity C.
    Mod,
}

#[derive(Args)]
pub struct TradeoffArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The method whose knob is swept.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Held-out text: teacher-forced windows from its start, prompts for greedy continuations after them.
    #[arg(short, long)]
    pub file: PathBuf,
    /// The knob's settings (comma-separated, at least 5 for a curve; default: the method's own).
    #[arg(long, value_name = "A,B,...", allow_hyphen_values = true)]
    pub points: Option<String>,
    /// Directory for the table and the chart (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Early exit: the exit points, as numbers of layers run (default: a quarter, half and three quarters).
    #[arg(long, value_name = "L1,L2,...")]
    pub exit_layers: Option<String>,
    /// Early exit: trained exit adapters (`bushu train-exit-adapters`) for the model; the exits read the
    /// stream through them, and the per-layer profile shows them beside the shared head.
    #[arg(long, value_name = "A.gguf")]
    pub exit_adapters: Option<PathBuf>,
    /// Mixture of depths: the routers file (`bushu train-routers`) for the model.
    #[arg(long, value_name = "R.gguf")]
    pub mod_routers: Option<PathBuf>,
    /// Teacher-forced windows, tokens per window, and prompt tokens of each window.
    #[arg(long, default_value_t = 2)]
    pub windows: usize,
    #[arg(long, default_value_t = 160)]
    pub window: usize,
    #[arg(long, default_value_t = 32)]
    pub prefix: usize,
    /// Prompts continued greedily, tokens per prompt, tokens generated per prompt.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n: usize,
    /// Also print the points as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn tradeoff(a: TradeoffArgs) -> Result<()> {
    let points = a.points.as_deref().map(parse_points).transpose()?;
    if a.exit_layers.is_some() && a.method != MethodArg::EarlyExit {
        bail!("--exit-layers belongs to --method early-exit");
    }
    if a.exit_adapters.is_some() && a.method != MethodArg::EarlyExit {
        bail!("--exit-adapters belongs to --method early-exit");
    }
    match (a.method, &a.mod_routers) {
        (MethodArg::Mod, None) => {
            bail!("--method mod needs --mod-routers R.gguf (the routers bushu train-routers wrote)")
        }
        (MethodArg::EarlyExit, Some(_)) => bail!("--mod-routers belongs to --method mod"),
        _ => {}
    }
    let layers = a
        .exit_layers
        .as_deref()
        .map(crate::model::early_exit::parse_layers)
        .transpose()?;
    let text = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let Ok(text) = String::from_utf8(text) else {
        bail!("{} is not UTF-8 text", a.file.display());
    };
    let (file, _) = a.model.open()?;
    let model = a.model.build(&file)?;
    let mut method: Box<dyn Method> = match a.method {
        MethodArg::EarlyExit => {
            let adapters = a
                .exit_adapters
                .as_deref()
                .map(|p| ExitAdapters::load(p, &file, &model).map(Arc::new))
                .transpose()?;
            Box::new(EarlyExitMethod::new(&model, layers, adapters)?)
        }
        MethodArg::Mod => {
            let routed = a.model.build(&file)?;
            let path = a.mod_routers.as_ref().expect("checked");
            let routers = Routers::load(path, &file, &routed)?;
            Box::new(ModMethod::new(routed, routers)?)
        }
    };
    let points = points.unwrap_or_else(|| method.default_points());
    for &p in &points {
        method.check_point(p)?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let tok = &file.tokenizer;
    let tokens = tokenize_text(tok, &text)?;
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let sizes = Sizes {
        windows: a.windows,
        window: a.window,
        prefix: a.prefix,
        prompts: a.prompts,
        prompt: a.prompt_tokens,
        n: a.n,
    };
    let held = heldout(&model, &tokens, bos, sizes)?;
    let mut rows = vec![held.full.clone()];
    for &p in &points {
        let pt = measure(method.as_mut(), &model, &held, p)?;
        eprintln!(
            "[{} {p}: compute {:.3}, {:.1} t/s, KL {:.4}, agreement {:.3}, own ppl {:.2}]",
            method.name(),
            pt.compute_fraction,
            pt.tokens_per_s,
            pt.kl,
            pt.agreement,
            pt.own_ppl
        );
        rows.push(pt);
    }
    let name = file.name.clone().unwrap_or_else(|| {
        a.model
            .model
            .as_ref()
            .map_or("model".into(), |m| m.display().to_string())
    });
    let md_path = a.out.join(format!("tradeoff-{}.md", method.name()));
    let svg_path = a.out.join(format!("tradeoff-{}.svg", method.name()));
    let mut md = format!(
        "# {}: {name}\n\n{} windows of {} tokens ({} prompt tokens each) teacher-forced, {} prompts of {} tokens continued by {} greedy tokens, from {}.\n\n",
        method.name(),
        a.windows,
        a.window,
        a.prefix,
        a.prompts,
        a.prompt_tokens,
        a.n,
        a.file.display()
    );
    md += &table(method.as_ref(), &rows);
    let notes = method.notes(&held)?;
    if !notes.is_empty() {
        md += "\n";
        md += &notes;
    }
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    plot(&svg_path, &format!("{}: {name}", method.name()), &rows)?;
    print!("{md}");
    eprintln!("[wrote {} and {}]", md_path.display(), svg_path.display());
    if a.json {
        println!("{}", serde_json::json!({"method": method.name(), "points": rows}));
    }
    Ok(())
}
