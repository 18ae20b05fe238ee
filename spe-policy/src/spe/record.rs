//! Record assembly: packets grouped into records that end with a Timestamp or End packet, with
//! padding allowed inside and between records (spec sheet §2.1, §2.8).

use crate::spe::packet::{
    AddressKind, CounterKind, DecodeMode, HEADER_CLASS, HeaderClass, OpClass, Packet, parse,
    read_payload, size_encoded_len, zero_run,
};

/// Single-byte headers the fast path decodes: every known class but padding (handled as runs),
/// extended and unknown headers.
/// Only those whose length is [`fast_len`]'s (every one today; a table entry guards it), so
/// the chain from one header to the next is a load and a few ALU operations.
static PLAIN_OR_END: [bool; 256] = plain_or_end();

const fn plain_or_end() -> [bool; 256] {
    let mut t = [false; 256];
    let mut h = 0;
    while h < 256 {
        t[h] = !matches!(
            crate::spe::packet::HEADER_CLASS_CONST[h],
            HeaderClass::Pad | HeaderClass::Extended | HeaderClass::Unknown
        ) && crate::spe::packet::PACKET_LEN_CONST[h] == fast_len(h as u8);
        h += 1;
    }
    t
}

/// The length of a fast-path packet: End is one byte, the rest follow the size field.
#[inline(always)]
const fn fast_len(h: u8) -> u8 {
    if h == 0x01 { 1 } else { size_encoded_len(h) }
}

/// The fields of one sample record. Addresses are raw payloads; the `*_address` methods apply
/// perf's fix-ups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// Offset of the record's first packet.
    pub offset: usize,
    /// Bytes from the first packet to the end of the Timestamp/End packet.
    pub len: usize,
    /// Packets in the record, padding included.
    pub packets: u16,
    /// Padding bytes inside the record.
    pub pad_bytes: u16,
    /// Unknown (skipped) packets inside the record.
    pub unknown_packets: u16,
    /// Instruction address payload (index 0).
    pub pc: Option<u64>,
    /// Branch target payload (index 1).
    pub branch_target: Option<u64>,
    /// Data virtual address payload (index 2).
    pub data_va: Option<u64>,
    /// Data physical address payload (index 3).
    pub data_pa: Option<u64>,
    /// Previous branch target payload (index 4).
    pub prev_branch_target: Option<u64>,
    /// Operation type: class and subclass payload.
    pub op: Option<(OpClass, u8)>,
    /// Event bits (0 when the record has no Events packet).
    pub events: u64,
    /// Total latency.
    pub total_latency: Option<u16>,
    /// Issue latency.
    pub issue_latency: Option<u16>,
    /// Translation latency.
    pub translation_latency: Option<u16>,
    /// Context packet: index (0 = CONTEXTIDR_EL1, 1 = CONTEXTIDR_EL2) and value.
    pub context: Option<(u8, u32)>,
    /// Data source value.
    pub data_source: Option<u64>,
    /// Timestamp; `None` when the record ended with an End packet.
    pub timestamp: Option<u64>,
}

/// perf's fix-up of an instruction-class address (PC, TGT, PBT; LNX-DEC `arm_spe_calc_ip`):
/// bits `[55:0]`, with the top byte set to 0xff for a non-secure EL1 or EL2 address.
pub const fn instruction_address(payload: u64) -> u64 {
    let addr = payload & ((1 << 56) - 1);
    let ns = payload >> 63 == 1;
    let el = (payload >> 61) & 3;
    if ns && (el == 1 || el == 2) {
        addr | 0xff << 56
    } else {
        addr
    }
}

/// perf's fix-up of a data virtual address: the tag byte cleared, and 0xff when VA`[55:52]` is
/// 0xf (a kernel address).
pub const fn data_virtual_address(payload: u64) -> u64 {
    let addr = payload & ((1 << 56) - 1);
    if (addr >> 52) & 0xf == 0xf {
        addr | 0xff << 56
    } else {
        addr
    }
}

impl Record {
    /// The PC with perf's fix-up.
    pub fn pc_address(&self) -> Option<u64> {
        self.pc.map(instruction_address)
    }

