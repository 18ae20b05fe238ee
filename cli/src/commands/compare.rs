//! `spe-policy compare` and `spe-policy simulate`: the strategies side by side on the same
//! scenarios and the same VM, in the simulator, on every core.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use spe_policy::VmSpec;
use spe_policy::config::{SpeConfig, StrategyName, load_toml};
use spe_policy_sim::verdict::{dur, pct, rules};
use spe_policy_sim::{
    CostModel, DEFAULT_CONFIG, LossCause, Metrics, STRATEGIES, Scenario, Thresholds, Verdicts,
    builtin, compare_parallel, judge, load_scenarios, read_bounded, vm_for, vm_table,
};

use crate::exit;
use crate::plots;

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A terminal summary (100 columns).
    Table,
    /// One JSON document: the VM, every run's metrics, the verdicts and the recommendation.
    Json,
}

/// A strategy name on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyArg {
    /// pin-all.
    PinAll,
    /// pin-buffer.
    PinBuffer,
    /// fault-translate.
    FaultTranslate,
    /// shadow-buffer.
    ShadowBuffer,
}

impl From<StrategyArg> for StrategyName {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::PinAll => StrategyName::PinAll,
            StrategyArg::PinBuffer => StrategyName::PinBuffer,
            StrategyArg::FaultTranslate => StrategyName::FaultTranslate,
            StrategyArg::ShadowBuffer => StrategyName::ShadowBuffer,
        }
    }
}

