//! `spe-policy stage2-check`: the host model against the real kernel's stage 2, side by side.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use spe_host_kvm::check;

use crate::exit;

/// Output format of `stage2-check`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A table, one row per event and pin kind, the explanation under it.
    Table,
    /// One JSON array of rows.
    Json,
}

/// Arguments of `stage2-check`.
#[derive(clap::Args, Debug)]
pub struct Stage2CheckArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Adds the KSM rows: runs the host-wide KSM daemon while they run (root; its knobs are
    /// put back after). Off by default because it scans every process's mergeable memory.
    #[arg(long)]
    pub ksm: bool,
    /// A directory on a disk file system for the file memory backend's 16 MiB file, removed
    /// after (default: the system's temporary directory; on tmpfs writeback never happens).
    #[arg(long, value_name = "DIR")]
    pub file_dir: Option<std::path::PathBuf>,
}

/// Runs the matrix: 0 when every difference is explained, 1 when one is not, 4 without KVM.
pub fn run(args: &Stage2CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    if let Err(e) = spe_host_kvm::usable() {
        let _ = writeln!(
            err,
            "error: stage2-check needs a usable /dev/kvm (it runs a real VM): {e}"
        );
        return exit::ENVIRONMENT;
    }
    let mut opts = check::Options {
        ksm: args.ksm,
        ..check::Options::default()
    };
    if let Some(dir) = &args.file_dir {
        opts.file_dir.clone_from(dir);
    }
    let rows = match check::run(&opts) {
        Ok(rows) => rows,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let r = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &rows)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(110)
                .set_header([
                    "event", "memory", "strategy", "pin", "model", "zapped", "faults", "refused",
                    "agree",
                ]);
            for r in &rows {
                let faults = match r.kvm_demanded {
                    Some(d) => format!("{} ({d} demanded)", r.kvm_faults),
                    None => r.kvm_faults.to_string(),
                };
                let refused = [
                    r.kvm_pin_refused.as_ref().map(|e| format!("pin: {e}")),
                    r.kvm_refused.clone(),
                ];
                t.add_row([
                    kebab(&r.event),
                    kebab(&r.memory),
                    r.strategy.to_string(),
                    kebab(&r.pin),
                    r.model_pages.to_string(),
                    r.kvm_pages_zapped.to_string(),
                    faults,
                    refused.into_iter().flatten().collect::<Vec<_>>().join(", "),
                    if r.agree { "yes" } else { "NO" }.to_string(),
                ]);
            }
            writeln!(
                out,
                "Stage 2 under host events, the model (hosts/model) against the kernel (KVM,\n4 MiB buffer = 1024 pages): pages the model says fault, mappings KVM zapped, faults\nthe next SPU-like write pass took (post-copy: and the pages it demanded from the source).\n{t}"
            )
            .and_then(|()| {
                for r in rows
                    .iter()
                    .filter(|r| !r.agree || r.kvm_refused.is_some() || r.kvm_pin_refused.is_some())
                {
                    writeln!(out, "- {} / {}: {}", kebab(&r.event), kebab(&r.pin), r.explanation)?;
                }
                Ok(())
            })
        }
    };
    if r.is_err() {
        return exit::IO;
    }
    if rows
        .iter()
        .any(|r| r.explanation.starts_with("UNEXPLAINED"))
    {
        let _ = writeln!(
            err,
            "error: a difference between model and kernel has no explanation"
        );
        return exit::INVALID;
    }
    exit::OK
}

/// The kebab-case name serde gives a code point (`thp-collapse`, `long-term`).
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