    /// The branch target with perf's fix-up.
    pub fn branch_target_address(&self) -> Option<u64> {
        self.branch_target.map(instruction_address)
    }

    /// The data VA with perf's fix-up.
    pub fn data_va_address(&self) -> Option<u64> {
        self.data_va.map(data_virtual_address)
    }

    /// The data PA (bits `[55:0]`).
    pub fn data_pa_address(&self) -> Option<u64> {
        self.data_pa.map(|p| p & ((1 << 56) - 1))
    }

    /// The exception level of the PC (payload bits `[62:61]`).
    pub fn pc_el(&self) -> Option<u8> {
        self.pc.map(|p| ((p >> 61) & 3) as u8)
    }

    /// Whether the PC is non-secure (payload bit 63).
    pub fn pc_ns(&self) -> Option<bool> {
        self.pc.map(|p| p >> 63 == 1)
    }

    /// Adds one packet's fields.
    fn absorb(&mut self, p: &Packet, bytes: usize) {
        self.packets = self.packets.saturating_add(1);
        match *p {
            Packet::Pad | Packet::PerfAlignment { .. } => {
                self.pad_bytes = self.pad_bytes.saturating_add(bytes as u16);
            }
            Packet::End => {}
            Packet::Timestamp(ts) => self.timestamp = Some(ts),
            Packet::Events { bits, .. } => self.events = bits,
            Packet::DataSource { value, .. } => self.data_source = Some(value),
            Packet::Context { index, value } => self.context = Some((index, value)),
            Packet::OpType { class, payload } => self.op = Some((class, payload)),
            Packet::Address { kind, payload, .. } => {
                let slot = match kind {
                    AddressKind::Pc => &mut self.pc,
                    AddressKind::BranchTarget => &mut self.branch_target,
                    AddressKind::DataVirtual => &mut self.data_va,
                    AddressKind::DataPhysical => &mut self.data_pa,
                    AddressKind::PrevBranchTarget => &mut self.prev_branch_target,
                    AddressKind::ImplementationDefined(_) => return,
                };
                *slot = Some(payload);
            }
            Packet::Counter { kind, value, .. } => match kind {
                CounterKind::TotalLatency => self.total_latency = Some(value),
                CounterKind::IssueLatency => self.issue_latency = Some(value),
                CounterKind::TranslationLatency => self.translation_latency = Some(value),
                CounterKind::Other(_) => {}
            },
            Packet::Unknown { .. } => {
                self.unknown_packets = self.unknown_packets.saturating_add(1);
            }
        }
    }
}

/// What a stream holds, record by record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordItem {
    /// A complete record.
    Record(Record),
    /// Bytes after the last complete record that do not end a record: a partly written record,
    /// bytes that do not parse, or both.
    IncompleteTail {
        /// Offset of the first byte of the tail.
        offset: usize,
        /// Its length.
        len: usize,
    },
}

/// Iterator over the records of a stream. Never allocates; linear in the input.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    mode: DecodeMode,
    done: bool,
    /// Padding bytes between records seen so far.
    pub padding_between: usize,
}

impl<'a> Records<'a> {
    /// Records of `buf` decoded in `mode`.
    pub fn new(buf: &'a [u8], mode: DecodeMode) -> Self {
        Records {
            buf,
            pos: 0,
            mode,
            done: false,
            padding_between: 0,
        }
    }
}

/// What [`Records::next_into`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// A complete record was written into the caller's [`Record`].
    Record,
    /// The bytes from `offset` (`len` of them) do not end a record.
    IncompleteTail {
        /// Offset of the tail.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// The stream is exhausted.
    Done,
}

