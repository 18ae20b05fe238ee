//! `spe-policy errata`: the errata catalogue as markdown, JSON or a table, and the generated
//! documents in `docs/errata/`.

use std::io::Write;
use std::path::PathBuf;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use spe_policies::{Policy, errata_doc};
use spe_policy::{BackingStrategy, Erratum, Profile};

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The markdown documents.
    Md,
    /// JSON.
    Json,
    /// A terminal table.
    Table,
}

/// Arguments of `errata`.
#[derive(clap::Args, Debug)]
pub struct ErrataArgs {
    /// Only this strategy (pin-all, pin-buffer, fault-translate, shadow-buffer).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the generated documents into DIR (docs/errata).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["check", "strategy"])]
    pub write: Option<PathBuf>,
    /// Check that the documents in DIR are what the code generates (exit 1 if stale).
    #[arg(long, value_name = "DIR", conflicts_with = "strategy")]
    pub check: Option<PathBuf>,
}

#[derive(Serialize)]
struct JsonStrategy {
    strategy: &'static str,
    profile: Profile,
    errata: &'static [Erratum],
}

/// Each erratum's measured impact: the default config and the shipped scenarios run in the
/// simulator (from the repository root); empty when they cannot be read.
fn measured() -> std::collections::HashMap<&'static str, String> {
    use spe_policy::config::{StrategyName, load_toml};
    use spe_policy_sim::{CostModel, STRATEGIES, evidence, load_scenarios, run_one};
    let Ok(src) = std::fs::read_to_string("configs/default.toml") else {
        return Default::default();
    };
    let (Ok(config), Ok(scenarios)) = (
        load_toml(&src),
        load_scenarios(std::path::Path::new("configs/scenarios")),
    ) else {
        return Default::default();
    };
    let cost = CostModel::default();
    let mut out = std::collections::HashMap::new();
    // Several errata share a scenario: each (scenario, strategy) runs once.
    let mut runs = std::collections::HashMap::new();
    for (name, errata) in spe_policies::all_errata() {
        let Some(strategy) = STRATEGIES
            .into_iter()
            .find(|s: &StrategyName| s.as_str() == name)
        else {
            continue;
        };
        for e in errata {
            let Some(sc) = scenarios.iter().find(|s| s.name == e.scenario) else {
                continue;
            };
            let run = runs
                .entry((e.scenario, name))
                .or_insert_with(|| run_one(&config, sc, strategy, cost));
            if let Ok(m) = run {
                out.insert(e.id, evidence::impact(e.id, m));
            }
        }
    }
    out
}

/// Runs the command: 0 ok, 1 stale documents or unknown strategy, 2 I/O error.
pub fn run(args: &ErrataArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let figures = if args.write.is_some() || args.check.is_some() || args.format == Format::Md {
        measured()
    } else {
        Default::default()
    };
    let impact = |e: &Erratum| figures.get(e.id).cloned();
    if let Some(dir) = &args.write {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let _ = writeln!(err, "error: {}: {e}", dir.display());
            return 2;
        }
        for (name, text) in errata_doc::all_pages(&impact) {
            let path = dir.join(&name);
            if let Err(e) = std::fs::write(&path, text) {
                let _ = writeln!(err, "error: {}: {e}", path.display());
                return 2;
            }
            let _ = writeln!(out, "wrote {}", path.display());
        }
        return 0;
    }
    if let Some(dir) = &args.check {
        let mut stale = 0;
        for (name, text) in errata_doc::all_pages(&impact) {
            let path = dir.join(&name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                let _ = writeln!(
                    err,
                    "stale: {} (regenerate with `spe-policy errata --write {}`)",
                    path.display(),
                    dir.display()
                );
                stale += 1;
            }
        }
        return i32::from(stale > 0);
    }
    let all = Policy::all_defaults();
    let chosen: Vec<&Policy> = match &args.strategy {
        None => all.iter().collect(),
        Some(name) => {
            let found: Vec<&Policy> = all.iter().filter(|p| p.name() == name).collect();
            if found.is_empty() {
                let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
                let _ = writeln!(
                    err,
                    "error: --strategy {name:?} is not a strategy; choose one of {}",
                    names.join(", ")
                );
                return 1;
            }
            found
        }
    };
    let r = match args.format {
        Format::Md => chosen
            .iter()
            .try_for_each(|p| write!(out, "{}", errata_doc::strategy_page(p, &impact))),
        Format::Json => {
            let docs: Vec<JsonStrategy> = chosen
                .iter()
                .map(|p| JsonStrategy {
                    strategy: p.name(),
                    profile: p.profile(),
                    errata: p.errata(),
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &docs)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out))
        }
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(["strategy", "id", "title", "guest told"]);
            for p in &chosen {
                for e in p.errata() {
                    let told = match e.guest_told {
                        spe_policy::GuestTold::No => "no".to_string(),
                        spe_policy::GuestTold::NoticeBit(b) => format!("bit {b}"),
                    };
                    t.add_row([p.name(), e.id, e.title, told.as_str()]);
                }
            }
            writeln!(out, "{t}")
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: writing the output: {e}");
            2
        }
    }
}