/// Arguments of `compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// A VMM config (TOML with an `[spe]` table) and scenario files (TOML with
    /// `duration_ms`), in any mix. Without a config, the built-in default; without scenarios,
    /// the built-in ones (or --scenarios DIR).
    pub inputs: Vec<PathBuf>,
    /// A directory of scenario files to run instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,
    /// A VM file whose `[vm]` table (vcpus, ram, buffer_per_vcpu, guest_granule,
    /// host_page_size, pa_bits, max_record, write_order, lock_limit) overrides every
    /// scenario's.
    #[arg(long, value_name = "FILE")]
    pub vm: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also print the per-scenario matrix.
    #[arg(long)]
    pub detail: bool,
    /// Also write metrics.json, SVG plots and an index.html into DIR.
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
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The VMM config (default: the built-in default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A VM file whose `[vm]` table overrides the scenario's.
    #[arg(long, value_name = "FILE")]
    pub vm: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also print the per-run matrix.
    #[arg(long)]
    pub detail: bool,
    /// Also write metrics.json, SVG plots and an index.html into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// A problem with the inputs, with its exit code (1 invalid, 3 unreadable).
struct Failure(i32, String);

fn read(path: &Path) -> Result<String, Failure> {
    read_bounded(path).map_err(|e| Failure(exit::for_read_error(&e), e.to_string()))
}

fn load_config(name: &str, src: &str) -> Result<SpeConfig, Failure> {
    load_toml(src).map_err(|errs| {
        let lines: Vec<String> = errs.0.iter().map(|e| format!("{name}:{e}")).collect();
        Failure(1, lines.join("\nerror: "))
    })
}

fn load_scenario(path: &Path, src: &str) -> Result<Scenario, Failure> {
    Scenario::from_toml(&path.display().to_string(), src).map_err(|e| Failure(1, e.to_string()))
}

/// What a comparison runs.
struct Inputs {
    config: SpeConfig,
    config_name: String,
    vm: Option<toml::Table>,
    scenarios: Vec<Scenario>,
}

fn load_vm(path: Option<&Path>) -> Result<Option<toml::Table>, Failure> {
    path.map(|p| {
        let src = read(p)?;
        vm_table(&p.display().to_string(), &src).map_err(|e| Failure(1, e))
    })
    .transpose()
}

/// A config file's optional `[compare]` table: what `compare CONFIG` runs when the command
/// line names no scenarios or VM. Paths are relative to the config file, so a config and its
/// scenarios move together.
#[derive(Default)]
struct CompareTable {
    scenarios: Vec<PathBuf>,
    vm: Option<PathBuf>,
}

/// Reads `[compare] scenarios = ["file.toml", "dir/"]` and `vm = "file.toml"`, resolved against
/// the config's directory.
fn compare_table(config: &Path, src: &str) -> Result<CompareTable, Failure> {
    let Ok(doc) = src.parse::<toml::Table>() else {
        // load_config reports the syntax error with its line.
        return Ok(CompareTable::default());
    };
    let Some(t) = doc.get("compare") else {
        return Ok(CompareTable::default());
    };
    let name = config.display();
    let bad = |key: &str, what: String| {
        Failure(
            1,
            format!(
                "{name}: compare.{key} = {what}; write paths relative to the config, e.g. scenarios = [\"scenarios/\"], vm = \"vms/large.toml\""
            ),
        )
    };
    let toml::Value::Table(t) = t else {
        return Err(bad("", format!("{t}: [compare] must be a table")));
    };
    let base = config.parent().unwrap_or(Path::new(""));
    let mut out = CompareTable::default();
    for (k, v) in t {
        match (k.as_str(), v) {
            ("scenarios", toml::Value::Array(items)) => {
                for item in items {
                    let toml::Value::String(p) = item else {
                        return Err(bad(
                            "scenarios",
                            format!("{item}: each entry must be a path string"),
                        ));
                    };
                    out.scenarios.push(base.join(p));
                }
            }
            ("scenarios", other) => {
                return Err(bad(
                    "scenarios",
                    format!("{other}: must be a list of paths"),
                ));
            }
            ("vm", toml::Value::String(p)) => out.vm = Some(base.join(p)),
            ("vm", other) => return Err(bad("vm", format!("{other}: must be a path string"))),
            (other, _) => {
                return Err(bad(
                    other,
                    "unknown key: [compare] takes scenarios and vm".to_string(),
                ));
            }
        }
    }
    Ok(out)
}

/// Sorts the inputs into one config and the scenarios.
fn inputs(args: &CompareArgs) -> Result<Inputs, Failure> {
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
            let name = path.display().to_string();
            let table = compare_table(path, &src)?;
            config = Some((load_config(&name, &src)?, name, table));
        }
    }
    let (config, config_name, table) = match config {
        Some(c) => c,
        None => (
            load_config("(built-in default)", DEFAULT_CONFIG)?,
            "the built-in default config".to_string(),
            CompareTable::default(),
        ),
    };
    if scenarios.is_empty() {
        // The command line first, then the config's [compare] table, then the built-in set.
        scenarios = match (&args.scenarios, table.scenarios.is_empty()) {
            (Some(dir), _) => load_scenarios(dir).map_err(|e| Failure(1, e))?,
            (None, false) => {
                let mut all = Vec::new();
                for p in &table.scenarios {
                    if p.is_dir() {
                        all.extend(load_scenarios(p).map_err(|e| Failure(1, e))?);
                    } else {
                        all.push(load_scenario(p, &read(p)?)?);
                    }
                }
                all
            }
            (None, true) => builtin().map_err(|e| Failure(1, e))?,
        };
        if scenarios.is_empty() {
            return Err(Failure(1, "no *.toml scenarios to run".into()));
        }
    }
    let vm = load_vm(args.vm.as_deref().or(table.vm.as_deref()))?;
    // Every scenario's VM is checked before anything runs.
    for s in &scenarios {
        vm_for(s, vm.as_ref()).map_err(|e| Failure(1, e))?;
    }
    Ok(Inputs {
        config,
        config_name,
        vm,
        scenarios,
    })
}

/// Runs the jobs with a progress bar that appears once they take more than a second.
fn run_jobs(
    inputs: &Inputs,
    strategies: &[StrategyName],
    threads: Option<usize>,
) -> Vec<Result<Metrics, String>> {
    let total = (inputs.scenarios.len() * strategies.len()) as u64;
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
        &inputs.config,
        inputs.vm.as_ref(),
        &inputs.scenarios,
        strategies,
        CostModel::default(),
        threads,
        &done,
    );
    bar.finish_and_clear();
    r
}

/// Runs `compare`: 0 ok, 1 invalid input or a failed run, 3 unreadable or unwritable.
pub fn run(args: &CompareArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let inputs = match inputs(args) {
        Ok(x) => x,
        Err(Failure(code, msg)) => {
            let _ = writeln!(err, "error: {msg}");
            return code;
        }
    };
    let output = Output {
        format: args.format,
        detail: args.detail,
        dir: args.out.as_deref(),
    };
    run_and_report(&inputs, &STRATEGIES, args.threads, &output, out, err)
}

