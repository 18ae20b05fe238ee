//! The guest notice: a versioned, guest-readable descriptor of the active backing strategy and
//! its guest-visible errata, for a VMM to expose as a device-tree property, an ACPI object or a
//! vendor hypercall result.
//!
//! Layout, version 1: four little-endian 32-bit cells (16 bytes; as a device-tree property,
//! four big-endian cells of the same values):
//!
//! | cell | bits | meaning |
//! |---|---|---|
//! | 0 | 31:0 | magic `0x5350_4550` ("SPEP") |
//! | 1 | 31:16 | layout version (1) |
//! | 1 | 15:0 | strategy id: 1 pin-all, 2 pin-buffer, 3 fault-translate, 4 shadow-buffer |
//! | 2 | 31:0 | guest-visible errata bitmap, bits 0-31 (bit n = the erratum told through bit n) |
//! | 3 | 31:0 | the per-vCPU buffer cap in 4KB pages (0: no cap) |
//!
//! Errata bits are defined in [`bits`]. A reader must ignore bitmap bits it does not know and reject a larger version it does not
//! understand only if it needs the new fields: version 1 cells keep their meaning.

use core::fmt;

/// Bits of the errata bitmap: what the guest may observe, whichever strategy causes it.
pub mod bits {
    /// Profiling has gaps the host causes: the SPU stops (a fault, a host buffer-full) until
    /// the host takes the interrupt, or the vCPU stalls while the host services it. The bit's
    /// name is version 1's.
    pub const BLACKOUT: u8 = 0;
    /// A stage 2 buffer fault (PMBSR EC 0x25) can reach the guest; Linux treats it as fatal.
    pub const FATAL_FAULT: u8 = 1;
    /// Buffers larger than a per-vCPU cap are refused with PMBSR BSC "size too large";
    /// PMBIDR_EL1.MaxBuffSize and the notice's cap cell tell the cap.
    pub const BUFFER_CAP: u8 = 2;
    /// After a host repair PMBPTR may be rewound: the records after it are lost.
    pub const REWIND: u8 = 3;
    /// The host may disable SPE for a vCPU whose buffer it cannot back.
    pub const SPE_DISABLED: u8 = 4;
    /// Remapping the buffer's stage 1 tables while profiling can cause a repair (a stall,
    /// a rewind).
    pub const STAGE1_REMAP: u8 = 5;
    /// Records reach guest memory only when the host copies them.
    pub const DELAYED_RECORDS: u8 = 6;
}

/// What each errata bit means, for documents.
pub const fn bit_meaning(bit: u8) -> &'static str {
    match bit {
        bits::BLACKOUT => "profiling gaps (the SPU stopped, or the vCPU stalled, by the host)",
        bits::FATAL_FAULT => "fatal stage 2 buffer faults possible",
        bits::BUFFER_CAP => "per-vCPU buffer cap",
        bits::REWIND => "PMBPTR rewinds after repairs",
        bits::SPE_DISABLED => "SPE may be disabled",
        bits::STAGE1_REMAP => "stage 1 remaps repaired",
        bits::DELAYED_RECORDS => "records delayed until copied",
        _ => "reserved",
    }
}

/// The descriptor's magic, "SPEP".
pub const MAGIC: u32 = 0x5350_4550;
/// The layout version this code writes.
pub const VERSION: u16 = 1;
/// Encoded size in bytes.
pub const ENCODED_LEN: usize = 16;

/// Which strategy is active, as the notice numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrategyId {
    /// 1: all guest memory pinned.
    PinAll,
    /// 2: buffer and its stage 1 tables pinned.
    PinBuffer,
    /// 3: nothing pinned, faults translated and repaired.
    FaultTranslate,
    /// 4: host-owned buffer, records copied to the guest's.
    ShadowBuffer,
}

impl StrategyId {
    /// The 16-bit code.
    pub const fn code(self) -> u16 {
        match self {
            StrategyId::PinAll => 1,
            StrategyId::PinBuffer => 2,
            StrategyId::FaultTranslate => 3,
            StrategyId::ShadowBuffer => 4,
        }
    }

    /// From a 16-bit code.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(StrategyId::PinAll),
            2 => Some(StrategyId::PinBuffer),
            3 => Some(StrategyId::FaultTranslate),
            4 => Some(StrategyId::ShadowBuffer),
            _ => None,
        }
    }
}

