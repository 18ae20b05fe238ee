//! Linux perf's text for SPE packets, byte for byte: `arm_spe_pkt_desc` and the
//! `perf report -D` / `--dump-raw-trace` line of `arm_spe_dump` (spec sheet §2.3-§2.9).
//!
//! Written against `core::fmt::Write`, so formatting a packet allocates nothing.

use core::fmt::{self, Write};

use crate::spe::packet::{AddressKind, CounterKind, OpClass, Packet};

/// Event names in perf's print order, with their bit (spec sheet §2.6).
pub const EVENT_NAMES: [(u8, &str); 22] = [
    (0, "EXCEPTION-GEN"),
    (1, "RETIRED"),
    (2, "L1D-ACCESS"),
    (3, "L1D-REFILL"),
    (4, "TLB-ACCESS"),
    (5, "TLB-REFILL"),
    (6, "NOT-TAKEN"),
    (7, "MISPRED"),
    (8, "LLC-ACCESS"),
    (9, "LLC-REFILL"),
    (10, "REMOTE-ACCESS"),
    (11, "ALIGNMENT"),
    (16, "TXN"),
    (17, "SVE-PARTIAL-PRED"),
    (18, "SVE-EMPTY-PRED"),
    (19, "L2D-ACCESS"),
    (20, "L2D-MISS"),
    (21, "HITM"),
    (22, "LFB"),
    (23, "SNOOPED"),
    (24, "STREAMING-SVE"),
    (25, "SMCU"),
];

/// perf's packet-type names, used by the raw fallback `"%s 0x%llx (%d)"`.
fn perf_name(p: &Packet) -> &'static str {
    match p {
        Packet::Pad | Packet::PerfAlignment { .. } => "PAD",
        Packet::End => "END",
        Packet::Timestamp(_) => "TS",
        Packet::Address { .. } => "ADDR",
        Packet::Counter { .. } => "LAT",
        Packet::Context { .. } => "CONTEXT",
        Packet::OpType { .. } => "OP-TYPE",
        Packet::Events { .. } => "EVENTS",
        Packet::DataSource { .. } => "DATA-SOURCE",
        Packet::Unknown { .. } => "UNKNOWN",
    }
}

/// The raw payload and index perf prints in its fallback form.
fn raw(p: &Packet) -> (u64, u32) {
    match *p {
        Packet::Timestamp(v) => (v, 0),
        Packet::Events { size, bits } => (bits, size.bytes() as u32),
        Packet::DataSource { value, .. } => (value, 0),
        Packet::Context { index, value } => (value.into(), index.into()),
        Packet::OpType { class, payload } => (payload.into(), class.bits().into()),
        Packet::Address { kind, payload, .. } => (payload, kind.index().into()),
        Packet::Counter { kind, value, .. } => (value.into(), kind.index().into()),
        Packet::Unknown { payload, .. } => (payload, 0),
        Packet::Pad | Packet::End | Packet::PerfAlignment { .. } => (0, 0),
    }
}

/// Writes the description perf's `arm_spe_pkt_desc` gives `p` (current perf, no MIDR-specific
/// event names).
pub fn describe(p: &Packet, w: &mut dyn Write) -> fmt::Result {
    match *p {
        Packet::Pad | Packet::PerfAlignment { .. } => w.write_str("PAD"),
        Packet::End => w.write_str("END"),
        // perf prints both with "%lld": a signed 64-bit value.
        Packet::Timestamp(v) => write!(w, "TS {}", v as i64),
        Packet::DataSource { value, .. } => write!(w, "DATA-SOURCE {}", value as i64),
        Packet::Context { index, value } => {
            write!(w, "CONTEXT {:#x} el{}", value, index + 1)
        }
        Packet::Counter { kind, value, .. } => {
            write!(w, "LAT {value} ")?;
            match kind {
                CounterKind::TotalLatency => w.write_str("TOT"),
                CounterKind::IssueLatency => w.write_str("ISSUE"),
                CounterKind::TranslationLatency => w.write_str("XLAT"),
                CounterKind::Other(_) => Ok(()),
            }
        }
        Packet::Events { bits, .. } => describe_events(bits, w),
        Packet::OpType { class, payload } => describe_op(class, payload, p, w),
        Packet::Address { kind, payload, .. } => describe_address(kind, payload, p, w),
        Packet::Unknown { .. } => fallback(p, w),
    }
}

/// perf's fallback for a packet it cannot describe: `"%s 0x%llx (%d)"`.
fn fallback(p: &Packet, w: &mut dyn Write) -> fmt::Result {
    let (payload, index) = raw(p);
    write!(w, "{} {:#x} ({})", perf_name(p), payload, index)
}

fn describe_events(bits: u64, w: &mut dyn Write) -> fmt::Result {
    w.write_str("EV")?;
    let mut rest = bits;
    for (bit, name) in EVENT_NAMES {
        if rest & (1 << bit) != 0 {
            write!(w, " {name}")?;
        }
        rest &= !(1 << bit);
    }
    if rest != 0 {
        w.write_str(" IMPDEF:")?;
        while rest != 0 {
            let i = rest.trailing_zeros();
            rest &= rest - 1;
            write!(w, "{i}{}", if rest != 0 { "," } else { "" })?;
        }
    }
    Ok(())
}

