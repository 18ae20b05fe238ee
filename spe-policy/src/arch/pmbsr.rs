//! PMBSR_EL1 code points and the pure decode of a syndrome into "what happened"
//! (spec sheet §1.4, §1.11; ARM-D24.7.5, ARM-D17.8).

use core::fmt;

use crate::arch::buffer_regs::Pmbsr;

/// PMBSR_EL1.EC, the event class (spec sheet §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PmbsrEc {
    /// 0x00: buffer management event other than a fault (buffer full, access not allowed,
    /// size too large); MSS holds a [`BufferStatusCode`].
    BufferManagement,
    /// 0x1E: Granule Protection Check fault other than a GPF (FEAT_RME).
    GranuleProtection,
    /// 0x1F: IMPLEMENTATION DEFINED reason; MSS is IMPLEMENTATION DEFINED.
    ImplementationDefined,
    /// 0x24: stage 1 Data Abort on a write to the Profiling Buffer; MSS holds an FSC.
    Stage1DataAbort,
    /// 0x25: stage 2 Data Abort on a write to the Profiling Buffer (including a stage 2 fault on
    /// the stage 1 walk: PMBSR has no S1PTW bit, spec sheet §3.9); MSS holds an FSC.
    Stage2DataAbort,
    /// Any other 6-bit value: reserved.
    Reserved(u8),
}

impl PmbsrEc {
    /// Decodes the 6-bit EC field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0x3f {
            0x00 => PmbsrEc::BufferManagement,
            0x1e => PmbsrEc::GranuleProtection,
            0x1f => PmbsrEc::ImplementationDefined,
            0x24 => PmbsrEc::Stage1DataAbort,
            0x25 => PmbsrEc::Stage2DataAbort,
            other => PmbsrEc::Reserved(other),
        }
    }

    /// Encodes the 6-bit EC field.
    pub const fn into_bits(self) -> u8 {
        match self {
            PmbsrEc::BufferManagement => 0x00,
            PmbsrEc::GranuleProtection => 0x1e,
            PmbsrEc::ImplementationDefined => 0x1f,
            PmbsrEc::Stage1DataAbort => 0x24,
            PmbsrEc::Stage2DataAbort => 0x25,
            PmbsrEc::Reserved(bits) => bits & 0x3f,
        }
    }
}

/// PMBSR_EL1.MSS.BSC, the buffer status code when EC = 0x00 (spec sheet §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferStatusCode {
    /// 0b000000: collection not stopped, or access not allowed (spec sheet §1.11 rule 9).
    NotStoppedOrAccessNotAllowed,
    /// 0b000001: buffer filled (Linux `PMBSR_EL1_BUF_BSC_FULL`).
    BufferFull,
    /// 0b000100: requested buffer size too large (PMBIDR_EL1.MaxBuffSize).
    SizeTooLarge,
    /// Any other value: reserved.
    Reserved(u8),
}

impl BufferStatusCode {
    /// Decodes BSC from MSS`[5:0]`.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0x3f {
            0b000000 => BufferStatusCode::NotStoppedOrAccessNotAllowed,
            0b000001 => BufferStatusCode::BufferFull,
            0b000100 => BufferStatusCode::SizeTooLarge,
            other => BufferStatusCode::Reserved(other),
        }
    }

    /// Encodes BSC into MSS`[5:0]`.
    pub const fn into_bits(self) -> u8 {
        match self {
            BufferStatusCode::NotStoppedOrAccessNotAllowed => 0,
            BufferStatusCode::BufferFull => 1,
            BufferStatusCode::SizeTooLarge => 0b100,
            BufferStatusCode::Reserved(bits) => bits & 0x3f,
        }
    }
}

/// A translation table level as reported in an FSC: -1 (LPA2) to 3.
pub type FaultLevel = i8;