impl Records<'_> {
    /// Decodes the next record into `r` without moving it: the allocation- and copy-free form of
    /// the iterator, for hot loops.
    pub fn next_into(&mut self, r: &mut Record) -> Fill {
        if self.done {
            return Fill::Done;
        }
        let len = self.buf.len();
        let mut started = false;
        loop {
            let rest = &self.buf[self.pos.min(len)..];
            if rest.is_empty() {
                self.done = true;
                return if started {
                    Fill::IncompleteTail {
                        offset: r.offset,
                        len: len - r.offset,
                    }
                } else {
                    Fill::Done
                };
            }
            if rest[0] == 0 {
                // A run of padding, inside or between records.
                let run = zero_run(rest);
                if started {
                    r.packets = r.packets.saturating_add(run as u16);
                    r.pad_bytes = r.pad_bytes.saturating_add(run as u16);
                } else {
                    self.padding_between += run;
                }
                self.pos += run;
                continue;
            }
            let offset = self.pos;
            if !started {
                *r = Record {
                    offset,
                    ..Record::default()
                };
                started = true;
            }
            // Fast path: known single-byte headers whose packets fit, one after the other;
            // fields go straight into the record without building a `Packet`. Anything else
            // (padding, extended or unknown headers, a torn packet) goes back to the loop.
            let mut fast = false;
            while let Some(&h) = self.buf.get(self.pos) {
                let n = fast_len(h) as usize;
                if !PLAIN_OR_END[h as usize] || self.pos + n > len {
                    break;
                }
                fast = true;
                let v = read_payload(&self.buf[self.pos..], 1, n - 1);
                r.packets = r.packets.saturating_add(1);
                self.pos += n;
                match HEADER_CLASS[h as usize] {
                    HeaderClass::Timestamp => {
                        r.timestamp = Some(v);
                        r.len = self.pos - r.offset;
                        return Fill::Record;
                    }
                    HeaderClass::End => {
                        r.len = self.pos - r.offset;
                        return Fill::Record;
                    }
                    HeaderClass::Address => match h & 7 {
                        0 => r.pc = Some(v),
                        1 => r.branch_target = Some(v),
                        2 => r.data_va = Some(v),
                        3 => r.data_pa = Some(v),
                        4 => r.prev_branch_target = Some(v),
                        _ => {}
                    },
                    HeaderClass::Counter => match h & 7 {
                        0 => r.total_latency = Some(v as u16),
                        1 => r.issue_latency = Some(v as u16),
                        2 => r.translation_latency = Some(v as u16),
                        _ => {}
                    },
                    HeaderClass::Events => r.events = v,
                    HeaderClass::OpType => r.op = Some((OpClass::from_bits(h), v as u8)),
                    HeaderClass::Context => r.context = Some((h & 3, v as u32)),
                    HeaderClass::DataSource => r.data_source = Some(v),
                    HeaderClass::Pad | HeaderClass::Extended | HeaderClass::Unknown => {}
                }
            }
            if fast {
                continue;
            }
            match parse(rest, self.mode, offset) {
                Err(_) => {
                    // A byte that does not start a packet cannot be part of a record: everything
                    // from the record's start is an incomplete tail, and the stream is not
                    // resynchronised.
                    self.done = true;
                    return Fill::IncompleteTail {
                        offset: r.offset,
                        len: len - r.offset,
                    };
                }
                Ok((packet, n)) => {
                    self.pos += n;
                    r.absorb(&packet, n);
                    if packet.ends_record() {
                        r.len = self.pos - r.offset;
                        return Fill::Record;
                    }
                }
            }
        }
    }
}

impl Iterator for Records<'_> {
    type Item = RecordItem;

    fn next(&mut self) -> Option<RecordItem> {
        let mut r = Record::default();
        match self.next_into(&mut r) {
            Fill::Record => Some(RecordItem::Record(r)),
            Fill::IncompleteTail { offset, len } => {
                Some(RecordItem::IncompleteTail { offset, len })
            }
            Fill::Done => None,
        }
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    #[test]
    fn every_plain_single_byte_header_takes_the_fast_path_with_its_real_length() {
        for h in 0..=255u8 {
            let plain = !matches!(
                HEADER_CLASS[h as usize],
                HeaderClass::Pad | HeaderClass::Extended | HeaderClass::Unknown
            );
            assert_eq!(PLAIN_OR_END[h as usize], plain, "header {h:#04x}");
            if plain {
                assert_eq!(
                    fast_len(h),
                    crate::spe::packet::PACKET_LEN[h as usize],
                    "header {h:#04x}"
                );
            }
        }
    }
}
