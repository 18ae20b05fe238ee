//! Checking each strategy's declared profile ("which two of cheap, fast, reliable") against
//! what the simulator measured. The thresholds live here, in one place.

use spe_policy::config::SpeConfig;
use spe_policy::errata::Property;

use crate::engine::{Metrics, SIM_RAM};
use crate::scenario::Scenario;

/// The thresholds that turn metrics into properties.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Cheap: the most pinned, as a fraction of guest RAM, in any scenario.
    pub cheap_max_ram_fraction: f64,
    /// Fast: the longest a buffer enable may keep the SPU from profiling, ns.
    pub fast_max_enable_ns: f64,
}

impl Default for Thresholds {
    /// Cheap: at most 1% of guest RAM pinned. Fast: no enable costs more than 100 µs.
    fn default() -> Self {
        Thresholds {
            cheap_max_ram_fraction: 0.01,
            fast_max_enable_ns: 100_000.0,
        }
    }
}

/// What the metrics say about one strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileVerdict {
    /// The strategy.
    pub strategy: String,
    /// The properties the measurements support.
    pub measured: Vec<Property>,
    /// One line per property: the figure behind the verdict.
    pub evidence: Vec<String>,
}

/// Judges every strategy in `metrics`, over the scenarios that are not exceptional;
/// pinned bytes are scaled to the configured guest RAM (a strategy that pinned all of the
/// simulated RAM would pin all of the real one).
pub fn check(
    config: &SpeConfig,
    scenarios: &[Scenario],
    metrics: &[Metrics],
    t: &Thresholds,
) -> Vec<ProfileVerdict> {
    let mut names: Vec<&str> = metrics.iter().map(|m| m.strategy.as_str()).collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    let ram = config.guest.ram.bytes().max(1) as f64;
    names
        .into_iter()
        .map(|name| {
            let exceptional = |m: &&Metrics| {
                scenarios
                    .iter()
                    .any(|s| s.name == m.scenario && s.exceptional)
            };
            let runs: Vec<&Metrics> = metrics
                .iter()
                .filter(|m| m.strategy == name && !exceptional(m))
                .collect();
            let pinned = runs
                .iter()
                .map(|m| {
                    if m.pinned_peak_bytes >= SIM_RAM {
                        ram
                    } else {
                        m.pinned_peak_bytes as f64
                    }
                })
                .fold(0.0, f64::max);
            let enable = runs.iter().map(|m| m.longest_enable_ns).fold(0.0, f64::max);
            let lost: u64 = runs
                .iter()
                .map(|m| m.lost_recovery + m.lost_fatal + (m.lost_blackout - m.lost_blackout_enable))
                .sum();
            let cheap = pinned / ram <= t.cheap_max_ram_fraction;
            let fast = enable <= t.fast_max_enable_ns;
            let reliable = lost == 0;
            let mut measured = Vec::new();
            for (ok, p) in [
                (cheap, Property::Cheap),
                (fast, Property::Fast),
                (reliable, Property::Reliable),
            ] {
                if ok {
                    measured.push(p);
                }
            }
            ProfileVerdict {
                strategy: name.to_string(),
                measured,
                evidence: vec![
                    format!(
                        "cheap: {:.3}% of guest RAM pinned at most (threshold {}%)",
                        100.0 * pinned / ram,
                        100.0 * t.cheap_max_ram_fraction
                    ),
                    format!(
                        "fast: longest enable {:.1} µs (threshold {:.0} µs)",
                        enable / 1000.0,
                        t.fast_max_enable_ns / 1000.0
                    ),
                    format!(
                        "reliable: {lost} records lost to faults, recovery or fatal events with a well-behaved guest"
                    ),
                ],
            }
        })
        .collect()
}
