//! `spe-policy translate`: walk a guest memory image for one or more VAs, as the SPU would for
//! a buffer write, and print one JSON object per VA (ARCHITECTURE.md §8).

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use spe_policy::arch::walk::{FaultCause, Stage1Regs, Translation, WalkError, WalkOptions, Walker};
use spe_policy::{Granule, Gva, Ipa};

use crate::hexnum::{hex, parse_u64};
use crate::image;

/// Arguments of `translate`.
#[derive(clap::Args, Debug)]
pub struct TranslateArgs {
    /// The guest memory image (JSON: stage 1 registers and the guest pages holding the tables).
    #[arg(long, value_name = "IMAGE.json")]
    pub image: PathBuf,
    /// A VA to translate (hex). Repeat for several.
    #[arg(long, value_name = "VA", required = true, value_parser = parse_u64)]
    pub va: Vec<u64>,
    /// Translate every page of `VA..VA+LEN` instead of one address (decimal, or hex with 0x).
    #[arg(long, value_name = "LEN", value_parser = parse_len)]
    pub len: Option<u64>,
    /// Follow table descriptors that point back at a table of the same walk (recursive
    /// mappings are legal; by default they are refused as a likely loop).
    #[arg(long)]
    pub allow_recursive_tables: bool,
    /// The largest image read; a larger one is refused.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub max_input: u64,
    /// Add a "reason" key to faults: the rule of the walk that fired (the default output keeps
    /// exactly the keys of the documented format).
    #[arg(long)]
    pub explain: bool,
}

/// A length: decimal, or hex with a `0x` prefix (VAs are hex, lengths are not).
fn parse_len(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return parse_u64(t);
    }
    t.replace('_', "").parse().map_err(|_| {
        format!("{s:?} is not a length (decimal, e.g. 4096, or hex with 0x, e.g. 0x1000)")
    })
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<spe_policy::config::ByteSize>().map(|b| b.bytes())
}

#[derive(Serialize)]
struct Mapped {
    va: String,
    ipa: String,
    level: i8,
    block_size: u64,
    tables_touched: Vec<String>,
}

#[derive(Serialize)]
struct Faulted {
    va: String,
    fault: &'static str,
    level: i8,
    tables_touched: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn pages(ts: &[Ipa]) -> Vec<String> {
    ts.iter().map(|p| hex(p.0)).collect()
}

/// Most VAs one `--len` expands to.
const MAX_PAGES: u64 = 1 << 20;

/// Runs the command; returns the process exit code (0 translated or faulted, 1 invalid input
/// or a VA outside both TTBR ranges, 3 unreadable).
pub fn run(args: &TranslateArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let img = match image::load(&args.image, args.max_input) {
        Ok(img) => img,
        Err((code, e)) => {
            let _ = writeln!(err, "error: {e}");
            return code;
        }
    };
    for key in &img.ignored_keys {
        let _ = writeln!(err, "warning: image key `{key}` is not used by translate");
    }
    let options = WalkOptions {
        allow_recursive_tables: args.allow_recursive_tables,
        pa_bits: img.pa_bits,
        ..WalkOptions::default()
    };
    let walker = Walker::with_options(img.regs, options, &img.ram);
    let mut code = 0;
    for &start in &args.va {
        let vas = match expand(&img.regs, start, args.len) {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return 1;
            }
        };
        for va in vas {
            let line = match walker.translate(Gva(va)) {
                Ok(t) => mapped(&t),
                Err(WalkError::Fault(f)) => {
                    if f.cause == FaultCause::VaOutsideRanges {
                        let _ = writeln!(
                            err,
                            "error: --va {}: outside both the TTBR0 and TTBR1 ranges of TCR_EL1 {:#x}",
                            hex(va),
                            img.regs.tcr.into_bits()
                        );
                        code = crate::exit::INVALID;
                    }
                    serde_json::to_string(&Faulted {
                        va: hex(va),
                        fault: f.kind.name(),
                        level: f.level,
                        tables_touched: pages(f.tables_touched.as_slice()),
                        reason: args.explain.then(|| f.cause.to_string()),
                    })
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {}: {e}", args.image.display());
                    return 1;
                }
            };
            match line {
                Ok(line) => {
                    let _ = writeln!(out, "{line}");
                }
                Err(e) => {
                    let _ = writeln!(err, "error: cannot format the result: {e}");
                    return 1;
                }
            }
        }
    }
    code
}

fn mapped(t: &Translation) -> serde_json::Result<String> {
    serde_json::to_string(&Mapped {
        va: hex(t.va.0),
        ipa: hex(t.ipa.0),
        level: t.level,
        block_size: t.block_size,
        tables_touched: pages(t.tables_touched.as_slice()),
    })
}

/// The VAs to translate: `start`, or the start of every page of `start..start+len`.
fn expand(regs: &Stage1Regs, start: u64, len: Option<u64>) -> Result<Vec<u64>, String> {
    let Some(len) = len else {
        return Ok(vec![start]);
    };
    if len == 0 {
        return Err("--len 0: give a length of at least one byte".into());
    }
    let granule = if Stage1Regs::ttbr_index(Gva(start)) == 1 {
        regs.tcr.granule1()
    } else {
        regs.tcr.granule0()
    };
    let end = start.checked_add(len).ok_or_else(|| {
        format!(
            "--va {} --len {len}: the range wraps past the top of the address space",
            hex(start)
        )
    })?;
    let count = (end - 1) / granule.size() - start / granule.size() + 1;
    if count > MAX_PAGES {
        return Err(format!(
            "--va {} --len {len}: {count} pages of {granule}; at most {MAX_PAGES} per --va",
            hex(start)
        ));
    }
    let mut vas = vec![start];
    let mut page = Gva(start).page_base(granule).0 + granule.size();
    while page < end {
        vas.push(page);
        page += granule.size();
    }
    debug_assert!(matches!(granule, Granule::K4 | Granule::K16 | Granule::K64));
    Ok(vas)
}