/// Runs `simulate`: one scenario, one or every strategy.
pub fn simulate(args: &SimulateArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let loaded = (|| {
        let (config, config_name) = match &args.config {
            Some(p) => {
                let name = p.display().to_string();
                (load_config(&name, &read(p)?)?, name)
            }
            None => (
                load_config("(built-in default)", DEFAULT_CONFIG)?,
                "the built-in default config".to_string(),
            ),
        };
        let mut scenario = load_scenario(&args.scenario, &read(&args.scenario)?)?;
        if let Some(seed) = args.seed {
            scenario.seed = seed;
        }
        let vm = load_vm(args.vm.as_deref())?;
        vm_for(&scenario, vm.as_ref()).map_err(|e| Failure(1, e))?;
        Ok(Inputs {
            config,
            config_name,
            vm,
            scenarios: vec![scenario],
        })
    })();
    let inputs = match loaded {
        Ok(x) => x,
        Err(Failure(code, msg)) => {
            let _ = writeln!(err, "error: {msg}");
            return code;
        }
    };
    let strategies: Vec<StrategyName> = match args.strategy {
        Some(s) => vec![s.into()],
        None => STRATEGIES.to_vec(),
    };
    let output = Output {
        format: args.format,
        detail: args.detail,
        dir: args.out.as_deref(),
    };
    run_and_report(&inputs, &strategies, None, &output, out, err)
}

/// Where the results go.
struct Output<'a> {
    format: Format,
    detail: bool,
    dir: Option<&'a Path>,
}

/// The JSON document of a comparison.
#[derive(Serialize)]
struct Report<'a> {
    /// The VM each scenario ran (after `--vm`).
    vms: Vec<(&'a str, VmSpec)>,
    runs: &'a [Metrics],
    failed: &'a [String],
    verdicts: &'a Verdicts,
    recommendation: Option<&'a spe_policy_sim::verdict::Recommendation>,
    rules: [String; 4],
}

/// Runs the jobs and reports them: 0 ok, 1 a run failed (the others are still reported),
/// 3 output failed.
fn run_and_report(
    inputs: &Inputs,
    strategies: &[StrategyName],
    threads: Option<usize>,
    output: &Output<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let results = run_jobs(inputs, strategies, threads);
    let mut metrics = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(m) => metrics.push(m),
            Err(e) => failed.push(e),
        }
    }
    for e in &failed {
        let _ = writeln!(err, "error: {e}");
    }
    let t = Thresholds::default();
    let verdicts = judge(&inputs.config, &inputs.scenarios, &metrics, &t);
    let vms: Vec<(&str, VmSpec)> = inputs
        .scenarios
        .iter()
        .filter_map(|s| Some((s.name.as_str(), vm_for(s, inputs.vm.as_ref()).ok()?)))
        .collect();
    let report = Report {
        vms,
        runs: &metrics,
        failed: &failed,
        verdicts: &verdicts,
        recommendation: verdicts.recommendation.as_ref(),
        rules: rules(&t),
    };
    if let Some(Err((dir, e))) = output
        .dir
        .map(|dir| write_out(dir, &report).map_err(|e| (dir, e)))
    {
        let _ = writeln!(err, "error: {}: {e}", dir.display());
        return exit::IO;
    }
    let r = match output.format {
        Format::Json => serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}")),
        Format::Table => {
            let mut text = summary(inputs, &metrics, &verdicts, &t);
            if output.detail {
                text.push('\n');
                text.push_str(&detail(&metrics));
            }
            out.write_all(text.as_bytes())
        }
    };
    match r {
        Ok(()) if failed.is_empty() => 0,
        Ok(()) => 1,
        Err(e) => {
            let _ = writeln!(err, "error: writing the output: {e}");
            exit::IO
        }
    }
}

fn write_out(dir: &Path, report: &Report<'_>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("metrics.json"), json + "\n")?;
    plots::write_all(dir, report.runs)
}

/// A size for people: the largest binary unit with one decimal.
fn size(b: f64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let u = (1u64 << shift) as f64;
        if b >= u {
            return format!("{:.1} {unit}", b / u);
        }
    }
    format!("{b:.0} B")
}