/// The fault status code in MSS`[5:0]` when EC = 0x24/0x25: the DFSC encoding
/// (`EncodeLDFSC`, spec sheet §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultStatusCode {
    /// Address size fault at a level (0b0000LL; level -1 is 0x29 with FEAT_LPA2). Level 0 also
    /// reports a TTBR base address out of range.
    AddressSize(FaultLevel),
    /// Translation fault at a level (0b0001LL; level -1 is 0x2B with FEAT_LPA2).
    Translation(FaultLevel),
    /// Access flag fault at a level (0b0010LL; level 0 only with FEAT_LPA2).
    AccessFlag(FaultLevel),
    /// Permission fault at a level (0b0011LL; level 0 only with FEAT_LPA2).
    Permission(FaultLevel),
    /// 0x10: synchronous external abort, not on a table walk.
    SyncExternalAbort,
    /// 0x11: asynchronous external abort.
    AsyncExternalAbort,
    /// 0x13-0x17: synchronous external abort on a table walk or update, at a level (-1..3).
    SyncExternalAbortOnWalk(FaultLevel),
    /// 0x21: alignment fault.
    Alignment,
    /// 0x23-0x27: granule protection fault on a table walk, at a level (-1..3); 0x28: not on a
    /// walk (`None`).
    GranuleProtection(Option<FaultLevel>),
    /// 0x30: TLB conflict abort.
    TlbConflict,
    /// 0x31: unsupported atomic hardware update fault.
    UnsupportedAtomicUpdate,
    /// Any other value: kept raw.
    Other(u8),
}

impl FaultStatusCode {
    /// Decodes a 6-bit FSC.
    pub const fn from_bits(bits: u8) -> Self {
        let bits = bits & 0x3f;
        let level = (bits & 0b11) as FaultLevel;
        match bits {
            0x00..=0x03 => FaultStatusCode::AddressSize(level),
            0x04..=0x07 => FaultStatusCode::Translation(level),
            0x08..=0x0b => FaultStatusCode::AccessFlag(level),
            0x0c..=0x0f => FaultStatusCode::Permission(level),
            0x10 => FaultStatusCode::SyncExternalAbort,
            0x11 => FaultStatusCode::AsyncExternalAbort,
            0x13 => FaultStatusCode::SyncExternalAbortOnWalk(-1),
            0x14..=0x17 => FaultStatusCode::SyncExternalAbortOnWalk(level),
            0x21 => FaultStatusCode::Alignment,
            0x23 => FaultStatusCode::GranuleProtection(Some(-1)),
            0x24..=0x27 => FaultStatusCode::GranuleProtection(Some(level)),
            0x28 => FaultStatusCode::GranuleProtection(None),
            0x29 => FaultStatusCode::AddressSize(-1),
            0x2b => FaultStatusCode::Translation(-1),
            0x30 => FaultStatusCode::TlbConflict,
            0x31 => FaultStatusCode::UnsupportedAtomicUpdate,
            other => FaultStatusCode::Other(other),
        }
    }

    /// Encodes the FSC. Levels outside what the encoding allows give the raw `Other` code 0x3f
    /// ("reserved"), never a wrong fault.
    pub const fn into_bits(self) -> u8 {
        const fn lvl(base: u8, level: FaultLevel, minus_one: u8) -> u8 {
            match level {
                0..=3 => base | level as u8,
                -1 => minus_one,
                _ => 0x3f,
            }
        }
        match self {
            FaultStatusCode::AddressSize(l) => lvl(0x00, l, 0x29),
            FaultStatusCode::Translation(l) => lvl(0x04, l, 0x2b),
            FaultStatusCode::AccessFlag(l) => lvl(0x08, l, 0x3f),
            FaultStatusCode::Permission(l) => lvl(0x0c, l, 0x3f),
            FaultStatusCode::SyncExternalAbort => 0x10,
            FaultStatusCode::AsyncExternalAbort => 0x11,
            FaultStatusCode::SyncExternalAbortOnWalk(l) => lvl(0x14, l, 0x13),
            FaultStatusCode::Alignment => 0x21,
            FaultStatusCode::GranuleProtection(Some(l)) => lvl(0x24, l, 0x23),
            FaultStatusCode::GranuleProtection(None) => 0x28,
            FaultStatusCode::TlbConflict => 0x30,
            FaultStatusCode::UnsupportedAtomicUpdate => 0x31,
            FaultStatusCode::Other(bits) => bits & 0x3f,
        }
    }

