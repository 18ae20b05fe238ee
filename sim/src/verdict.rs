//! From the runs to a verdict a KVM developer can check against the table: each strategy's
//! figures over the scenarios that count, which of cheap, fast and reliable they support, and
//! a recommendation for the config that was run. The thresholds and the rules live here, in
//! one place, and are printed with the verdict.

use serde::Serialize;
use spe_policy::config::{MigrationPolicy, SpeConfig};
use spe_policy::errata::Property;

use crate::engine::Metrics;
use crate::scenario::Scenario;

/// The thresholds that turn figures into properties.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// Cheap: the most pinned in any counted scenario, as a fraction of the VM's RAM.
    pub cheap_max_ram_fraction: f64,
    /// Fast: the longest a vCPU may be kept out of the guest by an enable or by the profiling
    /// path (traps, interrupts, fault service, copies), ns.
    pub fast_max_stall_ns: f64,
    /// Reliable: the most profile loss charged to the strategy, as a fraction of the samples
    /// due, while the guest behaves.
    pub reliable_max_loss: f64,
}

impl Default for Thresholds {
    /// Cheap: at most 1% of guest RAM pinned. Fast: no stall longer than 1 ms (a quarter of a
    /// scheduler tick at HZ=250: the guest's scheduler does not see it as lost time). Reliable:
    /// no sample lost that bare metal would have kept.
    fn default() -> Self {
        Thresholds {
            cheap_max_ram_fraction: 0.01,
            fast_max_stall_ns: 1e6,
            reliable_max_loss: 0.0,
        }
    }
}

/// One strategy's figures over the counted scenarios.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The strategy.
    pub strategy: String,
    /// Samples due, all counted runs.
    pub samples_due: u64,
    /// Samples lost and charged to the strategy.
    pub samples_lost: u64,
    /// `samples_lost / samples_due`.
    pub loss_fraction: f64,
    /// Samples bare metal would lose too (not charged), as a fraction of the samples due.
    pub baseline_fraction: f64,
    /// Steady-state stall per second of guest time, ns/s (all counted runs; the vCPUs' first
    /// enables are one-time and left out: `first_enable_stall_ns`).
    pub stall_ns_per_s: f64,
    /// The longest stall in any counted run, ns.
    pub longest_stall_ns: f64,
    /// The longest first-enable stall (one-time), ns.
    pub first_enable_stall_ns: f64,
    /// Stall per re-enable, ns (steady state: re-arms, context switches).
    pub reenable_stall_ns: f64,
    /// The most pinned in any counted run, bytes.
    pub pinned_peak_bytes: u64,
    /// The most pinned in any counted run, as a fraction of that run's RAM.
    pub pinned_fraction: f64,
    /// Host CPU spent copying per second of guest time, ns/s.
    pub copy_ns_per_s: f64,
    /// The longest migration downtime of any counted run, ns.
    pub downtime_ns: f64,
    /// Live migrations refused or degraded to stop-and-copy.
    pub migrations_refused: u64,
    /// One-time host work before the VM runs (pin-all at VM start), ns.
    pub vm_start_ns: f64,
    /// The properties the figures support.
    pub measured: Vec<Property>,
}

/// The recommendation for the config that was run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// The strategy recommended.
    pub choice: String,
    /// Why, with the figures.
    pub because: String,
    /// The runner-up and what it would give.
    pub runner_up: Option<String>,
    /// What would change the choice.
    pub would_change: String,
}

/// The verdicts of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdicts {
    /// The thresholds used.
    pub thresholds: Thresholds,
    /// The scenarios the verdicts count.
    pub counted: Vec<String>,
    /// The scenarios left out, with why.
    pub left_out: Vec<(String, String)>,
    /// Per strategy, in the order they ran.
    pub strategies: Vec<Summary>,
    /// The recommendation, when at least one strategy ran.
    pub recommendation: Option<Recommendation>,
}

