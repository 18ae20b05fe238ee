//! Stage 1 translation control registers: TCR_EL1, SCTLR_EL1, TTBR0/1_EL1
//! (spec sheet §3.1, §3.2; ARM-D24.2.194, ARM-D24.2.209).

use bitfield_struct::bitfield;

use crate::addr::Granule;

/// TCR_EL1, Translation Control Register (spec sheet §3.1, ARM-D24.2.194).
///
/// The two granule fields use different encodings; use [`Tcr::granule0`] and
/// [`Tcr::granule1`] rather than the raw `tg0`/`tg1`.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Tcr {
    /// T0SZ, bits `[5:0]`: the TTBR0 region is 2^(64-T0SZ) bytes.
    #[bits(6)]
    pub t0sz: u8,
    #[bits(1)]
    __: u8,
    /// EPD0, bit 7: no walks through TTBR0 (a TLB miss is a level 0 Translation fault).
    pub epd0: bool,
    /// IRGN0, bits `[9:8]`: inner cacheability of TTBR0 walks.
    #[bits(2)]
    pub irgn0: u8,
    /// ORGN0, bits `[11:10]`: outer cacheability of TTBR0 walks.
    #[bits(2)]
    pub orgn0: u8,
    /// SH0, bits `[13:12]`: shareability of TTBR0 walks.
    #[bits(2)]
    pub sh0: u8,
    /// TG0, bits `[15:14]`: TTBR0 granule, 00 4KB, 01 64KB, 10 16KB.
    #[bits(2)]
    pub tg0: u8,
    /// T1SZ, bits `[21:16]`: the TTBR1 region is 2^(64-T1SZ) bytes.
    #[bits(6)]
    pub t1sz: u8,
    /// A1, bit 22: the ASID comes from TTBR1 (1) or TTBR0 (0).
    pub a1: bool,
    /// EPD1, bit 23: no walks through TTBR1.
    pub epd1: bool,
    /// IRGN1, bits `[25:24]`.
    #[bits(2)]
    pub irgn1: u8,
    /// ORGN1, bits `[27:26]`.
    #[bits(2)]
    pub orgn1: u8,
    /// SH1, bits `[29:28]`.
    #[bits(2)]
    pub sh1: u8,
    /// TG1, bits `[31:30]`: TTBR1 granule, 01 16KB, 10 4KB, 11 64KB (not the TG0 encoding).
    #[bits(2)]
    pub tg1: u8,
    /// IPS, bits `[34:32]`: intermediate physical address size (the stage 1 output size).
    #[bits(3)]
    pub ips: u8,
    #[bits(1)]
    __: u8,
    /// AS, bit 36: 16-bit ASIDs.
    pub asid16: bool,
    /// TBI0, bit 37: top byte ignored for TTBR0 addresses.
    pub tbi0: bool,
    /// TBI1, bit 38: top byte ignored for TTBR1 addresses.
    pub tbi1: bool,
    /// HA, bit 39: hardware Access flag update.
    pub ha: bool,
    /// HD, bit 40: hardware dirty state update (needs HA).
    pub hd: bool,
    /// HPD0, bit 41: hierarchical permissions disabled for TTBR0.
    pub hpd0: bool,
    /// HPD1, bit 42: hierarchical permissions disabled for TTBR1.
    pub hpd1: bool,
    /// HWU059-HWU062 and HWU159-HWU162, bits `[50:43]`: hardware use of descriptor bits.
    pub hwu: u8,
    /// TBID0, bit 51: TBI0 applies to data accesses only.
    pub tbid0: bool,
    /// TBID1, bit 52: TBI1 applies to data accesses only.
    pub tbid1: bool,
    /// NFD0, bit 53 (SVE): non-fault translation disable for TTBR0.
    pub nfd0: bool,
    /// NFD1, bit 54.
    pub nfd1: bool,
    /// E0PD0, bit 55: EL0 access to TTBR0 region faults (not applied to SPU writes).
    pub e0pd0: bool,
    /// E0PD1, bit 56.
    pub e0pd1: bool,
    /// TCMA0, bit 57 (MTE).
    pub tcma0: bool,
    /// TCMA1, bit 58 (MTE).
    pub tcma1: bool,
    /// DS, bit 59 (FEAT_LPA2): 52-bit VA and OA with 4KB/16KB granules.
    pub ds: bool,
    /// MTX0, bit 60.
    pub mtx0: bool,
    /// MTX1, bit 61.
    pub mtx1: bool,
    #[bits(2)]
    __: u8,
}

impl Tcr {
    /// The TTBR0 granule from TG0 (00 4KB, 01 64KB, 10 16KB). The reserved value 0b11 is treated
    /// as an IMPLEMENTATION DEFINED implemented size (ARM-D24.2.194); we choose 4KB and report
    /// the choice through [`Tcr::tg0_is_reserved`].
    pub const fn granule0(self) -> Granule {
        match self.tg0() {
            0b01 => Granule::K64,
            0b10 => Granule::K16,
            _ => Granule::K4,
        }
    }