    /// The table level the fault names, if it names one.
    pub const fn level(self) -> Option<FaultLevel> {
        match self {
            FaultStatusCode::AddressSize(l)
            | FaultStatusCode::Translation(l)
            | FaultStatusCode::AccessFlag(l)
            | FaultStatusCode::Permission(l)
            | FaultStatusCode::SyncExternalAbortOnWalk(l) => Some(l),
            FaultStatusCode::GranuleProtection(l) => l,
            _ => None,
        }
    }

    /// Whether this is an external abort of any kind.
    pub const fn is_external_abort(self) -> bool {
        matches!(
            self,
            FaultStatusCode::SyncExternalAbort
                | FaultStatusCode::AsyncExternalAbort
                | FaultStatusCode::SyncExternalAbortOnWalk(_)
        )
    }
}

impl fmt::Display for FaultStatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultStatusCode::AddressSize(l) => write!(f, "address size fault at level {l}"),
            FaultStatusCode::Translation(l) => write!(f, "translation fault at level {l}"),
            FaultStatusCode::AccessFlag(l) => write!(f, "access flag fault at level {l}"),
            FaultStatusCode::Permission(l) => write!(f, "permission fault at level {l}"),
            FaultStatusCode::SyncExternalAbort => f.write_str("synchronous external abort"),
            FaultStatusCode::AsyncExternalAbort => f.write_str("asynchronous external abort"),
            FaultStatusCode::SyncExternalAbortOnWalk(l) => {
                write!(f, "synchronous external abort on table walk at level {l}")
            }
            FaultStatusCode::Alignment => f.write_str("alignment fault"),
            FaultStatusCode::GranuleProtection(Some(l)) => {
                write!(f, "granule protection fault on table walk at level {l}")
            }
            FaultStatusCode::GranuleProtection(None) => f.write_str("granule protection fault"),
            FaultStatusCode::TlbConflict => f.write_str("TLB conflict abort"),
            FaultStatusCode::UnsupportedAtomicUpdate => {
                f.write_str("unsupported atomic hardware update fault")
            }
            FaultStatusCode::Other(bits) => write!(f, "reserved fault status code {bits:#04x}"),
        }
    }
}

/// Which translation stage a buffer fault came from (PMBSR_EL1.EC 0x24 or 0x25).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1: the guest's own tables.
    One,
    /// Stage 2: the host's tables, on the buffer page or on a stage 1 table page alike.
    Two,
}

/// What a PMBSR_EL1 value says happened: the event class with its syndrome decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferEventKind {
    /// EC=0, BSC=1: the buffer filled (spec sheet §1.11 rule 4).
    BufferFull,
    /// EC=0, BSC=0: with S=1, access not allowed, data discarded (rule 9); with S=0, nothing.
    AccessNotAllowed,
    /// EC=0, BSC=0b000100: requested buffer size too large.
    SizeTooLarge,
    /// EC=0 with a reserved BSC.
    ReservedBufferStatus(u8),
    /// EC=0x24/0x25: an MMU fault on a buffer write (rule 5).
    Fault {
        /// The stage that faulted.
        stage: Stage,
        /// The fault status code, with its level.
        fsc: FaultStatusCode,
    },
    /// EC=0x1E: a granule protection check fault (not a GPF); its MSS is RES0 and not kept.
    GranuleProtection,
    /// EC=0x1F: IMPLEMENTATION DEFINED, with the raw MSS.
    ImplementationDefined(u16),
    /// A reserved EC, with its raw value and MSS.
    ReservedClass {
        /// The raw EC.
        ec: u8,
        /// The raw MSS.
        mss: u16,
    },
}

/// A decoded PMBSR_EL1: what happened plus the DL/S/COLL/EA flags (spec sheet §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferEvent {
    /// What happened.
    pub kind: BufferEventKind,
    /// S: a management event is pending and profiling is stopped.
    pub service: bool,
    /// DL: part of a record was lost; PMBPTR may be mid-record (rule 7).
    pub data_loss: bool,
    /// COLL: a sample collision happened (rule 13).
    pub collision: bool,
    /// EA: an external abort was detected.
    pub external_abort: bool,
}