/// The rules, as printed with the verdict.
pub fn rules(t: &Thresholds) -> [String; 4] {
    [
        format!(
            "cheap: pinned peak at most {}% of the VM's RAM in every counted scenario",
            100.0 * t.cheap_max_ram_fraction
        ),
        format!(
            "fast: no vCPU stall (enable, trap, interrupt, fault service, copy) longer than {:.0} µs",
            t.fast_max_stall_ns / 1e3
        ),
        format!(
            "reliable: profile loss charged to the strategy at most {}% of the samples due (bare metal's own loss is not charged)",
            100.0 * t.reliable_max_loss
        ),
        "counted: every scenario not marked exceptional (exceptional ones show a guest's or a config's failure mode)".into(),
    ]
}

fn summarize(name: &str, runs: &[&Metrics], t: &Thresholds) -> Summary {
    let due: u64 = runs.iter().map(|m| m.samples_due).sum();
    let lost: u64 = runs.iter().map(|m| m.samples_lost).sum();
    let baseline: u64 = runs.iter().map(|m| m.baseline_lost).sum();
    let guest_s: f64 = runs.iter().map(|m| m.guest_seconds()).sum();
    let stall: f64 = runs
        .iter()
        .map(|m| (m.stall_ns - m.first_enable_stall_total_ns).max(0.0))
        .sum();
    let copy: f64 = runs.iter().map(|m| m.copy_ns).sum();
    let reenables: u64 = runs.iter().map(|m| m.reenables).sum();
    let reenable_ns: f64 = runs.iter().map(|m| m.reenable_stall_ns).sum();
    let max = |f: fn(&Metrics) -> f64| runs.iter().map(|m| f(m)).fold(0.0, f64::max);
    let pinned_fraction = max(Metrics::pinned_fraction);
    let longest = max(|m| m.longest_stall_ns);
    let loss_fraction = lost as f64 / due.max(1) as f64;
    let mut measured = Vec::new();
    for (ok, p) in [
        (pinned_fraction <= t.cheap_max_ram_fraction, Property::Cheap),
        (longest <= t.fast_max_stall_ns, Property::Fast),
        (loss_fraction <= t.reliable_max_loss, Property::Reliable),
    ] {
        if ok && !runs.is_empty() {
            measured.push(p);
        }
    }
    Summary {
        strategy: name.to_string(),
        samples_due: due,
        samples_lost: lost,
        loss_fraction,
        baseline_fraction: baseline as f64 / due.max(1) as f64,
        stall_ns_per_s: stall / guest_s.max(1e-9),
        longest_stall_ns: longest,
        first_enable_stall_ns: max(|m| m.first_enable_stall_ns),
        reenable_stall_ns: reenable_ns / reenables.max(1) as f64,
        pinned_peak_bytes: runs.iter().map(|m| m.pinned_peak_bytes).max().unwrap_or(0),
        pinned_fraction,
        copy_ns_per_s: copy / guest_s.max(1e-9),
        downtime_ns: max(|m| m.migration_downtime_ns),
        migrations_refused: runs.iter().map(|m| m.migrations_refused).sum(),
        vm_start_ns: max(|m| m.vm_start_ns),
        measured,
    }
}

/// Judges every strategy in `metrics` over the scenarios that are not exceptional, and
/// recommends one for `config`.
pub fn judge(
    config: &SpeConfig,
    scenarios: &[Scenario],
    metrics: &[Metrics],
    t: &Thresholds,
) -> Verdicts {
    let exceptional = |name: &str| scenarios.iter().any(|s| s.name == name && s.exceptional);
    let mut names: Vec<&str> = Vec::new();
    for m in metrics {
        if !names.contains(&m.strategy.as_str()) {
            names.push(&m.strategy);
        }
    }
    let mut counted: Vec<String> = Vec::new();
    let mut left_out = Vec::new();
    for s in scenarios {
        if !metrics.iter().any(|m| m.scenario == s.name) {
            continue;
        }
        if s.exceptional {
            left_out.push((
                s.name.clone(),
                "exceptional: a guest's or a config's failure mode".to_string(),
            ));
        } else {
            counted.push(s.name.clone());
        }
    }
    let strategies: Vec<Summary> = names
        .iter()
        .map(|name| {
            let runs: Vec<&Metrics> = metrics
                .iter()
                .filter(|m| m.strategy == *name && !exceptional(&m.scenario))
                .collect();
            summarize(name, &runs, t)
        })
        .collect();
    let recommendation = recommend(config, &strategies);
    Verdicts {
        thresholds: *t,
        counted,
        left_out,
        strategies,
        recommendation,
    }
}

