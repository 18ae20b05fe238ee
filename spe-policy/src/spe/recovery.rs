//! The last-good-record recovery scanner: after a buffer management event, where does the last
//! record that can be *proven* complete end, or must the data be discarded?
//!
//! The rules it stands on (spec sheet §1.11):
//! * DL=0 guarantees PMBPTR is the first byte after the last complete record (rule 7);
//! * DL=1 means the record being written when the event hit is partial; PMBPTR is the faulting
//!   address, inside that record (rule 5);
//! * records are at most 2^PMSIDR_EL1.MaxSize bytes, padding included (§1.9, §2.8);
//! * the architecture does not require a record to be written sequentially (rule 2): bytes of
//!   the partial record before PMBPTR may be stale ("holes").
//!
//! The scanner parses from a known record boundary in architecture mode. Under
//! [`WriteOrder::Sequential`] (the reference pseudocode's `SPEWriteToBuffer`, byte after byte)
//! the bytes after the last complete record are a prefix of the partial record, so the last
//! complete record is proven. Under [`WriteOrder::Unordered`] (the architectural minimum) the
//! partial record began less than MaxSize bytes before PMBPTR, so only records ending at least
//! MaxSize bytes before PMBPTR are proven.

use core::fmt;

use crate::spe::packet::{HEADER_CLASS, HeaderClass, PACKET_LEN, zero_run};

/// The length of every header that neither ends a record nor needs a second look (every
/// known single-byte header but padding, Timestamp and End), else 0.
static PLAIN_LEN: [u8; 256] = plain_len_table();

const fn plain_len_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut h = 0;
    while h < 256 {
        if !matches!(
            crate::spe::packet::HEADER_CLASS_CONST[h],
            HeaderClass::Pad
                | HeaderClass::End
                | HeaderClass::Timestamp
                | HeaderClass::Extended
                | HeaderClass::Unknown
        ) {
            t[h] = crate::spe::packet::PACKET_LEN_CONST[h];
        }
        h += 1;
    }
    t
}

/// What the host may assume about how the SPU writes a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WriteOrder {
    /// Byte after byte in address order, as the Arm pseudocode's `SPEWriteToBuffer`.
    Sequential,
    /// In any order within a record (all the architecture guarantees, ARM-D17.1).
    #[default]
    Unordered,
}

/// The inputs of a recovery decision.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryInput<'a> {
    /// Bytes from a known record boundary (buffer base, or the last point the host knows is
    /// good) up to PMBPTR.
    pub bytes: &'a [u8],
    /// PMBSR_EL1.DL.
    pub data_loss: bool,
    /// The largest record in bytes, 2^PMSIDR_EL1.MaxSize.
    pub max_record_bytes: usize,
    /// What may be assumed about the write order.
    pub write_order: WriteOrder,
}

/// Why the region must be discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardReason {
    /// A complete record longer than MaxSize: the stream is not in sync or not SPE data.
    RecordTooLong {
        /// Offset of the record.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// DL=0 promises PMBPTR follows a complete record, but the bytes after the last complete
    /// record do not end one: the region did not start at a record boundary, or is corrupt.
    TailWithoutDataLoss {
        /// Offset of the tail.
        offset: usize,
    },
    /// The partial record's bytes cannot be a record prefix: an unknown header or a torn
    /// packet before its end (undefined bytes left by a non-sequential write).
    UndefinedBytes {
        /// Offset of the first undefined byte.
        offset: usize,
    },
    /// The partial record is already MaxSize bytes or longer.
    PartialTooLong {
        /// Offset of the partial record.
        offset: usize,
        /// Its length so far.
        len: usize,
    },
}

/// The scanner's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// DL=0 and the region is whole records: keep everything, PMBPTR stays.
    Intact,
    /// Rewind PMBPTR to `resume_offset`: the bytes after it are lost.
    Rewind,
    /// Nothing in the region can be trusted: rewind to its start.
    Discard(DiscardReason),
}

/// Where to resume and what is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Recovery {
    /// The offset just after the last provably complete record (0 to discard everything).
    pub resume_offset: usize,
    /// Whole records before `resume_offset`.
    pub complete_records: usize,
    /// Bytes after `resume_offset` that are given up.
    pub lost_bytes: usize,
    /// The decision.
    pub verdict: Verdict,
}

impl fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DiscardReason::RecordTooLong { offset, len } => write!(
                f,
                "record at {offset:#x} is {len} bytes, longer than the SPU's largest record"
            ),
            DiscardReason::TailWithoutDataLoss { offset } => write!(
                f,
                "DL=0 but the bytes from {offset:#x} do not end a record (region not at a record boundary?)"
            ),
            DiscardReason::UndefinedBytes { offset } => write!(
                f,
                "the partial record has undefined bytes at {offset:#x} (non-sequential write)"
            ),
            DiscardReason::PartialTooLong { offset, len } => write!(
                f,
                "the partial record at {offset:#x} is already {len} bytes, not shorter than the largest record"
            ),
        }
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            Verdict::Intact => write!(
                f,
                "intact: {} whole records, keep all {:#x} bytes",
                self.complete_records, self.resume_offset
            ),
            Verdict::Rewind => write!(
                f,
                "rewind to {:#x}: {} whole records kept, the {} bytes after it given up",
                self.resume_offset, self.complete_records, self.lost_bytes
            ),
            Verdict::Discard(reason) => {
                write!(f, "discard {} bytes: {reason}", self.lost_bytes)
            }
        }
    }
}

