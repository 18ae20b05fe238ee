//! Recovering a guest's profiling buffer after a buffer management event the host handles:
//! read the bytes from the last known record boundary to PMBPTR through the guest's stage 1
//! and run the recovery scanner on them (spec sheet §1.11; [`crate::spe::recover`]).

use crate::addr::Gva;
use crate::arch::walk::{RangeLimits, WalkError, Walker};
use crate::guest_memory::GuestMemoryRead;
use crate::spe::{Recovery, RecoveryInput, Verdict, WriteOrder, recover};

/// How a strategy recovers from DL=1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RecoveryMode {
    /// Parse the buffer and rewind PMBPTR to the last provably complete record.
    #[default]
    Rewind,
    /// Do not parse: discard everything since the last safe point.
    Discard,
}

/// How a strategy recovers a buffer after a repaired fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecoverySettings {
    /// Rewind after parsing, or discard.
    pub mode: RecoveryMode,
    /// The SPU's largest record (2^PMSIDR_EL1.MaxSize).
    pub max_record_bytes: usize,
    /// What the scanner may assume about record writes.
    pub write_order: WriteOrder,
    /// Most bytes of guest buffer read for one recovery; a longer region is discarded.
    pub max_scan_bytes: u64,
    /// 2^PMBIDR_EL1.Align: records are padded to a multiple of it and PMBPTR must stay
    /// aligned to it (spec sheet §1.11 rules 3 and 4); 1 when Align = 0.
    pub align_bytes: u64,
}

impl Default for RecoverySettings {
    /// Rewind, 64-byte records (Neoverse), unordered writes (all the architecture promises),
    /// at most 64 MiB scanned.
    fn default() -> Self {
        RecoverySettings {
            mode: RecoveryMode::Rewind,
            max_record_bytes: crate::config::defaults::MAX_RECORD as usize,
            write_order: WriteOrder::Unordered,
            max_scan_bytes: crate::config::defaults::MAX_SCAN,
            align_bytes: 1,
        }
    }
}

/// The decision for a region `safe..pmbptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferRecovery {
    /// Where the SPU resumes writing.
    pub resume_at: Gva,
    /// Bytes of the region given up.
    pub lost_bytes: u64,
    /// Whether they were given up by a rewind after parsing (`false`: discarded).
    pub parsed: bool,
    /// The scanner's result, when it ran.
    pub scan: Option<Recovery>,
}

/// Decides where to resume after a buffer management event with PMBPTR at `pmbptr`, when
/// `safe` is the last point known to be a record boundary. Reads at most
/// `settings.max_scan_bytes` of guest memory; a longer region, or one that does not translate
/// or read, is discarded.
pub fn recover_buffer<G: GuestMemoryRead + ?Sized>(
    walker: &Walker<&G>,
    safe: Gva,
    pmbptr: Gva,
    data_loss: bool,
    settings: &RecoverySettings,
) -> BufferRecovery {
    let RecoverySettings {
        mode,
        max_record_bytes,
        write_order,
        max_scan_bytes: max_scan,
        align_bytes,
    } = *settings;
    let len = pmbptr.0.wrapping_sub(safe.0);
    let discard = BufferRecovery {
        resume_at: safe,
        lost_bytes: if pmbptr.0 >= safe.0 { len } else { 0 },
        parsed: false,
        scan: None,
    };
    if !data_loss {
        // DL=0: PMBPTR follows the last complete record (spec sheet §1.11 rule 7).
        return BufferRecovery {
            resume_at: pmbptr,
            lost_bytes: 0,
            parsed: false,
            scan: None,
        };
    }
    if mode == RecoveryMode::Discard || pmbptr.0 < safe.0 || len > max_scan {
        return discard;
    }
    let Ok(bytes) = read_va_range(walker, safe, len) else {
        return discard;
    };
    let scan = recover(&RecoveryInput {
        bytes: &bytes,
        data_loss,
        max_record_bytes,
        write_order,
    });
    let parsed = !matches!(scan.verdict, Verdict::Discard(_));
    // A record ends at its TS or END packet, but with PMBIDR_EL1.Align > 0 its padding is part
    // of it (rule 4: PMBPTR follows the padding) and PMBPTR must stay aligned (rule 3): resume
    // after the padding. Padding that was not all written leaves that record incomplete, and
    // the region is discarded (the scanner cannot name the record before it).
    let align = align_bytes.max(1);
    let end = scan.resume_offset as u64;
    let aligned = end.div_ceil(align).saturating_mul(align);
    if aligned > len {
        return discard;
    }
    BufferRecovery {
        resume_at: Gva(safe.0 + aligned),
        lost_bytes: len - aligned,
        parsed,
        scan: Some(scan),
    }
}

