//! `spe-policy compare` and `spe-policy simulate`: the strategies side by side on the same
//! scenarios, in the simulator, on every core.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spe_policy::config::{SpeConfig, StrategyName, load_toml};
use spe_policy_sim::{
    CostModel, Metrics, STRATEGIES, Scenario, Thresholds, check, compare_parallel, load_scenarios,
};

use crate::plots;

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A terminal table.
    Table,
    /// JSON lines, one object per strategy and scenario.
    Json,
}

/// Arguments of `compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// VMM configs (a TOML file with an `[spe]` table) and scenario files (TOML with
    /// `duration_ms`), in any mix. Without a config, configs/default.toml; without scenarios,
    /// every file in --scenarios.
    pub inputs: Vec<PathBuf>,
    /// The directory of scenario files used when no scenario file is given.
    #[arg(long, default_value = "configs/scenarios")]
    pub scenarios: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write metrics.json and SVG plots (lost records by cause, pinned bytes over time,
    /// blackout windows) into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Only this strategy (default: all four).
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<StrategyName>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The VMM config.
    #[arg(long, default_value = "configs/default.toml")]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write metrics.json and SVG plots into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn parse_strategy(s: &str) -> Result<StrategyName, String> {
    STRATEGIES
        .into_iter()
        .find(|n| n.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = STRATEGIES.iter().map(|n| n.as_str()).collect();
            format!("not a strategy; choose one of {}", names.join(", "))
        })
}

/// A problem with the inputs, with its exit code (1 invalid, 2 unreadable).
struct Failure(i32, String);

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure(2, format!("{}: cannot read: {e}", path.display())))
}

fn load_config(path: &Path, src: &str) -> Result<SpeConfig, Failure> {
    load_toml(src).map_err(|errs| {
        let lines: Vec<String> = errs
            .0
            .iter()
            .map(|e| format!("{}:{e}", path.display()))
            .collect();
        Failure(1, lines.join("\nerror: "))
    })
}

fn load_scenario(path: &Path, src: &str) -> Result<Scenario, Failure> {
    Scenario::from_toml(&path.display().to_string(), src).map_err(|e| Failure(1, e.to_string()))
}

/// Sorts the inputs into one config and the scenarios.
fn inputs(args: &CompareArgs) -> Result<(SpeConfig, Vec<Scenario>), Failure> {
    let mut config = None;
    let mut scenarios = Vec::new();
    for path in &args.inputs {
        let src = read(path)?;
        let is_scenario = src
            .parse::<toml::Table>()
            .map(|t| t.contains_key("duration_ms"))
            .unwrap_or(false);
        if is_scenario {
            scenarios.push(load_scenario(path, &src)?);
        } else if config.is_some() {
            return Err(Failure(
                1,
                format!(
                    "{}: a second config; give one config and any number of scenarios",
                    path.display()
                ),
            ));
        } else {
            config = Some(load_config(path, &src)?);
        }
    }
    let config = match config {
        Some(c) => c,
        None => {
            let path = Path::new("configs/default.toml");
            load_config(path, &read(path)?)?
        }
    };
    if scenarios.is_empty() {
        scenarios = load_scenarios(&args.scenarios).map_err(|e| Failure(1, e))?;
        if scenarios.is_empty() {
            return Err(Failure(
                1,
                format!("{}: no *.toml scenarios", args.scenarios.display()),
            ));
        }
    }
    Ok((config, scenarios))
}

/// Runs the jobs with a progress bar that appears once they take more than a second.
fn run_jobs(
    config: &SpeConfig,
    scenarios: &[Scenario],
    strategies: &[StrategyName],
    threads: Option<usize>,
) -> Result<Vec<Metrics>, String> {
    let total = (scenarios.len() * strategies.len()) as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} runs {elapsed}") {
        bar.set_style(style);
    }
    let start = Instant::now();
    let done = || {
        if bar.is_hidden() && start.elapsed() > Duration::from_secs(1) {
            // Hidden again by indicatif itself when stderr is not a terminal.
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.inc(1);
    };
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let r = compare_parallel(
        config,
        scenarios,
        strategies,
        CostModel::default(),
        threads,
        &done,
    );
    bar.finish_and_clear();
    r
}

