//! # spe-policy-sim
//!
//! A deterministic simulator of a VM whose vCPUs profile with SPE while the host reclaims,
//! merges, migrates and the guest remaps, run against each backing strategy to compare what the
//! guest and the host see (ARCHITECTURE.md §2). It models the SPU, the Linux guest driver's
//! buffer handling (per-CPU and per-task), the stage 2 events of the scenarios in
//! `configs/scenarios/`, and the metrics of [`Metrics`]: profile loss charged against bare
//! metal, vCPU stalls, pins, copies, migration downtime; [`verdict`] turns them into verdicts.
#![deny(missing_docs)]

pub mod engine;
pub mod evidence;
pub mod scenario;
pub mod verdict;

use std::path::Path;

pub use engine::{
    CostModel, FaultOrigin, Loss, LossCause, LossOrigin, Metrics, RunOptions, SimError, StallKind,
    run,
};
pub use scenario::{HostEventKind, Scenario, ScenarioError, ScheduledEvent};
pub use verdict::{Thresholds, Verdicts, judge};

use spe_policies::Policy;
use spe_policy::VmSpec;
use spe_policy::config::{
    ConfigFile, DirtyLogHandling, MigrationPolicy, RecoveryName, SpeConfig, StrategyName,
};

macro_rules! builtin_scenarios {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../configs/scenarios/", $name, ".toml")))),*]
    };
}

/// The default config (`configs/default.toml`), compiled in so `compare` runs from anywhere.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

/// The shipped scenarios (`configs/scenarios/*.toml`), compiled in: (file stem, text).
pub const BUILTIN_SCENARIOS: &[(&str, &str)] = &builtin_scenarios![
    "collisions",
    "context-switch",
    "context-switch-nocache",
    "discard-mode",
    "first-enable",
    "guest-remap",
    "host-churn",
    "hostile-guest",
    "hot-unplug",
    "idle-pins",
    "ksm",
    "ksm-pinned-mergeable",
    "lock-limit",
    "post-copy",
    "pre-copy",
    "small-cap",
    "spu-quirks",
    "steady",
    "swap-heavy",
    "swap-storm",
    "thp-collapse-mlock",
    "thp-split",
    "unbackable",
];

/// The compiled-in scenarios, parsed, in file-name order.
pub fn builtin() -> Result<Vec<Scenario>, String> {
    BUILTIN_SCENARIOS
        .iter()
        .map(|(name, text)| {
            Scenario::from_toml(&format!("configs/scenarios/{name}.toml"), text)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Largest scenario or VM file read: 4 MiB (a scenario of 10,000 events is about 600 KiB).
pub const MAX_INPUT_BYTES: u64 = 4 << 20;

/// Why a file could not be read as input.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The system refused (no such file, permissions, a directory...).
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit (a FIFO or `/dev/zero` stops at the limit too).
    #[error("{path}: larger than the {limit_mib} MiB a {what} may have; is it the right file?")]
    TooLarge {
        /// The file.
        path: String,
        /// What kind of input.
        what: &'static str,
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// Not text.
    #[error("{path}: not UTF-8 text; a {what} is a text file")]
    NotText {
        /// The file.
        path: String,
        /// What kind of input.
        what: &'static str,
    },
}

/// Reads at most `limit` bytes of `path` (`-` is standard input).
pub fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let name = path.display().to_string();
    let unreadable = |source| ReadError::Unreadable {
        path: name.clone(),
        source,
    };
    let mut buf = Vec::new();
    let reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(unreadable)?)
    };
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(unreadable)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: name,
            what,
            limit_mib: limit >> 20,
        });
    }
    Ok(buf)
}

/// Reads a config, scenario or VM file of at most [`MAX_INPUT_BYTES`], naming the file and
/// the limit when it is larger.
pub fn read_bounded(path: &Path) -> Result<String, ReadError> {
    let what = "config, scenario or VM file";
    let buf = read_limited(path, MAX_INPUT_BYTES, what)?;
    String::from_utf8(buf).map_err(|_| ReadError::NotText {
        path: path.display().to_string(),
        what,
    })
}

/// Loads every `*.toml` scenario of `dir`, sorted by file name.
pub fn load_scenarios(dir: &Path) -> Result<Vec<Scenario>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = read_bounded(p).map_err(|e| e.to_string())?;
            Scenario::from_toml(&p.display().to_string(), &text).map_err(|e| e.to_string())
        })
        .collect()
}

fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `config` with the scenario's `[spe]` keys merged over it, validated like a config file.
pub fn with_overrides(config: &SpeConfig, scenario: &Scenario) -> Result<SpeConfig, String> {
    let Some(over) = &scenario.spe else {
        return Ok(*config);
    };
    let mut doc: toml::Table = spe_policy::config::to_toml(config)
        .parse()
        .map_err(|e| format!("{}: {e}", scenario.name))?;
    match doc.get_mut("spe") {
        Some(toml::Value::Table(spe)) => merge(spe, over),
        _ => {
            doc.insert("spe".into(), toml::Value::Table(over.clone()));
        }
    }
    let text = toml::to_string(&doc).map_err(|e| format!("{}: {e}", scenario.name))?;
    let parsed: ConfigFile =
        toml::from_str(&text).map_err(|e| format!("scenario {} [spe]: {e}", scenario.name))?;
    parsed
        .spe
        .validate()
        .map_err(|e| format!("scenario {} [spe]: {e}", scenario.name))?;
    Ok(parsed.spe)
}