/// Why a guest VA range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Part of the range does not translate.
    #[error("VA {0} does not translate")]
    Unmapped(Gva),
    /// The walk itself failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// Guest memory could not be read.
    #[error("guest memory read failed: {0}")]
    Memory(String),
}

/// Reads `start..start + len` of guest virtual memory through stage 1.
pub fn read_va_range<G: GuestMemoryRead + ?Sized>(
    walker: &Walker<&G>,
    start: Gva,
    len: u64,
) -> Result<Vec<u8>, ReadError> {
    let t = walker.translate_range(start, len, RangeLimits::default())?;
    if let Some(f) = t.fault {
        return Err(ReadError::Unmapped(f.va));
    }
    let mut out = vec![0u8; usize::try_from(len).map_err(|e| ReadError::Memory(e.to_string()))?];
    let mut at = 0usize;
    for run in &t.runs {
        let n = run.len as usize;
        walker
            .memory()
            .read(run.ipa, &mut out[at..at + n])
            .map_err(|e| ReadError::Memory(e.to_string()))?;
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::walk::Stage1Regs;
    use crate::arch::{Sctlr, Tcr, Ttbr};
    use crate::guest_memory::GuestRam;
    use crate::{Gva, Ipa};

    #[test]
    fn with_align_the_rewind_resumes_after_the_records_padding_not_at_its_end_packet() {
        // Issue 15: with PMBIDR_EL1.Align > 0 a record is padded to the alignment and PMBPTR
        // must stay aligned; the scanner's offset is the end of the TS/END packet.
        let rec: &[u8] = &include_bytes!("../tests/data/kunpeng_branch_2021_a.bin")[..44];
        let mut bytes = rec.to_vec();
        bytes.resize(64, 0); // padding to 2^Align = 64
        bytes.extend_from_slice(&rec[..20]); // the partial record the fault hit
        let mut ram = GuestRam::new();
        ram.insert(Ipa(0x1000), {
            let mut page = bytes.clone();
            page.resize(0x1000, 0);
            page
        })
        .expect("ram");
        // Stage 1 off: VA = IPA.
        let regs = Stage1Regs {
            tcr: Tcr::new(),
            ttbr0: Ttbr::new(),
            ttbr1: Ttbr::new(),
            sctlr: Sctlr::new(),
            hw_af: false,
            hw_dbm: false,
        };
        let walker = Walker::new(regs, &ram);
        let settings = |align_bytes| RecoverySettings {
            write_order: WriteOrder::Sequential,
            align_bytes,
            ..RecoverySettings::default()
        };
        let end = Gva(0x1000 + bytes.len() as u64);
        let r = recover_buffer(&walker, Gva(0x1000), end, true, &settings(64));
        assert_eq!(r.resume_at, Gva(0x1040), "after the padding, aligned");
        assert_eq!(r.lost_bytes, 20);
        let r = recover_buffer(&walker, Gva(0x1000), end, true, &settings(1));
        assert_eq!(
            r.resume_at,
            Gva(0x1000 + 44),
            "Align = 0: at the END packet"
        );
        // Padding not all written: that record is not complete.
        let short = Gva(0x1000 + 50);
        let r = recover_buffer(&walker, Gva(0x1000), short, true, &settings(64));
        assert_eq!(r.resume_at, Gva(0x1000));
    }
}