impl BufferEvent {
    /// A buffer fault as the SPU reports it (S = 1, spec sheet §1.11 rule 5).
    pub const fn fault(stage: Stage, fsc: FaultStatusCode, data_loss: bool) -> Self {
        BufferEvent {
            kind: BufferEventKind::Fault { stage, fsc },
            service: true,
            data_loss,
            collision: false,
            external_abort: false,
        }
    }

    /// A buffer-full event as the SPU reports it (S = 1, EC = 0, BSC = 1, DL unchanged at 0;
    /// spec sheet §1.11 rule 4).
    pub const fn buffer_full() -> Self {
        BufferEvent {
            kind: BufferEventKind::BufferFull,
            service: true,
            data_loss: false,
            collision: false,
            external_abort: false,
        }
    }

    /// Decodes a PMBSR_EL1 value. Pure and total: every value decodes.
    pub const fn decode(pmbsr: Pmbsr) -> Self {
        let mss = pmbsr.mss();
        let low = (mss & 0x3f) as u8;
        let kind = match pmbsr.ec() {
            PmbsrEc::BufferManagement => match BufferStatusCode::from_bits(low) {
                BufferStatusCode::BufferFull => BufferEventKind::BufferFull,
                BufferStatusCode::NotStoppedOrAccessNotAllowed => BufferEventKind::AccessNotAllowed,
                BufferStatusCode::SizeTooLarge => BufferEventKind::SizeTooLarge,
                BufferStatusCode::Reserved(b) => BufferEventKind::ReservedBufferStatus(b),
            },
            PmbsrEc::Stage1DataAbort => BufferEventKind::Fault {
                stage: Stage::One,
                fsc: FaultStatusCode::from_bits(low),
            },
            PmbsrEc::Stage2DataAbort => BufferEventKind::Fault {
                stage: Stage::Two,
                fsc: FaultStatusCode::from_bits(low),
            },
            PmbsrEc::GranuleProtection => BufferEventKind::GranuleProtection,
            PmbsrEc::ImplementationDefined => BufferEventKind::ImplementationDefined(mss),
            PmbsrEc::Reserved(ec) => BufferEventKind::ReservedClass { ec, mss },
        };
        BufferEvent {
            kind,
            service: pmbsr.s(),
            data_loss: pmbsr.dl(),
            collision: pmbsr.coll(),
            external_abort: pmbsr.ea(),
        }
    }

    /// Encodes this event as the PMBSR_EL1 value the SPU would write (MSS2 = 0).
    pub const fn encode(self) -> Pmbsr {
        let (ec, mss) = match self.kind {
            BufferEventKind::BufferFull => (PmbsrEc::BufferManagement, 1),
            BufferEventKind::AccessNotAllowed => (PmbsrEc::BufferManagement, 0),
            BufferEventKind::SizeTooLarge => (PmbsrEc::BufferManagement, 0b100),
            BufferEventKind::ReservedBufferStatus(b) => {
                (PmbsrEc::BufferManagement, (b & 0x3f) as u16)
            }
            BufferEventKind::Fault { stage, fsc } => (
                match stage {
                    Stage::One => PmbsrEc::Stage1DataAbort,
                    Stage::Two => PmbsrEc::Stage2DataAbort,
                },
                fsc.into_bits() as u16,
            ),
            BufferEventKind::GranuleProtection => (PmbsrEc::GranuleProtection, 0),
            BufferEventKind::ImplementationDefined(mss) => (PmbsrEc::ImplementationDefined, mss),
            BufferEventKind::ReservedClass { ec, mss } => (PmbsrEc::Reserved(ec), mss),
        };
        Pmbsr::new()
            .with_ec(ec)
            .with_mss(mss)
            .with_s(self.service)
            .with_dl(self.data_loss)
            .with_coll(self.collision)
            .with_ea(self.external_abort)
    }

    /// Whether the Linux guest driver (spec sheet §4.3) treats this event as fatal and disables
    /// the perf event: any fault, any EC other than 0, any BSC other than "full".
    pub const fn is_fatal_to_linux_guest(&self) -> bool {
        !matches!(self.kind, BufferEventKind::BufferFull)
    }
}

impl From<Pmbsr> for BufferEvent {
    fn from(value: Pmbsr) -> Self {
        BufferEvent::decode(value)
    }
}

