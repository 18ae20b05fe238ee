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
    /// Only this strategy.
    #[arg(long, value_enum)]
    pub strategy: Option<crate::commands::compare::StrategyArg>,
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

/// Each erratum's measured impact: the built-in default config and scenarios run in the
/// simulator (compiled in, so this works from any directory). An erratum whose scenario is
/// missing or whose run fails is an error: the documents never ship without a figure.
fn measured() -> Result<std::collections::HashMap<&'static str, String>, String> {
    use spe_policy::config::{StrategyName, load_toml};
    use spe_policy_sim::{CostModel, DEFAULT_CONFIG, STRATEGIES, builtin, evidence, run_one};
    let config = load_toml(DEFAULT_CONFIG).map_err(|e| format!("the built-in config: {e}"))?;
    let scenarios = builtin()?;
    let cost = CostModel::default();
    let mut out = std::collections::HashMap::new();
    // Several errata share a scenario: each (scenario, strategy) runs once, on every core.
    let mut jobs: Vec<(&'static str, &'static str, StrategyName)> = Vec::new();
    for (name, errata) in spe_policies::all_errata() {
        let Some(strategy) = STRATEGIES
            .into_iter()
            .find(|s: &StrategyName| s.as_str() == name)
        else {
            return Err(format!("strategy {name} is not simulated"));
        };
        for e in errata {
            if !scenarios.iter().any(|s| s.name == e.scenario) {
                return Err(format!(
                    "{}: its scenario `{}` is not among the built-in scenarios",
                    e.id, e.scenario
                ));
            }
            if !jobs
                .iter()
                .any(|(sc, n, _)| *sc == e.scenario && *n == name)
            {
                jobs.push((e.scenario, name, strategy));
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<parking_lot::Mutex<Option<Result<spe_policy_sim::Metrics, String>>>> =
        jobs.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((sc, _, strategy)) = jobs.get(i) else {
                        break;
                    };
                    let Some(scenario) = scenarios.iter().find(|s| s.name == *sc) else {
                        break;
                    };
                    *results[i].lock() = Some(run_one(&config, None, scenario, *strategy, cost));
                }
            });
        }
    });
    let runs: Vec<Result<spe_policy_sim::Metrics, String>> = results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|| Err("a run did not finish".into()))
        })
        .collect();
    for (name, errata) in spe_policies::all_errata() {
        for e in errata {
            let i = jobs
                .iter()
                .position(|(sc, n, _)| *sc == e.scenario && *n == name)
                .ok_or_else(|| format!("{}: not run", e.id))?;
            match &runs[i] {
                Ok(m) => {
                    out.insert(e.id, evidence::impact(e.id, m));
                }
                Err(err) => return Err(format!("{}: {err}", e.id)),
            }
        }
    }
    Ok(out)
}

/// Runs the command: 0 ok, 1 stale documents or a measurement missing, 3 I/O error.
pub fn run(args: &ErrataArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let figures = if args.write.is_some() || args.check.is_some() || args.format == Format::Md {
        match measured() {
            Ok(f) => f,
            Err(e) => {
                let _ = writeln!(err, "error: measuring the errata: {e}");
                return 1;
            }
        }
    } else {
        Default::default()
    };
    let impact = |e: &Erratum| figures.get(e.id).cloned();
    if let Some(dir) = &args.write {
        if let Err(e) = std::fs::create_dir_all(dir) {
            let _ = writeln!(err, "error: {}: {e}", dir.display());
            return crate::exit::IO;
        }
        for (name, text) in errata_doc::all_pages(&impact) {
            let path = dir.join(&name);
            if let Err(e) = std::fs::write(&path, text) {
                let _ = writeln!(err, "error: {}: {e}", path.display());
                return crate::exit::IO;
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
    let chosen: Vec<&Policy> = match args.strategy {
        None => all.iter().collect(),
        Some(s) => {
            let name = spe_policy::config::StrategyName::from(s).as_str();
            all.iter().filter(|p| p.name() == name).collect()
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
