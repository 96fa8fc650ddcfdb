//! `bushu tradeoff --method early-exit|mod|semi-ar|cascade ...`: sweeps an adaptive-computation method's
//! knob and writes its quality/compute table (`tradeoff-METHOD.md`) and chart (`tradeoff-METHOD.svg`)
//! into `--out` (or `--out-md` / `--out-svg`) ([`crate::tradeoff`]; docs/ADAPTIVE.md). The per-token
//! methods (early exit, mixture of depths, semi-autoregressive decoding with Medusa heads) are measured
//! against the full model on held-out text (`--model M --file TEXT`); the cascade's threshold sweep runs
//! over prompts (`--cascade SMALL,LARGE --prompts FILE`), the same function as `bushu cascade-report`.

use super::cascade::{sweep_prompts, CascadeDataArgs};
use super::ModelArgs;
use crate::model::exit_adapters::ExitAdapters;
use crate::model::mixture_of_depths::Routers;
use crate::perplexity::tokenize_text;
use crate::spec_decode::medusa::MedusaHeads;
use crate::tradeoff::early_exit::EarlyExitMethod;
use crate::tradeoff::mixture_of_depths::ModMethod;
use crate::tradeoff::semi_ar::SemiArMethod;
use crate::tradeoff::{check_svg, heldout, measure, parse_points, plot_with, table, Method, Sizes};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The methods `--method` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Early exit by entropy; the knob is the threshold H (nats).
    EarlyExit,
    /// Mixture of depths (--mod-routers); the knob is the capacity C.
    Mod,
    /// Semi-autoregressive decoding with Medusa heads (--medusa, lossy); the knob is K, head tokens per
    /// forward pass (0 to the number of heads).
    SemiAr,
    /// Cascade decoding (--cascade SMALL,LARGE --prompts FILE); the knob is the cascade threshold.
    Cascade,
}

impl MethodArg {
    fn flag(self) -> &'static str {
        match self {
            MethodArg::EarlyExit => "early-exit",
            MethodArg::Mod => "mod",
            MethodArg::SemiAr => "semi-ar",
            MethodArg::Cascade => "cascade",
        }
    }
}

#[derive(Args)]
pub struct TradeoffArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The method whose knob is swept.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Held-out text: teacher-forced windows from its start, prompts for greedy continuations after them
    /// (every method but cascade, which takes --prompts FILE).
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// The knob's settings (comma-separated, at least 5 for a curve; default: the method's own; for
    /// cascade the thresholds, default 0, 0.1, ..., 1).
    #[arg(
        long,
        visible_alias = "thresholds",
        value_name = "A,B,...",
        allow_hyphen_values = true
    )]
    pub points: Option<String>,
    /// Directory for the table and the chart (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The table's file (default: OUT/tradeoff-METHOD.md).
    #[arg(long, value_name = "F.md")]
    pub out_md: Option<PathBuf>,
    /// The chart's file (default: OUT/tradeoff-METHOD.svg).
    #[arg(long, value_name = "F.svg")]
    pub out_svg: Option<PathBuf>,
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
    /// Semi-AR: the Medusa heads file (`bushu train-medusa`) for the model.
    #[arg(long, value_name = "HEADS.gguf")]
    pub medusa: Option<PathBuf>,
    /// Cascade: its models, smallest first (one vocabulary).
    #[arg(long, value_name = "M1,M2[,M3]", value_delimiter = ',')]
    pub cascade: Vec<PathBuf>,
    /// Cascade: the reliability classifier (`bushu cascade-train`; without it, the answer's
    /// geometric-mean token probability).
    #[arg(long, value_name = "C.json")]
    pub cascade_classifier: Option<PathBuf>,
    /// Teacher-forced windows of the held-out text (default 2).
    #[arg(long)]
    pub windows: Option<usize>,
    /// Tokens per teacher-forced window (default 160).
    #[arg(long)]
    pub window: Option<usize>,
    /// Prompt tokens of each window, not scored (default 32).
    #[arg(long)]
    pub prefix: Option<usize>,
    /// The per-token methods: the number of prompts continued greedily (default 4), taken from --file.
    /// Cascade: the prompts file, one per line (a line starting with `"` is a JSON string).
    #[arg(long, value_name = "N|FILE")]
    pub prompts: Option<String>,
    /// Tokens per prompt of the per-token methods (default 32).
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Tokens generated per prompt (default 32; cascade 48).
    #[arg(short = 'n', long, visible_alias = "n-predict")]
    pub n: Option<usize>,
    /// Also print the points as one JSON object (the last line).
    #[arg(long)]
    pub json: bool,
}

