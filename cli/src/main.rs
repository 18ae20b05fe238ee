//! `spe-policy`: the command-line face of the spe-policy library. It walks guest memory images
//! the way the SPU does for a profiling-buffer write (`translate`), decodes SPE data like perf
//! (`decode`), and grows with the project: checking VMM configs and comparing backing strategies.

mod commands;
mod hexnum;
mod image;
mod plots;

use clap::{Parser, Subcommand};

/// Decide and inspect how a KVM/arm64 guest's SPE profiling buffer is backed at stage 2.
#[derive(Parser, Debug)]
#[command(name = "spe-policy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Translate VAs through a guest memory image as the SPU would for a buffer write: prints
    /// one JSON object per VA with the IPA, level, block size and every table page read, or
    /// the fault.
    Translate(commands::translate::TranslateArgs),
    /// Decode raw SPE bytes: packets as current Linux perf prints them (`perf report -D`), a
    /// record summary, and with --recover where a host would rewind after a buffer fault.
    Decode(commands::decode::DecodeArgs),
    /// Validate a VMM config's [spe] table: print it resolved (defaults marked), the strategy's
    /// profile and errata. Exit 0 valid, 1 invalid, 2 unreadable.
    Check(commands::config::CheckArgs),
    /// Print the default [spe] table (`--defaults`).
    Config(commands::config::ConfigArgs),
    /// The errata of each strategy: a table, markdown or JSON; `--write DIR` generates
    /// docs/errata, `--check DIR` verifies it is fresh.
    Errata(commands::errata::ErrataArgs),
    /// Simulate the strategies side by side on the scenarios (default: the default config and
    /// configs/scenarios) on every core: records kept and lost by cause, faults, pins,
    /// blackouts, migration downtime; `--out DIR` adds metrics.json and SVG plots.
    Compare(commands::compare::CompareArgs),
    /// Simulate one scenario with one strategy (`--strategy`) or all, optionally with another
    /// seed.
    Simulate(commands::compare::SimulateArgs),
}

fn main() {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = match &cli.command {
        Command::Translate(args) => {
            commands::translate::run(args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Decode(args) => {
            commands::decode::run(args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Check(args) => {
            commands::config::check(args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Config(_) => commands::config::defaults(&mut stdout.lock()),
        Command::Compare(args) => {
            commands::compare::run(args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Simulate(args) => {
            commands::compare::simulate(args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Errata(args) => {
            commands::errata::run(args, &mut stdout.lock(), &mut stderr.lock())
        }
    };
    std::process::exit(code);
}