/// The VM a scenario runs: the defaults, the scenario's `[vm]` keys over them, then `over`
/// (`compare --vm FILE`'s `[vm]` table) over those; validated.
pub fn vm_for(scenario: &Scenario, over: Option<&toml::Table>) -> Result<VmSpec, String> {
    let mut t = toml::Table::new();
    if let Some(s) = &scenario.vm {
        merge(&mut t, s);
    }
    if let Some(o) = over {
        merge(&mut t, o);
    }
    let vm: VmSpec = toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| {
            format!("scenario {} [vm]: {}", scenario.name, e.message())
        })?;
    vm.validate()
        .map_err(|e| format!("scenario {} [vm]: {e}", scenario.name))?;
    Ok(vm)
}

/// Reads the `[vm]` table of a VM file (`compare --vm FILE`).
pub fn vm_table(name: &str, text: &str) -> Result<toml::Table, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("{name}: {e}"))?;
    let vm = match doc.get("vm") {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => return Err(format!("{name}: `vm` must be a table ([vm])")),
        None => {
            return Err(format!(
                "{name}: no [vm] table; a VM file has one, e.g. [vm] vcpus = 8, ram = \"32GiB\""
            ));
        }
    };
    // Checked now, so a typo is named before anything runs.
    let spec: VmSpec = toml::Value::Table(vm.clone())
        .try_into()
        .map_err(|e: toml::de::Error| format!("{name}: [vm]: {}", e.message()))?;
    spec.validate().map_err(|e| format!("{name}: {e}"))?;
    Ok(vm)
}

/// The strategies `compare` runs, in table order.
pub const STRATEGIES: [StrategyName; 4] = [
    StrategyName::PinAll,
    StrategyName::PinBuffer,
    StrategyName::FaultTranslate,
    StrategyName::ShadowBuffer,
];

/// The configuration `strategy` runs with in the simulator: `config` with its strategy set,
/// and the keys that strategy cannot take replaced by the closest it can: pin-all migrates
/// with stop-and-copy and never recovers; pin-buffer keeps its pinned buffer dirty.
pub fn config_for(config: &SpeConfig, strategy: StrategyName) -> SpeConfig {
    let mut c = *config;
    c.strategy = strategy;
    if strategy == StrategyName::PinAll {
        if matches!(
            c.migration(),
            MigrationPolicy::PreCopy | MigrationPolicy::PostCopy
        ) {
            c.migration = Some(MigrationPolicy::StopAndCopy);
        }
        c.recovery = RecoveryName::Rewind;
    }
    if strategy == StrategyName::PinBuffer {
        c.dirty_log = DirtyLogHandling::KeepBufferDirty;
    }
    c
}

/// Runs one scenario with one strategy, on the scenario's VM with `vm_over` on top.
pub fn run_one(
    config: &SpeConfig,
    vm_over: Option<&toml::Table>,
    scenario: &Scenario,
    strategy: StrategyName,
    opts: impl Into<RunOptions>,
) -> Result<Metrics, String> {
    let vm = vm_for(scenario, vm_over)?;
    let c = config_for(&with_overrides(config, scenario)?, strategy);
    let policy = Policy::from_config(&c, &vm)
        .map_err(|e| format!("{} with {}: {e}", scenario.name, strategy.as_str()))?;
    run(&c, &vm, &policy, scenario, opts)
        .map_err(|e| format!("{} with {}: {e}", scenario.name, strategy.as_str()))
}

/// Runs every scenario against each of `strategies` on `threads` threads (at least one),
/// calling `done` after each run. Results come in scenario order, then strategy order,
/// whatever the threads: the output is deterministic. A run that fails is that run's error;
/// the others still run.
pub fn compare_parallel(
    config: &SpeConfig,
    vm_over: Option<&toml::Table>,
    scenarios: &[Scenario],
    strategies: &[StrategyName],
    opts: impl Into<RunOptions>,
    threads: usize,
    done: &(dyn Fn() + Sync),
) -> Vec<Result<Metrics, String>> {
    let opts = opts.into();
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: Vec<(&Scenario, StrategyName)> = scenarios
        .iter()
        .flat_map(|s| strategies.iter().map(move |n| (s, *n)))
        .collect();
    let next = AtomicUsize::new(0);
    let slots: Vec<parking_lot::Mutex<Option<Result<Metrics, String>>>> =
        jobs.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((scenario, strategy)) = jobs.get(i) else {
                        break;
                    };
                    *slots[i].lock() = Some(run_one(config, vm_over, scenario, *strategy, opts));
                    done();
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|| Err("a run did not finish".into()))
        })
        .collect()
}

/// Runs every scenario against each strategy, configured from `config` (its `strategy` key is
/// ignored: all of them run), on every core; the first failure is the error.
pub fn compare(
    config: &SpeConfig,
    scenarios: &[Scenario],
    opts: impl Into<RunOptions>,
) -> Result<Vec<Metrics>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    compare_parallel(config, None, scenarios, &STRATEGIES, opts, threads, &|| {})
        .into_iter()
        .collect()
}