/// Percent with enough digits to show a small loss.
pub fn pct(f: f64) -> String {
    let p = 100.0 * f;
    if p == 0.0 {
        "0%".into()
    } else if p < 0.01 {
        format!("{p:.4}%")
    } else if p < 1.0 {
        format!("{p:.3}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A duration in the unit that suits it.
pub fn dur(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.0} µs", ns / 1e3)
    }
}

/// What a strategy's figures say, in words.
fn describe(s: &Summary) -> String {
    let props: Vec<&str> = s.measured.iter().map(|p| p.name()).collect();
    format!(
        "{}: it loses {} of samples, stalls a vCPU at most {} and pins {} of RAM",
        if props.is_empty() {
            "none of the three".to_string()
        } else {
            props.join(" + ")
        },
        pct(s.loss_fraction),
        dur(s.longest_stall_ns),
        pct(s.pinned_fraction)
    )
}

/// Ranks the strategies: the config's migration mode must work live if it asks for one; then
/// the most properties; then the least profile loss, the shortest stall, the least pinned.
fn recommend(config: &SpeConfig, strategies: &[Summary]) -> Option<Recommendation> {
    let live = matches!(
        config.migration(),
        MigrationPolicy::PreCopy | MigrationPolicy::PostCopy
    );
    let mut ranked: Vec<&Summary> = strategies.iter().collect();
    let key = |s: &Summary| {
        (
            live && s.migrations_refused > 0,
            std::cmp::Reverse(s.measured.len()),
            s.loss_fraction,
            s.longest_stall_ns,
            s.pinned_fraction,
        )
    };
    ranked.sort_by(|a, b| {
        key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let best = ranked.first()?;
    let runner = ranked.get(1);
    let because = format!(
        "it is {}{}",
        describe(best),
        if live {
            format!(
                ", and live {} migration works with it",
                config.migration().as_str()
            )
        } else {
            String::new()
        }
    );
    let would_change = match runner {
        Some(r) if r.loss_fraction < best.loss_fraction => format!(
            "if no sample may be lost, {} loses {} instead of {}",
            r.strategy,
            pct(r.loss_fraction),
            pct(best.loss_fraction)
        ),
        Some(r) if r.longest_stall_ns < best.longest_stall_ns => format!(
            "if vCPU latency matters more than samples, {} stalls at most {} instead of {}",
            r.strategy,
            dur(r.longest_stall_ns),
            dur(best.longest_stall_ns)
        ),
        Some(r) if r.pinned_fraction < best.pinned_fraction => format!(
            "if host memory is tight, {} pins {} of RAM instead of {}",
            r.strategy,
            pct(r.pinned_fraction),
            pct(best.pinned_fraction)
        ),
        Some(r) if live && r.migrations_refused > 0 => format!(
            "without live migration, {} would rank by its figures alone",
            r.strategy
        ),
        Some(r) => format!("{} measures the same or worse on every figure", r.strategy),
        None => "nothing: it is the only strategy run".into(),
    };
    Some(Recommendation {
        choice: best.strategy.clone(),
        because,
        runner_up: runner.map(|r| {
            let mut d = format!("{}, {}", r.strategy, describe(r));
            if live && r.migrations_refused > 0 {
                d.push_str(&format!(
                    "; refuses live migration or degrades it to stop-and-copy ({} downtime)",
                    dur(r.downtime_ns)
                ));
            }
            d
        }),
        would_change,
    })
}