/// Refuses the flags of other methods than `m`: one line naming the flag and its method.
fn check_flags(a: &TradeoffArgs) -> Result<()> {
    let m = a.method;
    let own: [(&str, bool, MethodArg); 6] = [
        ("--exit-layers", a.exit_layers.is_some(), MethodArg::EarlyExit),
        ("--exit-adapters", a.exit_adapters.is_some(), MethodArg::EarlyExit),
        ("--mod-routers", a.mod_routers.is_some(), MethodArg::Mod),
        ("--medusa", a.medusa.is_some(), MethodArg::SemiAr),
        ("--cascade", !a.cascade.is_empty(), MethodArg::Cascade),
        (
            "--cascade-classifier",
            a.cascade_classifier.is_some(),
            MethodArg::Cascade,
        ),
    ];
    for (flag, given, owner) in own {
        if given && owner != m {
            bail!("{flag} belongs to --method {}, not --method {}", owner.flag(), m.flag());
        }
    }
    if m == MethodArg::Cascade {
        let per_token = [
            ("--file", a.file.is_some()),
            ("--windows", a.windows.is_some()),
            ("--window", a.window.is_some()),
            ("--prefix", a.prefix.is_some()),
            ("--prompt-tokens", a.prompt_tokens.is_some()),
        ];
        if let Some((flag, _)) = per_token.iter().find(|(_, given)| *given) {
            bail!("{flag} belongs to the per-token methods (early-exit, mod, semi-ar); --method cascade takes --prompts FILE");
        }
    }
    match m {
        MethodArg::Mod if a.mod_routers.is_none() => {
            bail!("--method mod needs --mod-routers R.gguf (the routers bushu train-routers wrote)")
        }
        MethodArg::SemiAr if a.medusa.is_none() => {
            bail!("--method semi-ar needs --medusa HEADS.gguf (Medusa heads for the model, bushu train-medusa)")
        }
        MethodArg::Cascade if a.cascade.is_empty() => {
            bail!("--method cascade needs --cascade SMALL,LARGE[,...] (the models, smallest first)")
        }
        MethodArg::Cascade if a.model.model.is_some() => {
            bail!("--method cascade takes its models with --cascade SMALL,LARGE (not --model)")
        }
        MethodArg::Cascade if a.prompts.is_none() => {
            bail!("--method cascade needs --prompts FILE (the prompts, one per line)")
        }
        MethodArg::Cascade => {}
        _ if a.file.is_none() => bail!("--method {} needs --file TEXT (held-out text)", m.flag()),
        _ => {}
    }
    Ok(())
}

/// Where the table and the chart go: `--out-md` / `--out-svg`, else `--out/tradeoff-METHOD.{md,svg}`;
/// the chart's path is checked (the directories are created when written, [`parent_dir`]).
fn outputs(a: &TradeoffArgs) -> Result<(PathBuf, PathBuf)> {
    let name = a.method.flag();
    let md = a
        .out_md
        .clone()
        .unwrap_or_else(|| a.out.join(format!("tradeoff-{name}.md")));
    let svg = a
        .out_svg
        .clone()
        .unwrap_or_else(|| a.out.join(format!("tradeoff-{name}.svg")));
    check_svg(&svg)?;
    Ok((md, svg))
}

/// Creates the directory `path` goes into.
fn parent_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Writes the table and the chart (`draw` draws it into the path given).
fn write(md_path: &Path, md: &str, svg_path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    parent_dir(md_path)?;
    std::fs::write(md_path, md).with_context(|| format!("cannot write {}", md_path.display()))?;
    parent_dir(svg_path)?;
    draw(svg_path)
}

