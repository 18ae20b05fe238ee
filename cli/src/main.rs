//! `spe-policy`: the command-line face of the spe-policy library. It walks guest memory images
//! the way the SPU does for a profiling-buffer write (`translate`), decodes SPE data like perf
//! (`decode`), and grows with the project: checking VMM configs and comparing backing strategies.

mod commands;
mod exit;
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
    /// Print what the guest is told about the strategy (the guest notice) as the device-tree
    /// node a VMM adds under the SPE PMU node (`--format dts|dtb`) or as JSON.
    Notice(commands::config::NoticeArgs),
    /// Print the default [spe] table (`--defaults`).
    Config(commands::config::ConfigArgs),
    /// The errata of each strategy: a table, markdown or JSON; `--write DIR` generates
    /// docs/errata, `--check DIR` verifies it is fresh.
    Errata(commands::errata::ErrataArgs),
    /// Simulate the strategies side by side on the scenarios (default: the default config and
    /// configs/scenarios) on every core: records kept and lost by cause, faults, pins,
    /// blackouts, migration downtime; `--out DIR` adds metrics.json and SVG plots.
    Compare(commands::compare::CompareArgs),
    /// Run the host model and the real kernel's stage 2 (a KVM VM here) side by side under
    /// host events and pin kinds. Exit 0 when every difference is explained, 1 when one is
    /// not, 4 without a usable /dev/kvm.
    #[command(name = "stage2-check")]
    Stage2Check(commands::stage2_check::Stage2CheckArgs),
    /// Simulate one scenario with one strategy (`--strategy`) or all, optionally with another
    /// seed.
    Simulate(commands::compare::SimulateArgs),
}

fn main() {
    let cli = Cli::parse();
    // One write(2) per buffer, not per line; a broken pipe (`| head`) ends quietly with 0, as
    // coreutils tools do.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    let code = match &cli.command {
        Command::Translate(args) => commands::translate::run(args, &mut out, &mut err),
        Command::Decode(args) => commands::decode::run(args, &mut out, &mut err),
        Command::Check(args) => commands::config::check(args, &mut out, &mut err),
        Command::Notice(args) => commands::config::notice(args, &mut out, &mut err),
        Command::Config(args) => commands::config::defaults(args, &mut out),
        Command::Compare(args) => commands::compare::run(args, &mut out, &mut err),
        Command::Simulate(args) => commands::compare::simulate(args, &mut out, &mut err),
        Command::Errata(args) => commands::errata::run(args, &mut out, &mut err),
        Command::Stage2Check(args) => commands::stage2_check::run(args, &mut out, &mut err),
    };
    let code = match std::io::Write::flush(&mut out) {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(err, "error: writing the output: {e}");
            exit::IO
        }
    };
    drop(out);
    std::process::exit(code);
}
