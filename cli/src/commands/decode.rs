//! `spe-policy decode`: SPE packets as current Linux perf prints them (`perf report -D`), a
//! record summary, and where the recovery scanner would rewind.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use spe_policy::spe::{
    DecodeMode, Describe, Packets, RecordItem, Records, RecoveryInput, StreamItem, Verdict,
    WriteOrder, dump_line, recover,
};

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// perf's `--dump-raw-trace` lines, then a `#` summary.
    Perf,
    /// One JSON document: packets, summary, recovery.
    Json,
}

/// Decoding mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Architecture: unknown packets are skipped by their size-encoded length.
    Arch,
    /// perf-compatible: unknown headers are "Bad packet!" and step one byte.
    Perf,
}

/// Write order the recovery scanner may assume.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Byte after byte, as the Arm pseudocode writes a record.
    Sequential,
    /// Any order within a record: the architectural minimum.
    Unordered,
}

/// Arguments of `decode`.
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// A file of raw SPE bytes (an AUX buffer region); `-` reads standard input.
    pub file: PathBuf,
    /// The most bytes read; a larger input is refused (it is held in memory whole).
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_input: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Perf)]
    pub format: Format,
    /// How unknown headers are treated.
    #[arg(long, value_enum, default_value_t = Mode::Perf)]
    pub mode: Mode,
    /// Also print where the recovery scanner would rewind PMBPTR, treating the file as the
    /// bytes from a record boundary up to PMBPTR.
    #[arg(long)]
    pub recover: bool,
    /// With --recover: PMBSR_EL1.DL was 0 (by default the scan assumes DL=1, a partial record).
    #[arg(long, requires = "recover")]
    pub no_data_loss: bool,
    /// With --recover: the SPU's largest record in bytes (2^PMSIDR_EL1.MaxSize).
    #[arg(long, default_value_t = 64, value_parser = parse_record_size, requires = "recover")]
    pub max_record: usize,
    /// With --recover: the write order to assume.
    #[arg(long, value_enum, default_value_t = Order::Unordered, requires = "recover")]
    pub order: Order,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<spe_policy::config::ByteSize>().map(|b| b.bytes())
}

fn parse_record_size(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes (e.g. 64)"))?;
    if !(16..=2048).contains(&v) || !v.is_power_of_two() {
        return Err(format!(
            "{v} is not a record size an SPU can have: a power of two from 16 to 2048 (PMSIDR_EL1.MaxSize)"
        ));
    }
    Ok(v)
}

#[derive(Serialize)]
struct JsonPacket {
    offset: usize,
    bytes: String,
    text: String,
}

#[derive(Serialize, Default)]
struct Summary {
    bytes: usize,
    packets: usize,
    bad_bytes: usize,
    records: usize,
    padding_bytes: usize,
    padding_between_records: usize,
    incomplete_tail: Option<(usize, usize)>,
}

#[derive(Serialize)]
struct JsonRecovery {
    data_loss: bool,
    max_record_bytes: usize,
    write_order: &'static str,
    verdict: &'static str,
    resume_offset: usize,
    complete_records: usize,
    lost_bytes: usize,
    reason: String,
}

/// Writes the JSON document `{"packets": [...], "summary": ..., "recovery": ...}` one packet
/// at a time: memory stays bounded by the input, whatever the number of packets.
fn write_json(
    out: &mut dyn Write,
    bytes: &[u8],
    mode: DecodeMode,
    summary: &Summary,
    recovery: Option<&JsonRecovery>,
) -> std::io::Result<()> {
    let json = |v: &dyn erased::Json| v.to_json().map_err(std::io::Error::other);
    writeln!(out, "{{\n  \"packets\": [")?;
    let mut text = String::with_capacity(128);
    for (i, item) in Packets::new(bytes, mode).enumerate() {
        let packet = match item {
            StreamItem::Packet {
                offset,
                bytes,
                packet,
            } => {
                use std::fmt::Write as _;
                text.clear();
                let _ = write!(text, "{}", Describe(&packet));
                JsonPacket {
                    offset,
                    bytes: hex::encode(bytes),
                    text: text.clone(),
                }
            }
            StreamItem::Bad { offset, byte, .. } => JsonPacket {
                offset,
                bytes: format!("{byte:02x}"),
                text: "Bad packet!".into(),
            },
        };
        let sep = if i == 0 { "" } else { ",\n" };
        write!(out, "{sep}    {}", json(&packet)?)?;
    }
    write!(out, "\n  ],\n  \"summary\": {}", json(summary)?)?;
    if let Some(r) = recovery {
        write!(out, ",\n  \"recovery\": {}", json(r)?)?;
    }
    writeln!(out, "\n}}")
}