/// Runs `compare`: 0 ok, 1 invalid input, 2 unreadable or unwritable.
pub fn run(args: &CompareArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let (config, scenarios) = match inputs(args) {
        Ok(x) => x,
        Err(Failure(code, msg)) => {
            let _ = writeln!(err, "error: {msg}");
            return code;
        }
    };
    let output = Output {
        format: args.format,
        dir: args.out.as_deref(),
    };
    run_and_report(
        &config,
        &scenarios,
        &STRATEGIES,
        args.threads,
        &output,
        out,
        err,
    )
}

/// Runs `simulate`: one scenario, one or every strategy.
pub fn simulate(args: &SimulateArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let loaded = read(&args.config)
        .and_then(|src| load_config(&args.config, &src))
        .and_then(|c| {
            let src = read(&args.scenario)?;
            Ok((c, load_scenario(&args.scenario, &src)?))
        });
    let (config, mut scenario) = match loaded {
        Ok(x) => x,
        Err(Failure(code, msg)) => {
            let _ = writeln!(err, "error: {msg}");
            return code;
        }
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let strategies: Vec<StrategyName> = match args.strategy {
        Some(s) => vec![s],
        None => STRATEGIES.to_vec(),
    };
    let output = Output {
        format: args.format,
        dir: args.out.as_deref(),
    };
    run_and_report(&config, &[scenario], &strategies, None, &output, out, err)
}

/// Where the results go.
struct Output<'a> {
    format: Format,
    dir: Option<&'a Path>,
}

/// Runs the jobs and reports them: 0 ok, 1 a run failed, 2 output failed.
fn run_and_report(
    config: &SpeConfig,
    scenarios: &[Scenario],
    strategies: &[StrategyName],
    threads: Option<usize>,
    output: &Output<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match run_jobs(config, scenarios, strategies, threads) {
        Ok(metrics) => report(config, scenarios, &metrics, output, out, err),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}

fn mib(b: f64) -> String {
    format!("{:.2} MiB", b / (1u64 << 20) as f64)
}

fn report(
    config: &SpeConfig,
    scenarios: &[Scenario],
    metrics: &[Metrics],
    output: &Output<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let (format, dir) = (output.format, output.dir);
    if let Some(Err(e)) = dir.map(|d| write_out(d, metrics)) {
        let _ = writeln!(
            err,
            "error: {}: {e}",
            dir.unwrap_or(Path::new("")).display()
        );
        return 2;
    }
    let r = match format {
        Format::Json => metrics.iter().try_for_each(|m| {
            let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        }),
        Format::Table => write_tables(config, scenarios, metrics, out),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: writing the output: {e}");
            2
        }
    }
}

fn write_out(dir: &Path, metrics: &[Metrics]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(metrics).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("metrics.json"), json + "\n")?;
    plots::write_all(dir, metrics)
}

fn write_tables(
    config: &SpeConfig,
    scenarios: &[Scenario],
    metrics: &[Metrics],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "scenario",
            "strategy",
            "records kept",
            "lost: blackout / recovery / fatal",
            "S2 faults",
            "fatal",
            "pinned peak / mean",
            "longest blackout",
            "migration downtime",
        ]);
    for m in metrics {
        t.add_row([
            m.scenario.clone(),
            m.strategy.clone(),
            format!(
                "{:.2}%",
                100.0 * m.records_written as f64 / m.records_attempted.max(1) as f64
            ),
            format!(
                "{} / {} / {}",
                m.lost_blackout, m.lost_recovery, m.lost_fatal
            ),
            m.stage2_faults.to_string(),
            m.fatal_events.to_string(),
            format!(
                "{} / {}",
                mib(m.pinned_peak_bytes as f64),
                mib(m.pinned_mean_bytes)
            ),
            format!("{:.1} µs", m.longest_blackout_ns / 1000.0),
            if m.migration_downtime_ns > 0.0 {
                format!("{:.1} ms", m.migration_downtime_ns / 1e6)
            } else {
                "-".into()
            },
        ]);
    }
    let mut p = Table::new();
    p.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["strategy", "measured", "evidence"]);
    for v in check(config, scenarios, metrics, &Thresholds::default()) {
        let measured: Vec<&str> = v.measured.iter().map(|p| p.name()).collect();
        p.add_row([
            v.strategy.clone(),
            measured.join(" + "),
            v.evidence.join("\n"),
        ]);
    }
    writeln!(
        out,
        "{} vCPUs, {} buffers, 64 MiB of simulated RAM; pins, blackouts and copies priced by the cost model (docs/DESIGN.md)\n{t}\n\nCheap, fast, reliable: what the measurements support\n{p}",
        config.guest.vcpus.clamp(1, 8),
        config.guest.buffer_per_vcpu,
    )
}