/// Wraps `text` at `width` columns, keeping its leading spaces and indenting continuation
/// lines by `indent`.
fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let lead = text.len() - text.trim_start().len();
    let mut line = " ".repeat(lead);
    for word in text.split_whitespace() {
        if !line.trim().is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(indent);
        } else if !line.trim().is_empty() && !line.ends_with(' ') {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The default output: one screen, at most 100 columns.
fn summary(inputs: &Inputs, metrics: &[Metrics], v: &Verdicts, t: &Thresholds) -> String {
    let mut s = String::new();
    let secs: Vec<f64> = metrics.iter().map(|m| m.duration_ms / 1e3).collect();
    let (lo, hi) = secs
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), x| (a.min(*x), b.max(*x)));
    let vms: Vec<VmSpec> = inputs
        .scenarios
        .iter()
        .filter_map(|sc| vm_for(sc, inputs.vm.as_ref()).ok())
        .collect();
    let head = vms.first().copied().unwrap_or_default();
    let differ = vms.iter().filter(|x| **x != head).count();
    let _ = writeln!(
        s,
        "spe-policy compare: {} scenarios x {} strategies, {} of profiling each",
        inputs.scenarios.len(),
        v.strategies.len(),
        if (hi - lo).abs() < 1e-9 {
            format!("{hi:.1} s")
        } else {
            format!("{lo:.1}-{hi:.1} s")
        }
    );
    let _ = write!(
        s,
        "{}",
        wrap(
            &format!(
                "VM: {} vCPUs, {} RAM, {} AUX buffers, {} guest / {} host pages, {}-bit PA, {} B records, {} writes{}",
                head.vcpus,
                head.ram,
                head.buffer_per_vcpu,
                head.guest_granule,
                head.host_page_size,
                head.pa_bits,
                head.max_record.bytes(),
                head.write_order_name(),
                if differ > 0 {
                    format!(
                        " ({differ} scenario{} change{} it: --detail, --format json)",
                        if differ == 1 { "" } else { "s" },
                        if differ == 1 { "s" } else { "" }
                    )
                } else {
                    String::new()
                }
            ),
            100,
            4
        )
    );
    let _ = writeln!(
        s,
        "Policy: {} (its strategy key is ignored: every strategy runs)\n",
        inputs.config_name
    );
    let _ = writeln!(
        s,
        "{:<16}{:>8}{:>10}{:>9}{:>9}{:>11}{:>18}{:>9}{:>10}",
        "strategy",
        "loss",
        "baseline",
        "stall/s",
        "longest",
        "1st enable",
        "pinned peak",
        "copy CPU",
        "downtime"
    );
    for x in &v.strategies {
        let _ = writeln!(
            s,
            "{:<16}{:>8}{:>10}{:>9}{:>9}{:>11}{:>18}{:>9}{:>10}",
            x.strategy,
            pct(x.loss_fraction),
            pct(x.baseline_fraction),
            dur(x.stall_ns_per_s),
            dur(x.longest_stall_ns),
            dur(x.first_enable_stall_ns),
            format!(
                "{} {}",
                size(x.pinned_peak_bytes as f64),
                pct_short(x.pinned_fraction)
            ),
            pct_short(x.copy_ns_per_s / 1e9),
            if x.downtime_ns > 0.0 {
                dur(x.downtime_ns)
            } else {
                "-".into()
            }
        );
    }
    let _ = writeln!(
        s,
        "loss: samples lost and charged to the strategy; baseline: what bare metal loses too (not\ncharged); stall/s: steady-state vCPU time kept in the host per second of guest time (no sample\nis due then); 1st enable: one-time stall of a vCPU's first enable; copy CPU: share of a CPU."
    );
    // Charged causes, per strategy (only those that occur).
    let mut causes = String::new();
    for x in &v.strategies {
        let runs: Vec<&Metrics> = metrics
            .iter()
            .filter(|m| m.strategy == x.strategy && v.counted.contains(&m.scenario))
            .collect();
        let due: u64 = runs.iter().map(|m| m.samples_due).sum();
        let parts: Vec<String> = LossCause::ALL
            .iter()
            .filter(|c| !c.is_baseline())
            .filter_map(|c| {
                let n: u64 = runs.iter().map(|m| m.lost_to(*c)).sum();
                (n > 0).then(|| format!("{} {}", c.name(), pct(n as f64 / due.max(1) as f64)))
            })
            .collect();
        if !parts.is_empty() {
            let _ = write!(
                causes,
                "{}",
                wrap(&format!("  {}: {}", x.strategy, parts.join(", ")), 100, 4)
            );
        }
    }
    if !causes.is_empty() {
        let _ = write!(s, "\nCharged loss by cause:\n{causes}");
    }
    let starts: Vec<String> = v
        .strategies
        .iter()
        .filter(|x| x.vm_start_ns > 0.0)
        .map(|x| {
            format!(
                "{} spends {} pinning at VM start",
                x.strategy,
                dur(x.vm_start_ns)
            )
        })
        .collect();
    if !starts.is_empty() {
        let _ = write!(
            s,
            "{}",
            wrap(
                &format!(
                    "One-time, before the first vCPU runs: {}.",
                    starts.join("; ")
                ),
                100,
                4
            )
        );
    }
    let _ = writeln!(
        s,
        "\nVerdict (cheap, fast, reliable: what the figures support):"
    );
    for x in &v.strategies {
        let props: Vec<&str> = x.measured.iter().map(|p| p.name()).collect();
        let _ = writeln!(
            s,
            "  {:<16}{}",
            x.strategy,
            if props.is_empty() {
                "none".to_string()
            } else {
                props.join(" + ")
            }
        );
    }
    let r = rules(t);
    let _ = write!(
        s,
        "{}",
        wrap(&format!("Rules: {}; {}; {}.", r[0], r[1], r[2]), 100, 7)
    );
    let left: Vec<&str> = v.left_out.iter().map(|(n, _)| n.as_str()).collect();
    let _ = write!(
        s,
        "{}",
        wrap(
            &format!(
                "Counted: {} scenarios. Left out (exceptional: a guest's or a config's failure mode; see --detail): {}.",
                v.counted.len(),
                if left.is_empty() {
                    "none".to_string()
                } else {
                    left.join(", ")
                }
            ),
            100,
            4
        )
    );
    if let Some(rec) = &v.recommendation {
        let _ = write!(
            s,
            "\n{}",
            wrap(
                &format!("For this config: {}, because {}.", rec.choice, rec.because),
                100,
                4
            )
        );
        if let Some(r) = &rec.runner_up {
            let _ = write!(s, "{}", wrap(&format!("Runner-up: {r}."), 100, 4));
        }
        let _ = write!(
            s,
            "{}",
            wrap(
                &format!("What would change it: {}.", rec.would_change),
                100,
                4
            )
        );
    }
    let _ = writeln!(
        s,
        "\nMore: --detail (per scenario), --format json (everything), --out DIR (plots, index.html)."
    );
    s
}

