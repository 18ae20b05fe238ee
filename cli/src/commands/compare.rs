//! `spe-policy compare`: the three strategies side by side on the same scenarios, in the
//! simulator.

use std::io::Write;
use std::path::PathBuf;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use spe_policy::config::load_toml;
use spe_policy_sim::{CostModel, Metrics, Thresholds, check, compare, load_scenarios};

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
    /// The VMM config whose guest and host parameters the simulation uses.
    #[arg(default_value = "configs/default.toml")]
    pub config: PathBuf,
    /// A directory of scenario files.
    #[arg(long, default_value = "configs/scenarios")]
    pub scenarios: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn mib(b: f64) -> String {
    format!("{:.2} MiB", b / (1u64 << 20) as f64)
}

/// Runs the command: 0 ok, 1 invalid input, 2 unreadable.
pub fn run(args: &CompareArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let src = match std::fs::read_to_string(&args.config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {}: cannot read: {e}", args.config.display());
            return 2;
        }
    };
    let config = match load_toml(&src) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                let _ = writeln!(err, "error: {}:{e}", args.config.display());
            }
            return 1;
        }
    };
    let scenarios = match load_scenarios(&args.scenarios) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            let _ = writeln!(
                err,
                "error: {}: no *.toml scenarios",
                args.scenarios.display()
            );
            return 1;
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 1;
        }
    };
    let metrics = match compare(&config, &scenarios, &CostModel::default()) {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return 1;
        }
    };
    let r = match args.format {
        Format::Json => metrics
            .iter()
            .try_for_each(|m| writeln!(out, "{}", json(m))),
        Format::Table => {
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
                ]);
            for m in &metrics {
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
                ]);
            }
            let mut p = Table::new();
            p.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(["strategy", "measured", "evidence"]);
            for v in check(&config, &scenarios, &metrics, &Thresholds::default()) {
                let measured: Vec<&str> = v.measured.iter().map(|p| p.name()).collect();
                p.add_row([
                    v.strategy.clone(),
                    measured.join(" + "),
                    v.evidence.join("\n"),
                ]);
            }
            writeln!(
                out,
                "{} vCPUs, {} buffers, 64 MiB of simulated RAM; each scenario in {}; pins and blackouts priced by the cost model (docs/DESIGN.md)\n{t}\n\nCheap, fast, reliable: what the measurements support\n{p}",
                config.guest.vcpus.clamp(1, 8),
                config.guest.buffer_per_vcpu,
                args.scenarios.display()
            )
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

fn json(m: &Metrics) -> String {
    format!(
        "{{\"scenario\":\"{}\",\"strategy\":\"{}\",\"records_attempted\":{},\"records_written\":{},\"lost_blackout\":{},\"lost_recovery\":{},\"lost_fatal\":{},\"stage2_faults\":{},\"fatal_events\":{},\"pinned_peak_bytes\":{},\"pinned_mean_bytes\":{:.0},\"blackout_ns\":{:.0},\"longest_blackout_ns\":{:.0},\"pinned_after_stop\":{},\"unexplained_loss\":{}}}",
        m.scenario,
        m.strategy,
        m.records_attempted,
        m.records_written,
        m.lost_blackout,
        m.lost_recovery,
        m.lost_fatal,
        m.stage2_faults,
        m.fatal_events,
        m.pinned_peak_bytes,
        m.pinned_mean_bytes,
        m.blackout_ns,
        m.longest_blackout_ns,
        m.pinned_after_stop,
        m.unexplained_loss
    )
}