/// `bushu tradeoff --method cascade`: [`sweep_prompts`] (what `cascade-report` runs), its table with the
/// pick within 1 point of agreement (the budget), and its chart.
fn cascade(a: TradeoffArgs, thresholds: Vec<f64>) -> Result<()> {
    let prompts = PathBuf::from(a.prompts.as_deref().expect("checked"));
    let data = CascadeDataArgs {
        model: a.model.clone(),
        cascade: a.cascade.clone(),
        prompts: prompts.clone(),
        n: a.n.unwrap_or(48),
        ctx: None,
        no_bos: false,
    };
    for &t in &thresholds {
        crate::cascade::check_threshold(t)?;
    }
    let (md_path, svg_path) = outputs(&a)?;
    let s = sweep_prompts(&data, a.cascade_classifier.as_deref(), &thresholds, "tradeoff")?;
    let names = s.names();
    let title = format!("cascade: {}", names.join(" → "));
    let md = format!("# {title}\n\nPrompts: {}.\n\n{}", prompts.display(), s.text(1.0));
    write(&md_path, &md, &svg_path, |p| {
        crate::tradeoff::cascade::plot(p, &title, &s.rows, &names[0])
    })?;
    print!("{md}");
    eprintln!("[wrote {} and {}]", md_path.display(), svg_path.display());
    if a.json {
        let mut v = s.json(1.0);
        v["method"] = "cascade".into();
        println!("{v}");
    }
    Ok(())
}

pub fn tradeoff(a: TradeoffArgs) -> Result<()> {
    let points = a.points.as_deref().map(parse_points).transpose()?;
    check_flags(&a)?;
    if a.method == MethodArg::Cascade {
        return cascade(a, points.unwrap_or_default());
    }
    let prompts = match a.prompts.as_deref() {
        None => 4,
        Some(p) => p.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!("--prompts: {p:?} is not a number of prompts (a prompts file goes with --method cascade)")
        })?,
    };
    let layers = a
        .exit_layers
        .as_deref()
        .map(crate::model::early_exit::parse_layers)
        .transpose()?;
    let file_path = a.file.clone().expect("checked");
    let text = std::fs::read(&file_path).with_context(|| format!("cannot read {}", file_path.display()))?;
    let Ok(text) = String::from_utf8(text) else {
        bail!("{} is not UTF-8 text", file_path.display());
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
        MethodArg::SemiAr => {
            let path = a.medusa.as_ref().expect("checked");
            Box::new(SemiArMethod::new(&model, MedusaHeads::load(path, &file)?)?)
        }
        MethodArg::Cascade => unreachable!("the cascade's sweep runs above"),
    };
    let points = points.unwrap_or_else(|| method.default_points());
    for &p in &points {
        method.check_point(p)?;
    }
    let (md_path, svg_path) = outputs(&a)?;
    let tok = &file.tokenizer;
    let tokens = tokenize_text(tok, &text)?;
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let d = Sizes::default();
    let sizes = Sizes {
        windows: a.windows.unwrap_or(d.windows),
        window: a.window.unwrap_or(d.window),
        prefix: a.prefix.unwrap_or(d.prefix),
        prompts,
        prompt: a.prompt_tokens.unwrap_or(d.prompt),
        n: a.n.unwrap_or(d.n),
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
    let mut md = format!(
        "# {}: {name}\n\n{} windows of {} tokens ({} prompt tokens each) teacher-forced, {} prompts of {} tokens continued by {} greedy tokens, from {}.\n\n",
        method.name(),
        sizes.windows,
        sizes.window,
        sizes.prefix,
        sizes.prompts,
        sizes.prompt,
        sizes.n,
        file_path.display()
    );
    md += &table(method.as_ref(), &rows);
    let notes = method.notes(&held)?;
    if !notes.is_empty() {
        md += "\n";
        md += &notes;
    }
    let title = format!("{}: {name}", method.name());
    write(&md_path, &md, &svg_path, |p| {
        plot_with(p, &title, method.compute_axis(), &rows)
    })?;
    print!("{md}");
    eprintln!("[wrote {} and {}]", md_path.display(), svg_path.display());
    if a.json {
        println!("{}", serde_json::json!({"method": method.name(), "points": rows}));
    }
    Ok(())
}
