//! Sampling control and ID registers: PMSIDR_EL1 and PMSCR_EL1 (spec sheet §1.6, §1.9).

use bitfield_struct::bitfield;

/// PMSIDR_EL1, Sampling Profiling ID Register (spec sheet §1.9, ARM-D24.7.14).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmsidr {
    /// FE, bit 0: event filtering supported.
    pub fe: bool,
    /// FT, bit 1: type filtering supported.
    pub ft: bool,
    /// FL, bit 2: latency filtering supported.
    pub fl: bool,
    /// ArchInst, bit 3: architectural instruction sampling (0 = micro-op sampling).
    pub arch_inst: bool,
    /// LDS, bit 4: data source indicator for sampled loads.
    pub lds: bool,
    /// ERnd, bit 5: secondary random counter.
    pub ernd: bool,
    /// FnE, bit 6: inverted event filter.
    pub fne: bool,
    /// FDS, bit 7: data source filter.
    pub fds: bool,
    /// Interval, bits `[11:8]`: recommended minimum interval code.
    #[bits(4)]
    pub interval: u8,
    /// MaxSize, bits `[15:12]`: the largest record is at most 2^MaxSize bytes.
    #[bits(4)]
    pub max_size: u8,
    /// CountSize, bits `[19:16]`: 0b0010 12-bit, 0b0011 16-bit saturating counters.
    #[bits(4)]
    pub count_size: u8,
    /// Format, bits `[23:20]`: record format version (only 0 defined).
    #[bits(4)]
    pub format: u8,
    /// PBT, bit 24: previous branch target address packet.
    pub pbt: bool,
    /// CRR, bit 25: call/return branch recording.
    pub crr: bool,
    /// EFT, bit 26: extended filtering by type.
    pub eft: bool,
    /// FPF, bit 27: floating-point filter.
    pub fpf: bool,
    /// ALTCLK, bits `[31:28]`: alternate clock domain.
    #[bits(4)]
    pub altclk: u8,
    /// SME, bit 32: FEAT_SPE_SME.
    pub sme: bool,
    #[bits(31)]
    __: u32,
}

impl Pmsidr {
    /// The largest record size in bytes, `2^MaxSize`.
    pub const fn max_record_bytes(self) -> u64 {
        1 << self.max_size()
    }

    /// The recommended minimum sampling interval (spec sheet §1.9); `None` for a reserved code
    /// (Linux then uses 4096).
    pub const fn min_interval(self) -> Option<u32> {
        match self.interval() {
            0 => Some(256),
            2 => Some(512),
            3 => Some(768),
            4 => Some(1024),
            5 => Some(1536),
            6 => Some(2048),
            7 => Some(3072),
            8 => Some(4096),
            _ => None,
        }
    }
}

/// PMSCR_EL1, Statistical Profiling Control Register for EL1 (spec sheet §1.6, ARM-D24.7.8).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmscr {
    /// E0SPE, bit 0: sample at EL0.
    pub e0spe: bool,
    /// E1SPE, bit 1: sample at EL1.
    pub e1spe: bool,
    #[bits(1)]
    __: u8,
    /// CX, bit 3: record CONTEXTIDR_EL1 in a Context packet.
    pub cx: bool,
    /// PA, bit 4: collect physical addresses.
    pub pa: bool,
    /// TS, bit 5: record a Timestamp packet.
    pub ts: bool,
    /// PCT, bits `[7:6]`: timestamp source (00 virtual, 01 physical, 11 guest physical).
    #[bits(2)]
    pub pct: u8,
    /// EE, bits `[9:8]` (FEAT_SPE_EXC): exception enable.
    #[bits(2)]
    pub ee: u8,
    /// KE, bit 10 (FEAT_SPE_EXC): kernel exception enable.
    pub ke: bool,
    /// EnVM, bit 11: reserved for software under nested virtualisation.
    pub envm: bool,
    #[bits(52)]
    __: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_size_six_means_sixty_four_byte_records() {
        let idr = Pmsidr::new().with_max_size(6).with_interval(8);
        assert_eq!(idr.max_record_bytes(), 64);
        assert_eq!(idr.min_interval(), Some(4096));
        assert_eq!(idr.into_bits(), 0x6800);
        assert_eq!(Pmsidr::new().with_interval(1).min_interval(), None);
    }

    #[test]
    fn pmscr_bits_sit_where_linux_writes_them() {
        let r = Pmscr::new()
            .with_e0spe(true)
            .with_e1spe(true)
            .with_ts(true)
            .with_pa(true);
        assert_eq!(r.into_bits(), 0b11_0011);
        assert_eq!(Pmscr::new().with_pct(0b11).into_bits(), 0xc0);
    }
}