/// Decides where to resume. Linear in the input, never allocates, never panics.
pub fn recover(input: &RecoveryInput<'_>) -> Recovery {
    let total = input.bytes.len();
    let max = input.max_record_bytes.max(1);
    let discard = |reason| Recovery {
        resume_offset: 0,
        complete_records: 0,
        lost_bytes: total,
        verdict: Verdict::Discard(reason),
    };
    // Record ends, newest last: (end offset, records up to it). Only the newest ones matter
    // for the unordered rule, so keep a running "provable" point instead of a list.
    let mut last_end = 0usize;
    let mut records = 0usize;
    let mut provable_end = 0usize;
    let mut provable_records = 0usize;
    let window_start = total.saturating_sub(max);
    let mut rec_start: Option<usize> = None;
    let mut tail_problem: Option<usize> = None;
    // Architecture-mode framing straight from the header tables: the scanner needs packet
    // boundaries and classes, never payload values.
    let bytes = input.bytes;
    let mut pos = 0usize;
    while let Some(&h) = bytes.get(pos) {
        let class = HEADER_CLASS[h as usize];
        if rec_start.is_some() && PLAIN_LEN[h as usize] != 0 {
            // The hot path: ordinary packets inside a record, where only the length matters.
            // A tight inner loop until the next packet that needs a look (terminator, padding,
            // extended or unknown header) or the end.
            pos += PLAIN_LEN[h as usize] as usize;
            while let Some(&next) = bytes.get(pos) {
                let n = PLAIN_LEN[next as usize] as usize;
                if n == 0 {
                    break;
                }
                pos += n;
            }
            continue;
        }
        if h == 0 {
            // Padding, inside or between records: skip the whole run.
            pos += zero_run(&bytes[pos..]);
            continue;
        }
        let (len, known) = match class {
            HeaderClass::Extended => match bytes.get(pos + 1) {
                Some(&h1) => {
                    let second = HEADER_CLASS[h1 as usize];
                    let known = matches!(second, HeaderClass::Address | HeaderClass::Counter);
                    (1 + PACKET_LEN[h1 as usize] as usize, known)
                }
                None => (2, true),
            },
            HeaderClass::Unknown => (PACKET_LEN[h as usize] as usize, false),
            _ => (PACKET_LEN[h as usize] as usize, true),
        };
        let start = *rec_start.get_or_insert(pos);
        if !known && tail_problem.is_none() {
            // Legal in a complete record (future packets are skipped by size), but not
            // something a partial record of today's SPUs can hold.
            tail_problem = Some(pos);
        }
        pos += len;
        if pos > total {
            break;
        }
        if matches!(class, HeaderClass::End | HeaderClass::Timestamp) {
            if pos - start > max {
                return discard(DiscardReason::RecordTooLong {
                    offset: start,
                    len: pos - start,
                });
            }
            records += 1;
            last_end = pos;
            if pos <= window_start {
                provable_end = pos;
                provable_records = records;
            }
            rec_start = None;
            tail_problem = None;
        }
    }
    // A last packet cut by the end of the region (pos > total) is the torn end of the partial
    // record, which rec_start already marks.
    let rewind = |resume: usize, kept: usize| Recovery {
        resume_offset: resume,
        complete_records: kept,
        lost_bytes: total - resume,
        verdict: Verdict::Rewind,
    };
    let (order_resume, order_kept) = match input.write_order {
        WriteOrder::Sequential => (last_end, records),
        WriteOrder::Unordered => (provable_end, provable_records),
    };
    let Some(tail) = rec_start else {
        // No partial record visible: the region parses as whole records (and padding).
        return if !input.data_loss {
            Recovery {
                resume_offset: total,
                complete_records: records,
                lost_bytes: 0,
                verdict: Verdict::Intact,
            }
        } else {
            // DL=1 all the same: under unordered writes the last "whole" record may be the
            // partial one with stale bytes that happen to end it.
            rewind(order_resume, order_kept)
        };
    };
    if !input.data_loss {
        return discard(DiscardReason::TailWithoutDataLoss { offset: tail });
    }
    if total - tail >= max {
        return discard(DiscardReason::PartialTooLong {
            offset: tail,
            len: total - tail,
        });
    }
    if let Some(offset) = tail_problem {
        return discard(DiscardReason::UndefinedBytes { offset });
    }
    rewind(order_resume, order_kept)
}