fn describe_op(class: OpClass, p: u8, packet: &Packet, w: &mut dyn Write) -> fmt::Result {
    let evl = 32u32 << ((p >> 4) & 7);
    match class {
        OpClass::Other => {
            if p & 0x89 == 0x08 {
                write!(w, "SVE-OTHER EVLEN {evl}")?;
                if p & 0x02 != 0 {
                    w.write_str(" FP")?;
                }
                if p & 0x04 != 0 {
                    w.write_str(" PRED")?;
                }
            } else if p & 0x89 == 0x88 {
                let ets = 128u32 << ((((p >> 4) & 7) << 1) | ((p >> 2) & 1));
                write!(w, "SME-OTHER ETS {ets}")?;
                if p & 0x02 != 0 {
                    w.write_str(" FP")?;
                }
            } else if p & 0xf8 == 0 {
                w.write_str("OTHER")?;
                if p & 0x04 != 0 {
                    w.write_str(" ASE")?;
                }
                if p & 0x02 != 0 {
                    w.write_str(" FP")?;
                }
                w.write_str(if p & 1 != 0 {
                    " COND-SELECT"
                } else {
                    " INSN-OTHER"
                })?;
            }
            // Any other class 0 subclass: perf prints nothing at all.
            Ok(())
        }
        OpClass::LoadStore => {
            w.write_str(if p & 1 != 0 { "ST" } else { "LD" })?;
            if p & 0xe2 == 0x02 {
                for (bit, name) in [(2, " AT"), (3, " EXCL"), (4, " AR")] {
                    if p & (1 << bit) != 0 {
                        w.write_str(name)?;
                    }
                }
                Ok(())
            } else if p & 0xfe == 0x04 {
                w.write_str(" SIMD-FP")
            } else if p & 0xfe == 0x00 {
                w.write_str(" GP-REG")
            } else if p & 0xfe == 0x10 {
                w.write_str(" UNSPEC-REG")
            } else if p & 0xfe == 0x30 {
                w.write_str(" NV-SYSREG")
            } else if p & 0xfe == 0x14 {
                w.write_str(" MTE-TAG")
            } else if p & 0xfe == 0x20 {
                w.write_str(" MEMCPY")
            } else if p == 0x25 {
                w.write_str(" MEMSET")
            } else if p & 0x0a == 0x08 {
                write!(w, " SVE-SME-REG EVLEN {evl}")?;
                if p & 0x04 != 0 {
                    w.write_str(" PRED")?;
                }
                if p & 0x80 != 0 {
                    w.write_str(" SG")?;
                }
                Ok(())
            } else if p & 0xfa == 0x40 {
                w.write_str(" GCS")?;
                if p & 0x04 != 0 {
                    w.write_str(" COMM")?;
                }
                Ok(())
            } else {
                Ok(())
            }
        }
        OpClass::Branch => {
            w.write_str("B")?;
            for (bit, name) in [(0, " COND"), (1, " IND"), (2, " GCS")] {
                if p & (1 << bit) != 0 {
                    w.write_str(name)?;
                }
            }
            match (p >> 3) & 3 {
                1 => w.write_str(" CR-BL"),
                2 => w.write_str(" CR-RET"),
                3 => w.write_str(" CR-NON-BL-RET"),
                _ => Ok(()),
            }
        }
        OpClass::Reserved => fallback(packet, w),
    }
}

fn describe_address(kind: AddressKind, p: u64, packet: &Packet, w: &mut dyn Write) -> fmt::Result {
    let addr = p & ((1 << 56) - 1);
    let ns = p >> 63;
    match kind {
        AddressKind::Pc | AddressKind::BranchTarget | AddressKind::PrevBranchTarget => {
            let name = match kind {
                AddressKind::Pc => "PC",
                AddressKind::BranchTarget => "TGT",
                _ => "PBT",
            };
            let el = (p >> 61) & 3;
            write!(w, "{name} {addr:#x} el{el} ns={ns}")
        }
        AddressKind::DataVirtual => write!(w, "VA {p:#x}"),
        AddressKind::DataPhysical => {
            let ch = (p >> 62) & 1;
            let pat = (p >> 56) & 0xf;
            write!(w, "PA {addr:#x} ns={ns} ch={ch} pat={pat:x}")
        }
        AddressKind::ImplementationDefined(_) => fallback(packet, w),
    }
}

/// A packet's description as a `Display` value.
#[derive(Clone, Copy, Debug)]
pub struct Describe<'a>(pub &'a Packet);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(self.0, f)
    }
}