    /// The TTBR1 granule from TG1 (01 16KB, 10 4KB, 11 64KB); reserved 0b00 is taken as 4KB.
    pub const fn granule1(self) -> Granule {
        match self.tg1() {
            0b01 => Granule::K16,
            0b11 => Granule::K64,
            _ => Granule::K4,
        }
    }

    /// Whether TG0 holds the reserved encoding 0b11.
    pub const fn tg0_is_reserved(self) -> bool {
        self.tg0() == 0b11
    }

    /// Whether TG1 holds the reserved encoding 0b00.
    pub const fn tg1_is_reserved(self) -> bool {
        self.tg1() == 0b00
    }

    /// The TG0 encoding of a granule.
    pub const fn tg0_bits(granule: Granule) -> u8 {
        match granule {
            Granule::K4 => 0b00,
            Granule::K64 => 0b01,
            Granule::K16 => 0b10,
        }
    }

    /// The TG1 encoding of a granule.
    pub const fn tg1_bits(granule: Granule) -> u8 {
        match granule {
            Granule::K16 => 0b01,
            Granule::K4 => 0b10,
            Granule::K64 => 0b11,
        }
    }

    /// The output address size in bits that IPS encodes (spec sheet §3.1: 32, 36, 40, 42, 44,
    /// 48, 52, 56).
    pub const fn ips_bits(self) -> u32 {
        match self.ips() {
            0b000 => 32,
            0b001 => 36,
            0b010 => 40,
            0b011 => 42,
            0b100 => 44,
            0b101 => 48,
            0b110 => 52,
            _ => 56,
        }
    }
}

/// SCTLR_EL1, System Control Register for EL1: the fields a stage 1 walk depends on, the rest
/// kept as raw bits (ARM-D24.2; aarch64-cpu is the layout oracle in tests).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Sctlr {
    /// M, bit 0: stage 1 MMU enabled for EL1&0.
    pub m: bool,
    /// A, bit 1: alignment checking.
    pub a: bool,
    /// C, bit 2: data cacheability.
    pub c: bool,
    /// SA, bit 3: SP alignment check at EL1.
    pub sa: bool,
    /// SA0, bit 4: SP alignment check at EL0.
    pub sa0: bool,
    #[bits(7)]
    __: u8,
    /// I, bit 12: instruction cacheability.
    pub i: bool,
    #[bits(6)]
    __: u8,
    /// WXN, bit 19: write permission implies execute-never.
    pub wxn: bool,
    #[bits(4)]
    __: u8,
    /// E0E, bit 24: EL0 data endianness.
    pub e0e: bool,
    /// EE, bit 25: EL1 data and **stage 1 table walk** endianness (1 = big-endian).
    pub ee: bool,
    #[bits(38)]
    __: u64,
}

/// TTBR0_EL1/TTBR1_EL1, Translation Table Base Registers (spec sheet §3.2, ARM-D24.2.209).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Ttbr {
    /// CnP, bit 0: common not private.
    pub cnp: bool,
    /// BADDR, bits `[47:1]`: table base address bits `[47:1]`; with a 52-bit output size, register
    /// bits `[5:2]` hold base address bits `[51:48]`.
    #[bits(47)]
    pub baddr: u64,
    /// ASID, bits `[63:48]`.
    pub asid: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tg0_and_tg1_use_different_encodings_for_the_same_granule() {
        for g in Granule::ALL {
            let tcr = Tcr::new()
                .with_tg0(Tcr::tg0_bits(g))
                .with_tg1(Tcr::tg1_bits(g));
            assert_eq!(tcr.granule0(), g);
            assert_eq!(tcr.granule1(), g);
        }
        assert_ne!(Tcr::tg0_bits(Granule::K16), Tcr::tg1_bits(Granule::K16));
    }

    #[test]
    fn ips_decodes_to_output_address_bits() {
        assert_eq!(Tcr::new().with_ips(0b101).ips_bits(), 48);
        assert_eq!(Tcr::new().with_ips(0b000).ips_bits(), 32);
        assert_eq!(Tcr::new().with_ips(0b110).ips_bits(), 52);
    }

    #[test]
    fn a_linux_48_bit_4k_tcr_decodes_field_by_field() {
        // T0SZ=T1SZ=16, TG1=4KB, IPS=48-bit, TBI0, HA, HD, A1, SH/ORGN/IRGN = WBWA inner-shareable.
        let raw: u64 = 16
            | (0b01 << 8)
            | (0b01 << 10)
            | (0b11 << 12)
            | (16 << 16)
            | (1 << 22)
            | (0b01 << 24)
            | (0b01 << 26)
            | (0b11 << 28)
            | (0b10 << 30)
            | (0b101 << 32)
            | (1 << 37)
            | (1 << 39)
            | (1 << 40);
        let tcr = Tcr::from_bits(raw);
        assert_eq!((tcr.t0sz(), tcr.t1sz()), (16, 16));
        assert_eq!((tcr.granule0(), tcr.granule1()), (Granule::K4, Granule::K4));
        assert!(tcr.a1() && tcr.tbi0() && !tcr.tbi1() && tcr.ha() && tcr.hd());
        assert_eq!(tcr.ips_bits(), 48);
        assert_eq!(tcr.into_bits(), raw);
    }
}
