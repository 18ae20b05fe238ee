//! What a strategy saves for a live migration or a snapshot: plain serde values (raw register
//! bits, IPAs and VAs as integers), so a VMM can put them in its own format (Cloud
//! Hypervisor's `Snapshottable`, QEMU's VMState) and a later version can still read them.

use serde::{Deserialize, Serialize};

use crate::arch::walk::Stage1Regs;
use crate::arch::{Sctlr, Tcr, Ttbr};
use crate::event::BufferRegs;

/// The layout version of every saved state this crate writes. A restore refuses any other.
pub const STATE_VERSION: u32 = 1;

/// A vCPU's stage 1 registers, raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedStage1 {
    /// TCR_EL1.
    pub tcr: u64,
    /// TTBR0_EL1.
    pub ttbr0: u64,
    /// TTBR1_EL1.
    pub ttbr1: u64,
    /// SCTLR_EL1.
    pub sctlr: u64,
    /// Hardware Access flag updates.
    pub hw_af: bool,
    /// Hardware dirty state updates.
    pub hw_dbm: bool,
}

impl From<Stage1Regs> for SavedStage1 {
    fn from(r: Stage1Regs) -> Self {
        SavedStage1 {
            tcr: r.tcr.into_bits(),
            ttbr0: r.ttbr0.into_bits(),
            ttbr1: r.ttbr1.into_bits(),
            sctlr: r.sctlr.into_bits(),
            hw_af: r.hw_af,
            hw_dbm: r.hw_dbm,
        }
    }
}

impl From<SavedStage1> for Stage1Regs {
    fn from(s: SavedStage1) -> Self {
        Stage1Regs {
            tcr: Tcr::from_bits(s.tcr),
            ttbr0: Ttbr::from_bits(s.ttbr0),
            ttbr1: Ttbr::from_bits(s.ttbr1),
            sctlr: Sctlr::from_bits(s.sctlr),
            hw_af: s.hw_af,
            hw_dbm: s.hw_dbm,
        }
    }
}

/// The Profiling Buffer registers, raw: PMBPTR_EL1, PMBLIMITR_EL1, PMBSR_EL1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedBufferRegs {
    /// PMBPTR_EL1.
    pub pmbptr: u64,
    /// PMBLIMITR_EL1.
    pub pmblimitr: u64,
    /// PMBSR_EL1.
    pub pmbsr: u64,
}

impl From<BufferRegs> for SavedBufferRegs {
    fn from(r: BufferRegs) -> Self {
        SavedBufferRegs {
            pmbptr: r.pmbptr.into_bits(),
            pmblimitr: r.pmblimitr.into_bits(),
            pmbsr: r.pmbsr.into_bits(),
        }
    }
}

impl From<SavedBufferRegs> for BufferRegs {
    fn from(s: SavedBufferRegs) -> Self {
        BufferRegs {
            pmbptr: crate::arch::Pmbptr::from_bits(s.pmbptr),
            pmblimitr: crate::arch::Pmblimitr::from_bits(s.pmblimitr),
            pmbsr: crate::arch::Pmbsr::from_bits(s.pmbsr),
        }
    }
}

/// A memslot, raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedMemslot {
    /// The VMM's slot number.
    pub slot: u32,
    /// First IPA.
    pub ipa: u64,
    /// Bytes.
    pub len: u64,
}

impl From<crate::Memslot> for SavedMemslot {
    fn from(m: crate::Memslot) -> Self {
        SavedMemslot {
            slot: m.slot,
            ipa: m.range.start.0,
            len: m.range.len,
        }
    }
}

impl From<SavedMemslot> for crate::Memslot {
    fn from(s: SavedMemslot) -> Self {
        crate::Memslot {
            slot: s.slot,
            range: crate::IpaRange::new(crate::Ipa(s.ipa), s.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_registers_round_trip_every_bit() {
        let r = SavedStage1 {
            tcr: 0x0123_4567_89ab_cdef,
            ttbr0: u64::MAX,
            ttbr1: 0x8000_0000_0000_0001,
            sctlr: 0x30d0_1805,
            hw_af: true,
            hw_dbm: false,
        };
        assert_eq!(SavedStage1::from(Stage1Regs::from(r)), r);
        let b = SavedBufferRegs {
            pmbptr: 0xffff_8000_1234_5678,
            pmblimitr: 0xffff_8000_2000_0001,
            pmbsr: 0x8400_0025,
        };
        assert_eq!(SavedBufferRegs::from(BufferRegs::from(b)), b);
    }
}
