//! Stage 1 walk outcomes that are not a translation: architectural faults (reported to the
//! guest through PMBSR_EL1, EC 0x24) and walk errors (the model could not read guest memory, or
//! the tables are hostile).

use core::fmt;

use crate::addr::{Gva, Ipa};
use crate::arch::pmbsr::{FaultLevel, FaultStatusCode};
use crate::arch::walk::TablesTouched;

/// The kind of a stage 1 fault, as the FSC encodes it (spec sheet §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Translation fault.
    Translation,
    /// Access flag fault.
    AccessFlag,
    /// Permission fault.
    Permission,
    /// Address size fault.
    AddressSize,
}

impl FaultKind {
    /// The lowercase name used in `spe-policy translate` output (ARCHITECTURE.md §8).
    pub const fn name(self) -> &'static str {
        match self {
            FaultKind::Translation => "translation",
            FaultKind::AccessFlag => "access_flag",
            FaultKind::Permission => "permission",
            FaultKind::AddressSize => "address_size",
        }
    }
}

/// Why the walk faulted: the rule of spec sheet §3 that fired, with the input that fired it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultCause {
    /// The VA is in neither the TTBR0 nor the TTBR1 range (§3.2).
    VaOutsideRanges,
    /// TCR_EL1.EPDn disables walks for the selected half (§3.1).
    WalksDisabled {
        /// Which TTBR (0 or 1).
        ttbr: u8,
    },
    /// TCR_EL1.TnSZ is outside the valid range and the model treats that as a fault (§3.2).
    TxSzOutOfRange {
        /// The TnSZ value.
        txsz: u8,
        /// Smallest valid value.
        min: u8,
        /// Largest valid value.
        max: u8,
    },
    /// The TTBR base address exceeds the output address size (§3.9; reported at level 0).
    TableBaseOutOfRange {
        /// The base address.
        base: Ipa,
    },
    /// A descriptor with bit 0 clear.
    InvalidDescriptor {
        /// The raw descriptor.
        descriptor: u64,
    },
    /// A block descriptor at a level where the granule allows none (§3.10).
    BlockNotAllowed {
        /// The raw descriptor.
        descriptor: u64,
    },
    /// A level 3 descriptor with bit 1 clear (reserved, §3.4).
    ReservedPageDescriptor {
        /// The raw descriptor.
        descriptor: u64,
    },
    /// A next-level table address exceeds the output address size (§3.10).
    TableAddressOutOfRange {
        /// The next-level table address.
        table: Ipa,
    },
    /// The output address exceeds the output address size.
    OutputAddressOutOfRange {
        /// The output address.
        output: Ipa,
    },
    /// AF = 0 and hardware Access flag update is not in effect for the SPU (§3.6).
    AccessFlagClear,
    /// AP`[2]` = 1 (read-only) and hardware dirty update does not apply (§3.5, §3.6).
    ReadOnly {
        /// DBM was set but hardware dirty state management is not in effect for the SPU.
        dbm_ignored: bool,
    },
    /// A table descriptor's APTable removed write access (§3.5).
    TableRemovesWrite,
}

impl fmt::Display for FaultCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FaultCause::VaOutsideRanges => f.write_str("VA outside both TTBR0 and TTBR1 ranges"),
            FaultCause::WalksDisabled { ttbr } => {
                write!(f, "TCR_EL1.EPD{ttbr}=1 disables walks through TTBR{ttbr}")
            }
            FaultCause::TxSzOutOfRange { txsz, min, max } => {
                write!(
                    f,
                    "TCR_EL1.TxSZ={txsz} outside the valid range {min}..={max}"
                )
            }
            FaultCause::TableBaseOutOfRange { base } => {
                write!(f, "TTBR base {base} exceeds the output address size")
            }
            FaultCause::InvalidDescriptor { descriptor } => {
                write!(f, "invalid descriptor {descriptor:#018x}")
            }
            FaultCause::BlockNotAllowed { descriptor } => {
                write!(
                    f,
                    "block descriptor {descriptor:#018x} where the granule allows none"
                )
            }
            FaultCause::ReservedPageDescriptor { descriptor } => {
                write!(f, "reserved level 3 descriptor {descriptor:#018x}")
            }
            FaultCause::TableAddressOutOfRange { table } => {
                write!(
                    f,
                    "next-level table {table} exceeds the output address size"
                )
            }
            FaultCause::OutputAddressOutOfRange { output } => {
                write!(f, "output address {output} exceeds the output address size")
            }
            FaultCause::AccessFlagClear => {
                f.write_str("AF=0 without hardware Access flag update for SPU writes")
            }
            FaultCause::ReadOnly { dbm_ignored: true } => f.write_str(
                "read-only page with DBM=1 but no hardware dirty state update for SPU writes",
            ),
            FaultCause::ReadOnly { dbm_ignored: false } => {
                f.write_str("read-only page (AP[2]=1) for a privileged write")
            }
            FaultCause::TableRemovesWrite => f.write_str("APTable removes write access"),
        }
    }
}