/// The decoded notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestNotice {
    /// The layout version it was written with.
    pub version: u16,
    /// The active strategy.
    pub strategy: StrategyId,
    /// Guest-visible errata, one bit each.
    pub errata: u32,
    /// Per-vCPU buffer cap in 4KB pages, 0 for none.
    pub buffer_cap_pages: u32,
}

/// Why bytes are not a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// Fewer than 16 bytes.
    #[error("guest notice is {0} bytes; version 1 needs 16")]
    TooShort(usize),
    /// The magic is wrong.
    #[error("guest notice magic is {0:#010x}, expected 0x53504550 (\"SPEP\")")]
    BadMagic(u32),
    /// Version 0 does not exist.
    #[error("guest notice version 0 is invalid")]
    BadVersion,
    /// An unknown strategy code.
    #[error("guest notice names strategy {0}, which this reader does not know")]
    UnknownStrategy(u16),
}

impl GuestNotice {
    /// A version-1 notice.
    pub const fn new(strategy: StrategyId, errata: u32, buffer_cap_pages: u32) -> Self {
        GuestNotice {
            version: VERSION,
            strategy,
            errata,
            buffer_cap_pages,
        }
    }

    /// The 16 little-endian bytes.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        let cells = self.cells();
        for (chunk, cell) in out.chunks_exact_mut(4).zip(cells) {
            chunk.copy_from_slice(&cell.to_le_bytes());
        }
        out
    }

    /// The four cells (for a device-tree property, write each big-endian).
    pub fn cells(&self) -> [u32; 4] {
        [
            MAGIC,
            u32::from(self.version) << 16 | u32::from(self.strategy.code()),
            self.errata,
            self.buffer_cap_pages,
        ]
    }

    /// Decodes little-endian bytes (extra bytes of a later version are ignored).
    pub fn decode(bytes: &[u8]) -> Result<Self, NoticeError> {
        let cell = |i: usize| -> Result<u32, NoticeError> {
            let b = bytes
                .get(4 * i..4 * i + 4)
                .ok_or(NoticeError::TooShort(bytes.len()))?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let magic = cell(0)?;
        if magic != MAGIC {
            return Err(NoticeError::BadMagic(magic));
        }
        let vs = cell(1)?;
        let version = (vs >> 16) as u16;
        if version == 0 {
            return Err(NoticeError::BadVersion);
        }
        let code = vs as u16;
        let strategy = StrategyId::from_code(code).ok_or(NoticeError::UnknownStrategy(code))?;
        Ok(GuestNotice {
            version,
            strategy,
            errata: cell(2)?,
            buffer_cap_pages: cell(3)?,
        })
    }
}

impl fmt::Display for GuestNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SPE backing notice v{}: strategy {:?}, errata bitmap {:#010x}, buffer cap {} pages",
            self.version, self.strategy, self.errata, self.buffer_cap_pages
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_round_trips_and_has_the_documented_layout() {
        let n = GuestNotice::new(StrategyId::PinBuffer, 0b1010, 1024);
        let bytes = n.encode();
        assert_eq!(&bytes[0..4], &[0x50, 0x45, 0x50, 0x53]);
        assert_eq!(&bytes[4..8], &[2, 0, 1, 0]);
        assert_eq!(GuestNotice::decode(&bytes), Ok(n));
        assert_eq!(n.cells(), [MAGIC, 0x0001_0002, 0b1010, 1024]);
    }

    #[test]
    fn malformed_notices_are_rejected_with_the_reason() {
        let good = GuestNotice::new(StrategyId::FaultTranslate, 1, 0).encode();
        assert_eq!(
            GuestNotice::decode(&good[..10]),
            Err(NoticeError::TooShort(10))
        );
        let mut bad = good;
        bad[0] = 0;
        assert!(matches!(
            GuestNotice::decode(&bad),
            Err(NoticeError::BadMagic(_))
        ));
        let mut v0 = good;
        v0[6] = 0;
        v0[7] = 0;
        assert_eq!(GuestNotice::decode(&v0), Err(NoticeError::BadVersion));
        let mut unknown = good;
        unknown[4] = 9;
        assert_eq!(
            GuestNotice::decode(&unknown),
            Err(NoticeError::UnknownStrategy(9))
        );
        // A later version with more cells still reads.
        let mut v2 = good.to_vec();
        v2[6] = 2;
        v2.extend_from_slice(&[0xff; 8]);
        assert_eq!(GuestNotice::decode(&v2).map(|n| n.version), Ok(2));
    }
}