/// A percentage in few characters.
fn pct_short(f: f64) -> String {
    let p = 100.0 * f;
    if p == 0.0 {
        "0%".into()
    } else if p < 0.1 {
        format!("{p:.3}%")
    } else if p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// The per-scenario matrix: one row per run, one unit per column.
fn detail(metrics: &[Metrics]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<23}{:<16}{:>9}{:>9}{:>10}{:>10}{:>10}{:>8}{:>6}{:>6}",
        "scenario",
        "strategy",
        "due (M)",
        "loss",
        "baseline",
        "stall ms",
        "longest",
        "pinned",
        "S2F",
        "fatal"
    );
    let mut last = "";
    for m in metrics {
        let name = if m.scenario == last { "" } else { &m.scenario };
        last = &m.scenario;
        let _ = writeln!(
            s,
            "{:<23}{:<16}{:>9.2}{:>9}{:>10}{:>10.2}{:>10}{:>8}{:>6}{:>6}",
            name,
            m.strategy,
            m.samples_due as f64 / 1e6,
            pct(m.loss_fraction()),
            pct(m.baseline_lost as f64 / m.samples_due.max(1) as f64),
            m.stall_ns / 1e6,
            dur(m.longest_stall_ns),
            pct_short(m.pinned_fraction()),
            m.stage2_faults,
            m.fatal_events
        );
    }
    let _ = writeln!(
        s,
        "due: samples due, millions; stall ms: all vCPUs; pinned: peak, % of the VM's RAM; S2F: stage 2 faults."
    );
    s
}

trait WriteOrderLabel {
    fn write_order_name(&self) -> &'static str;
}

impl WriteOrderLabel for VmSpec {
    fn write_order_name(&self) -> &'static str {
        match self.write_order {
            spe_policy::config::WriteOrderName::Sequential => "sequential",
            spe_policy::config::WriteOrderName::Unordered => "unordered",
        }
    }
}
