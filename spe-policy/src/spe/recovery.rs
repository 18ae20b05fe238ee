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

use crate::spe::packet::{HEADER_CLASS, HeaderClass, PACKET_LEN, size_encoded_len, zero_run};

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
        ) && crate::spe::packet::PACKET_LEN_CONST[h] == size_encoded_len(h as u8)
        {
            // Only packets whose length follows the size field (§2.2) take the fast path.
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

/// The framing state of one pass over the bytes (architecture mode, spec sheet §2.2).
#[derive(Clone, Copy, Debug)]
struct Pass {
    pos: usize,
    /// Where the record being parsed started.
    rec_start: Option<usize>,
    /// The first packet in that record a partial record of today's SPUs cannot hold.
    tail_problem: Option<usize>,
    records: usize,
    last_end: usize,
    provable_end: usize,
    provable_records: usize,
    /// The first complete record longer than MaxSize: (offset, length).
    too_long: Option<(usize, usize)>,
    /// How many such records this pass has seen.
    too_long_count: usize,
}

impl Pass {
    const fn at(pos: usize) -> Self {
        Pass {
            pos,
            rec_start: None,
            tail_problem: None,
            records: 0,
            last_end: pos,
            provable_end: pos,
            provable_records: 0,
            too_long: None,
            too_long_count: 0,
        }
    }

    /// Steps over one packet (with `burst`, over every ordinary packet up to the next one that
    /// needs a look). Returns whether a record ended here. Call only while `pos < total`.
    #[inline(always)]
    fn step(&mut self, bytes: &[u8], max: usize, window_start: usize, burst: bool) -> bool {
        let total = bytes.len();
        let Some(&h) = bytes.get(self.pos) else {
            return false;
        };
        let class = HEADER_CLASS[h as usize];
        if self.rec_start.is_some() && PLAIN_LEN[h as usize] != 0 {
            // The hot path: ordinary packets inside a record, where only the length matters.
            self.pos += size_encoded_len(h) as usize;
            if burst {
                while let Some(&next) = bytes.get(self.pos) {
                    // The table only predicts the branch; the length is computed.
                    if PLAIN_LEN[next as usize] == 0 {
                        break;
                    }
                    self.pos += size_encoded_len(next) as usize;
                }
            }
            return false;
        }
        if h == 0 {
            // Padding, inside or between records: skip the whole run.
            self.pos += zero_run(&bytes[self.pos..]);
            return false;
        }
        let (len, known) = match class {
            HeaderClass::Extended => match bytes.get(self.pos + 1) {
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
        let start = *self.rec_start.get_or_insert(self.pos);
        if !known && self.tail_problem.is_none() {
            // Legal in a complete record (future packets are skipped by size), but not
            // something a partial record of today's SPUs can hold.
            self.tail_problem = Some(self.pos);
        }
        self.pos += len;
        if self.pos > total {
            // The torn end of the partial record, which rec_start already marks.
            return false;
        }
        if !matches!(class, HeaderClass::End | HeaderClass::Timestamp) {
            return false;
        }
        if self.pos - start > max {
            self.too_long_count += 1;
            self.too_long.get_or_insert((start, self.pos - start));
        }
        self.records += 1;
        self.last_end = self.pos;
        if self.pos <= window_start {
            self.provable_end = self.pos;
            self.provable_records = self.records;
        }
        self.rec_start = None;
        self.tail_problem = None;
        true
    }

    /// Runs to the end of `bytes`, or to the first record longer than MaxSize.
    fn finish(mut self, bytes: &[u8], max: usize, window_start: usize) -> Self {
        while self.pos < bytes.len() && self.too_long.is_none() {
            self.step(bytes, max, window_start, true);
        }
        self
    }
}

/// Regions at least this long are framed by two interleaved passes.
const SPLIT_MIN: usize = 64 << 10;
/// Record ends the second pass remembers for the first to meet.
const SYNC_POINTS: usize = 32;

/// Frames `bytes` from offset 0. The byte-to-byte chain of a framing pass is a chain of
/// dependent loads, so a long region is framed by two passes at once: the true one from 0, and
/// a speculative one from the middle, interleaved so their chains overlap in the CPU. Where a
/// packet starts depends only on where the previous one started, so once the first pass ends a
/// record exactly where the second one did, the second pass's results from there on are the
/// first's (the same packets, the same records, from the same canonical state). If they never
/// meet, the first pass simply runs on: the result is always the sequential one (tested).
fn frame(bytes: &[u8], max: usize, window_start: usize, split_min: usize) -> Pass {
    let total = bytes.len();
    if total < split_min.max(2) {
        return Pass::at(0).finish(bytes, max, window_start);
    }
    let mid = total / 2;
    let mut a = Pass::at(0);
    let mut b = Pass::at(mid);
    // (end offset, b's records there, b's too-long count there)
    let mut ends = [(0usize, 0usize, 0usize); SYNC_POINTS];
    let mut n_ends = 0;
    while a.pos < mid && b.pos < total {
        a.step(bytes, max, window_start, false);
        if a.too_long.is_some() {
            return a;
        }
        if b.step(bytes, max, window_start, false) && n_ends < SYNC_POINTS {
            ends[n_ends] = (b.pos, b.records, b.too_long_count);
            n_ends += 1;
        }
    }
    while b.pos < total {
        if b.step(bytes, max, window_start, true) && n_ends < SYNC_POINTS {
            ends[n_ends] = (b.pos, b.records, b.too_long_count);
            n_ends += 1;
        }
    }
    let mut j = 0;
    loop {
        while j < n_ends && ends[j].0 < a.pos {
            j += 1;
        }
        if j == n_ends || a.pos >= total {
            return a.finish(bytes, max, window_start);
        }
        let (at, b_records, b_too_long) = ends[j];
        // `last_end == pos` means the true pass's last step ended a record right here.
        if at == a.pos && a.last_end == at {
            // Met: both passes just ended a record here.
            if b.too_long_count > b_too_long {
                // A record after here is too long: let the true pass find which.
                return a.finish(bytes, max, window_start);
            }
            let after = b.records - b_records;
            let (provable_end, provable_records) = if b.provable_records > b_records {
                (b.provable_end, a.records + (b.provable_records - b_records))
            } else {
                (a.provable_end, a.provable_records)
            };
            return Pass {
                pos: b.pos,
                rec_start: b.rec_start,
                tail_problem: b.tail_problem,
                records: a.records + after,
                last_end: if after > 0 { b.last_end } else { a.last_end },
                provable_end,
                provable_records,
                too_long: None,
                too_long_count: 0,
            };
        }
        a.step(bytes, max, window_start, false);
        if a.too_long.is_some() {
            return a;
        }
    }
}

/// Decides where to resume. Linear in the input, never allocates, never panics.
pub fn recover(input: &RecoveryInput<'_>) -> Recovery {
    recover_with(input, SPLIT_MIN)
}

/// [`recover`], with two-pass framing from `split_min` bytes (tests use small values).
#[doc(hidden)]
pub fn recover_with(input: &RecoveryInput<'_>, split_min: usize) -> Recovery {
    let total = input.bytes.len();
    let max = input.max_record_bytes.max(1);
    let discard = |reason| Recovery {
        resume_offset: 0,
        complete_records: 0,
        lost_bytes: total,
        verdict: Verdict::Discard(reason),
    };
    let window_start = total.saturating_sub(max);
    let p = frame(input.bytes, max, window_start, split_min);
    if let Some((offset, len)) = p.too_long {
        return discard(DiscardReason::RecordTooLong { offset, len });
    }
    let (records, last_end, provable_end, provable_records) =
        (p.records, p.last_end, p.provable_end, p.provable_records);
    let (rec_start, tail_problem) = (p.rec_start, p.tail_problem);
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
