//! # spe-policy-sim
//!
//! A deterministic simulator of a VM whose vCPUs profile with SPE while the host reclaims,
//! merges, migrates and the guest remaps, run against each backing strategy to compare what the
//! guest and the host see (ARCHITECTURE.md §2, issue "simulator"). This first version models the
//! SPU, the Linux guest driver's buffer handling, the stage 2 events of the scenarios in
//! `configs/scenarios/`, and the metrics of [`Metrics`].
#![deny(missing_docs)]

pub mod engine;
pub mod evidence;
pub mod profile_check;
pub mod scenario;

use std::path::Path;

pub use engine::{CostModel, Metrics, RunOptions, SimError, run};
pub use profile_check::{ProfileVerdict, Thresholds, check};
pub use scenario::{HostEventKind, Scenario, ScenarioError, ScheduledEvent};

use spe_policies::{Policy, StrategyConfig};
use spe_policy::config::{SpeConfig, StrategyName};

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
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Scenario::from_toml(&p.display().to_string(), &text).map_err(|e| e.to_string())
        })
        .collect()
}

/// `config` with the scenario's `[spe]` keys merged over it.
pub fn with_overrides(config: &SpeConfig, scenario: &Scenario) -> Result<SpeConfig, String> {
    let Some(over) = &scenario.spe else {
        return Ok(*config);
    };
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
    let mut doc: toml::Table = spe_policy::config::to_toml(config)
        .parse()
        .map_err(|e| format!("{}: {e}", scenario.name))?;
    if let Some(toml::Value::Table(spe)) = doc.get_mut("spe") {
        merge(spe, over);
    }
    let text = toml::to_string(&doc).map_err(|e| format!("{}: {e}", scenario.name))?;
    let parsed: spe_policy::config::ConfigFile =
        toml::from_str(&text).map_err(|e| format!("scenario {} [spe]: {e}", scenario.name))?;
    Ok(parsed.spe)
}

/// The strategies `compare` runs, in table order.
pub const STRATEGIES: [StrategyName; 4] = [
    StrategyName::PinAll,
    StrategyName::PinBuffer,
    StrategyName::FaultTranslate,
    StrategyName::ShadowBuffer,
];

/// The configuration `strategy` runs with in the simulator: `config` with its strategy set
/// (pin-all, which cannot pre-copy or post-copy by config rule, runs with the migration mode
/// it would use: stop-and-copy).
pub fn config_for(config: &SpeConfig, strategy: StrategyName) -> SpeConfig {
    let mut c = *config;
    c.strategy = strategy;
    if strategy == StrategyName::PinAll {
        c.migration = spe_policy::config::MigrationPolicy::StopAndCopy;
        c.recovery = spe_policy::config::RecoveryName::Rewind;
    }
    c
}

/// Runs one scenario with one strategy.
pub fn run_one(
    config: &SpeConfig,
    scenario: &Scenario,
    strategy: StrategyName,
    opts: impl Into<RunOptions>,
) -> Result<Metrics, String> {
    let c = config_for(&with_overrides(config, scenario)?, strategy);
    let policy = Policy::new(StrategyConfig::from_spe(&c).map_err(|e| e.to_string())?);
    run(&c, &policy, scenario, opts)
        .map_err(|e| format!("{} with {}: {e}", scenario.name, strategy.as_str()))
}

/// Runs every scenario against each of `strategies` on `threads` threads (at least one),
/// calling `done` after each run. Results come in scenario order, then strategy order,
/// whatever the threads: the output is deterministic.
pub fn compare_parallel(
    config: &SpeConfig,
    scenarios: &[Scenario],
    strategies: &[StrategyName],
    opts: impl Into<RunOptions>,
    threads: usize,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<Metrics>, String> {
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
                    *slots[i].lock() = Some(run_one(config, scenario, *strategy, opts));
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
/// ignored: all of them run), on every core.
pub fn compare(
    config: &SpeConfig,
    scenarios: &[Scenario],
    opts: impl Into<RunOptions>,
) -> Result<Vec<Metrics>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    compare_parallel(config, scenarios, &STRATEGIES, opts, threads, &|| {})
}