/// A stage 1 fault on an SPU buffer write: what the SPU reports in PMBSR_EL1 with EC = 0x24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stage1Fault {
    /// The VA whose translation faulted (PMBPTR_EL1 after the event).
    pub va: Gva,
    /// The fault kind.
    pub kind: FaultKind,
    /// The level it is reported at.
    pub level: FaultLevel,
    /// The rule that fired.
    pub cause: FaultCause,
    /// The table pages read before the fault, in walk order.
    pub tables_touched: TablesTouched,
}

impl Stage1Fault {
    /// The fault status code for PMBSR_EL1.MSS.
    pub const fn fsc(&self) -> FaultStatusCode {
        match self.kind {
            FaultKind::Translation => FaultStatusCode::Translation(self.level),
            FaultKind::AccessFlag => FaultStatusCode::AccessFlag(self.level),
            FaultKind::Permission => FaultStatusCode::Permission(self.level),
            FaultKind::AddressSize => FaultStatusCode::AddressSize(self.level),
        }
    }
}

impl core::error::Error for Stage1Fault {}

impl fmt::Display for Stage1Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage 1 {} for VA {}: {}",
            self.fsc(),
            self.va,
            self.cause
        )
    }
}

/// Why a walk produced neither a translation nor an architectural fault.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The walk faulted: the architectural outcome, not a failure of the model.
    #[error(transparent)]
    Fault(Stage1Fault),
    /// A table the walk needed could not be read from guest memory (for the SPU in a VM: a
    /// stage 2 fault on the walk, EC 0x25, that the host cannot resolve from guest RAM).
    #[error(
        "VA {va}: level {level} table descriptor at IPA {descriptor} is not readable guest memory ({source}); the guest's tables point outside RAM"
    )]
    TableUnreadable {
        /// The VA being translated.
        va: Gva,
        /// The level of the table.
        level: FaultLevel,
        /// The descriptor's IPA.
        descriptor: Ipa,
        /// Table pages read successfully before, in walk order.
        tables_touched: TablesTouched,
        /// The guest memory error.
        #[source]
        source: Box<dyn core::error::Error + Send + Sync>,
    },
    /// A table descriptor points at its own table or an ancestor. Recursive mappings are
    /// architecturally legal; the walker refuses them unless
    /// [`WalkOptions::allow_recursive_tables`](crate::arch::walk::WalkOptions) is set.
    #[error(
        "VA {va}: level {level} descriptor points back at table page {table} (a table loop); if the guest maps its tables recursively on purpose, walk with WalkOptions::allow_recursive_tables (`translate --allow-recursive-tables`)"
    )]
    TableCycle {
        /// The VA being translated.
        va: Gva,
        /// The level of the descriptor that loops.
        level: FaultLevel,
        /// The table page it points back at.
        table: Ipa,
        /// Table pages read before, in walk order.
        tables_touched: TablesTouched,
    },
    /// A range walk would visit more leaf entries than allowed.
    #[error(
        "range {start}..+{len:#x} needs more than {max_steps} leaf lookups; raise RangeLimits::max_steps or walk a smaller range"
    )]
    RangeTooLarge {
        /// Start of the range.
        start: Gva,
        /// Its length.
        len: u64,
        /// The limit that was hit.
        max_steps: u64,
    },
}

impl WalkError {
    /// The table pages read before the walk stopped, in walk order.
    pub fn tables_touched(&self) -> &[Ipa] {
        match self {
            WalkError::Fault(f) => f.tables_touched.as_slice(),
            WalkError::TableUnreadable { tables_touched, .. }
            | WalkError::TableCycle { tables_touched, .. } => tables_touched.as_slice(),
            WalkError::RangeTooLarge { .. } => &[],
        }
    }
}