/// Writes one `perf report -D` dump line: `"."`, the offset, up to 16 bytes, and the description
/// (or " Bad packet!" when `packet` is `None`), without the trailing newline.
pub fn dump_line(
    offset: usize,
    bytes: &[u8],
    packet: Option<&Packet>,
    w: &mut dyn Write,
) -> fmt::Result {
    // The fixed-width prefix is built in a stack buffer and written once: formatting each byte
    // through `write!` would dominate the cost.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = [b' '; DUMP_TEXT_COLUMN];
    line[0] = b'.';
    for i in 0..8 {
        line[3 + i] = HEX[(offset >> (28 - 4 * i)) & 0xf];
    }
    line[11] = b':';
    for (i, b) in bytes.iter().take(16).enumerate() {
        line[14 + 3 * i] = HEX[(b >> 4) as usize];
        line[15 + 3 * i] = HEX[(b & 0xf) as usize];
    }
    // Offsets wider than 8 hex digits print in full, as "%08x" would.
    if offset > 0xffff_ffff {
        write!(w, ".  {offset:08x}: ")?;
        w.write_str(core::str::from_utf8(&line[13..]).map_err(|_| fmt::Error)?)?;
    } else {
        w.write_str(core::str::from_utf8(&line).map_err(|_| fmt::Error)?)?;
    }
    match packet {
        Some(p) => describe(p, w),
        None => w.write_str("Bad packet!"),
    }
}

/// Column at which the description starts in a dump line (what spe-parser strips).
pub const DUMP_TEXT_COLUMN: usize = 62;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spe::packet::{DecodeMode, parse};

    fn text(bytes: &[u8]) -> String {
        let (p, _) = parse(bytes, DecodeMode::Perf, 0).expect("parses");
        Describe(&p).to_string()
    }

    #[test]
    fn synthesized_packets_the_real_data_lacks_print_like_perf() {
        assert_eq!(text(&[0x01]), "END");
        assert_eq!(text(&[0x64, 0x2a, 0, 0, 0]), "CONTEXT 0x2a el1");
        assert_eq!(
            text(&[0xb4, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xa0]),
            "PBT 0xdcba9876543210 el1 ns=1"
        );
        assert_eq!(
            text(&[0x72, 0x02, 0x10, 0, 0, 0, 0, 0, 0x80]),
            "EV RETIRED IMPDEF:12,63"
        );
        assert_eq!(
            text(&[0x62, 0x00, 0x00, 0xff, 0x03]),
            "EV TXN SVE-PARTIAL-PRED SVE-EMPTY-PRED L2D-ACCESS L2D-MISS HITM LFB SNOOPED STREAMING-SVE SMCU"
        );
        assert_eq!(text(&[0x9c, 5, 0]), "LAT 5 ");
        assert_eq!(text(&[0x20, 0x98, 7, 0]), "LAT 7 TOT");
        assert_eq!(text(&[0x21, 0x99, 7, 0]), "LAT 7 ");
        assert_eq!(text(&[0x20, 0xb5, 1, 0, 0, 0, 0, 0, 0, 0]), "ADDR 0x1 (5)");
        assert_eq!(text(&[0x4b, 0x07]), "OP-TYPE 0x7 (3)");
        assert_eq!(
            text(&[0x71, 0, 0, 0, 0, 0, 0, 0, 0x80]),
            "TS -9223372036854775808"
        );
    }

    #[test]
    fn sve_sme_gcs_and_call_return_op_types_print_like_perf() {
        assert_eq!(text(&[0x48, 0x3e]), "SVE-OTHER EVLEN 256 FP PRED");
        assert_eq!(text(&[0x48, 0x8e]), "SME-OTHER ETS 256 FP");
        assert_eq!(text(&[0x48, 0xa8]), "SME-OTHER ETS 2048");
        assert_eq!(text(&[0x48, 0x10]), "");
        assert_eq!(text(&[0x49, 0xac]), "LD SVE-SME-REG EVLEN 128 PRED SG");
        assert_eq!(text(&[0x49, 0x45]), "ST GCS COMM");
        assert_eq!(text(&[0x49, 0x25]), "ST MEMSET");
        assert_eq!(text(&[0x49, 0x20]), "LD MEMCPY");
        assert_eq!(text(&[0x49, 0x31]), "ST NV-SYSREG");
        assert_eq!(text(&[0x49, 0x15]), "ST MTE-TAG");
        assert_eq!(text(&[0x49, 0x1e]), "LD AT EXCL AR");
        assert_eq!(text(&[0x4a, 0x0f]), "B COND IND GCS CR-BL");
        assert_eq!(text(&[0x4a, 0x10]), "B CR-RET");
        assert_eq!(text(&[0x4a, 0x18]), "B CR-NON-BL-RET");
    }

    #[test]
    fn dump_lines_put_the_description_at_column_62() {
        let (p, n) = parse(&[0x4a, 0x01], DecodeMode::Perf, 0).expect("parses");
        let mut s = String::new();
        dump_line(0x1c, &[0x4a, 0x01][..n], Some(&p), &mut s).expect("fmt");
        assert_eq!(&s[..13], ".  0000001c: ");
        assert_eq!(&s[DUMP_TEXT_COLUMN..], "B COND");
        let mut bad = String::new();
        dump_line(3, &[0xff], None, &mut bad).expect("fmt");
        assert!(bad.ends_with("    Bad packet!"));
    }
}