/// Serializing a value to one line of JSON, behind a trait object.
mod erased {
    pub(super) trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

/// Runs the command; returns the exit code (0 decoded, 1 bad input, 3 unreadable).
pub fn run(args: &DecodeArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let bytes = match spe_policy_sim::read_limited(&args.file, args.max_input, "decode input") {
        Ok(b) => b,
        Err(e) => {
            let code = crate::exit::for_read_error(&e);
            let _ = writeln!(err, "error: {e} (raise --max-input to read more)");
            return code;
        }
    };
    if bytes.is_empty() {
        let _ = writeln!(
            err,
            "error: {}: the file is empty; give the raw SPE bytes of an AUX buffer",
            args.file.display()
        );
        return crate::exit::INVALID;
    }
    let mode = match args.mode {
        Mode::Arch => DecodeMode::Architecture,
        Mode::Perf => DecodeMode::Perf,
    };
    let summary = summarise(&bytes, mode);
    let recovery = args.recover.then(|| {
        let order = match args.order {
            Order::Sequential => WriteOrder::Sequential,
            Order::Unordered => WriteOrder::Unordered,
        };
        let r = recover(&RecoveryInput {
            bytes: &bytes,
            data_loss: !args.no_data_loss,
            max_record_bytes: args.max_record,
            write_order: order,
        });
        JsonRecovery {
            data_loss: !args.no_data_loss,
            max_record_bytes: args.max_record,
            write_order: match order {
                WriteOrder::Sequential => "sequential",
                WriteOrder::Unordered => "unordered",
            },
            verdict: match r.verdict {
                Verdict::Intact => "intact",
                Verdict::Rewind => "rewind",
                Verdict::Discard(_) => "discard",
            },
            resume_offset: r.resume_offset,
            complete_records: r.complete_records,
            lost_bytes: r.lost_bytes,
            reason: r.to_string(),
        }
    });
    if summary.bad_bytes > 0 {
        let _ = writeln!(
            err,
            "warning: {}: {} bytes do not decode as SPE packets",
            args.file.display(),
            summary.bad_bytes
        );
    }
    let written = match args.format {
        Format::Perf => write_perf(out, &bytes, mode, &summary, recovery.as_ref()),
        Format::Json => write_json(out, &bytes, mode, &summary, recovery.as_ref()),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => crate::exit::OK,
        // `decode BIG | head`: the reader went away; end quietly, as coreutils tools do.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::exit::OK,
        Err(e) => {
            let _ = writeln!(err, "error: writing the output: {e}");
            crate::exit::IO
        }
    }
}

fn summarise(bytes: &[u8], mode: DecodeMode) -> Summary {
    let mut s = Summary {
        bytes: bytes.len(),
        ..Summary::default()
    };
    for item in Packets::new(bytes, mode) {
        match item {
            StreamItem::Packet { bytes, packet, .. } => {
                s.packets += 1;
                if packet.is_padding() {
                    s.padding_bytes += bytes.len();
                }
            }
            StreamItem::Bad { .. } => s.bad_bytes += 1,
        }
    }
    let mut records = Records::new(bytes, DecodeMode::Architecture);
    for item in records.by_ref() {
        match item {
            RecordItem::Record(_) => s.records += 1,
            RecordItem::IncompleteTail { offset, len } => s.incomplete_tail = Some((offset, len)),
        }
    }
    s.padding_between_records = records.padding_between;
    s
}

fn write_perf(
    out: &mut dyn Write,
    bytes: &[u8],
    mode: DecodeMode,
    s: &Summary,
    recovery: Option<&JsonRecovery>,
) -> std::io::Result<()> {
    writeln!(out, ". ... ARM SPE data: size {:#x} bytes", bytes.len())?;
    let mut line = String::with_capacity(128);
    for item in Packets::new(bytes, mode) {
        line.clear();
        let r = match item {
            StreamItem::Packet {
                offset,
                bytes,
                packet,
            } => dump_line(offset, bytes, Some(&packet), &mut line),
            StreamItem::Bad { offset, byte, .. } => dump_line(offset, &[byte], None, &mut line),
        };
        r.map_err(std::io::Error::other)?;
        writeln!(out, "{line}")?;
    }
    let tail = match s.incomplete_tail {
        Some((off, len)) => format!("{len} bytes at {off:#x}"),
        None => "none".into(),
    };
    writeln!(
        out,
        "# {} records, {} bytes, {} packets, {} padding bytes ({} between records), {} bad bytes, incomplete tail: {tail}",
        s.records, s.bytes, s.packets, s.padding_bytes, s.padding_between_records, s.bad_bytes
    )?;
    if let Some(r) = recovery {
        writeln!(
            out,
            "# recover (DL={}, largest record {} bytes, {} writes): {}",
            u8::from(r.data_loss),
            r.max_record_bytes,
            r.write_order,
            r.reason
        )?;
    }
    Ok(())
}