impl fmt::Display for BufferEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BufferEventKind::BufferFull => f.write_str("buffer full")?,
            BufferEventKind::AccessNotAllowed => f.write_str("access not allowed")?,
            BufferEventKind::SizeTooLarge => f.write_str("buffer size too large")?,
            BufferEventKind::ReservedBufferStatus(b) => {
                write!(f, "reserved buffer status code {b:#04x}")?
            }
            BufferEventKind::Fault { stage, fsc } => {
                let n = match stage {
                    Stage::One => 1,
                    Stage::Two => 2,
                };
                write!(f, "stage {n} {fsc}")?
            }
            BufferEventKind::GranuleProtection => f.write_str("granule protection check fault")?,
            BufferEventKind::ImplementationDefined(mss) => {
                write!(f, "IMPLEMENTATION DEFINED event (MSS {mss:#06x})")?
            }
            BufferEventKind::ReservedClass { ec, mss } => {
                write!(f, "reserved event class {ec:#04x} (MSS {mss:#06x})")?
            }
        }
        for (set, name) in [
            (self.service, "S"),
            (self.data_loss, "DL"),
            (self.collision, "COLL"),
            (self.external_abort, "EA"),
        ] {
            if set {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(raw: u64) -> BufferEvent {
        BufferEvent::decode(Pmbsr::from_bits(raw))
    }

    #[test]
    fn spec_sheet_example_values_decode_to_what_the_sheet_says() {
        let full = ev(0x2_0001);
        assert_eq!(full.kind, BufferEventKind::BufferFull);
        assert!(full.service && !full.data_loss && !full.collision);

        let full_dl_coll = ev(0xB_0001);
        assert_eq!(full_dl_coll.kind, BufferEventKind::BufferFull);
        assert!(full_dl_coll.data_loss && full_dl_coll.collision && full_dl_coll.service);

        let not_allowed = ev(0xA_0000);
        assert_eq!(not_allowed.kind, BufferEventKind::AccessNotAllowed);
        assert!(not_allowed.data_loss);

        let cases = [
            (0x9002_0007, Stage::One, FaultStatusCode::Translation(3)),
            (0x9002_000B, Stage::One, FaultStatusCode::AccessFlag(3)),
            (0x9002_000F, Stage::One, FaultStatusCode::Permission(3)),
            (0x9402_0007, Stage::Two, FaultStatusCode::Translation(3)),
            (0x9402_000F, Stage::Two, FaultStatusCode::Permission(3)),
        ];
        for (raw, stage, fsc) in cases {
            assert_eq!(
                ev(raw).kind,
                BufferEventKind::Fault { stage, fsc },
                "{raw:#x}"
            );
            assert_eq!(ev(raw).encode().into_bits(), raw);
        }
    }

    #[test]
    fn every_fsc_value_round_trips_through_decode_and_encode() {
        for bits in 0..64u8 {
            let fsc = FaultStatusCode::from_bits(bits);
            assert_eq!(fsc.into_bits(), bits, "{fsc:?}");
        }
    }

    #[test]
    fn every_pmbsr_without_reserved_syndrome_bits_round_trips() {
        for ec in 0..64u64 {
            // EC 0x1E has an all-RES0 syndrome.
            let syndromes: &[u64] = if ec == 0x1e {
                &[0]
            } else {
                &[0, 1, 4, 7, 0x0b, 0x25, 0x3f]
            };
            for &mss in syndromes {
                for flags in 0..16u64 {
                    let raw = (ec << 26) | (flags << 16) | mss;
                    assert_eq!(ev(raw).encode().into_bits(), raw, "{raw:#x}");
                }
            }
        }
    }

    #[test]
    fn only_buffer_full_is_survivable_for_a_linux_guest() {
        assert!(!ev(0x2_0001).is_fatal_to_linux_guest());
        assert!(ev(0x9402_0007).is_fatal_to_linux_guest());
        assert!(ev(0x7c02_0000).is_fatal_to_linux_guest());
    }

    #[test]
    fn display_names_stage_fault_level_and_flags() {
        assert_eq!(
            ev(0x940A_0006).to_string(),
            "stage 2 translation fault at level 2 S DL"
        );
    }
}
