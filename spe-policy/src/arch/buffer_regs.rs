//! Profiling Buffer registers: PMBLIMITR_EL1, PMBPTR_EL1, PMBSR_EL1, PMBIDR_EL1
//! (spec sheet §1.2-§1.5, ARM-D24.7).

use bitfield_struct::bitfield;

use crate::addr::Gva;
use crate::arch::pmbsr::PmbsrEc;

/// PMBLIMITR_EL1.FM, the buffer mode (spec sheet §1.2). SPE has no wrap mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferMode {
    /// 0b00: stop collection and raise a management interrupt when the buffer fills.
    Fill,
    /// 0b10 (FEAT_SPEv1p2): discard all data after filtering; PMBPTR does not move.
    Discard,
    /// 0b01 or 0b11: reserved; the raw value is kept.
    Reserved(u8),
}

impl BufferMode {
    /// Decodes the 2-bit FM field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => BufferMode::Fill,
            0b10 => BufferMode::Discard,
            other => BufferMode::Reserved(other),
        }
    }

    /// Encodes the 2-bit FM field.
    pub const fn into_bits(self) -> u8 {
        match self {
            BufferMode::Fill => 0b00,
            BufferMode::Discard => 0b10,
            BufferMode::Reserved(bits) => bits & 0b11,
        }
    }
}

/// PMBLIMITR_EL1, Profiling Buffer Limit Address Register (spec sheet §1.2, ARM-D24.7.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmblimitr {
    /// E, bit 0: profiling buffer enabled.
    pub e: bool,
    /// FM, bits `[2:1]`: fill or discard mode.
    #[bits(2)]
    pub fm: BufferMode,
    #[bits(2)]
    __: u8,
    /// PMFZ, bit 5 (FEAT_SPEv1p2): freeze PMU counters when PMBSR_EL1.S becomes 1.
    pub pmfz: bool,
    #[bits(1)]
    __: u8,
    /// nVM, bit 7 (FEAT_SPE_nVM): buffer pointers are PAs/IPAs instead of VAs.
    pub nvm: bool,
    #[bits(4)]
    __: u8,
    /// LIMIT, bits `[63:12]`: `LIMIT:Zeros(12)` is the first byte after the buffer.
    #[bits(52)]
    pub limit: u64,
}

impl Pmblimitr {
    /// The address of the first byte after the buffer, `LIMIT:Zeros(12)`.
    pub const fn limit_address(self) -> Gva {
        Gva(self.limit() << 12)
    }

    /// A register value with the given limit address (bits `[11:0]` dropped), enable bit and mode.
    pub const fn for_buffer(limit: Gva, enabled: bool, mode: BufferMode) -> Self {
        Self::new()
            .with_limit(limit.0 >> 12)
            .with_e(enabled)
            .with_fm(mode)
    }
}

/// PMBPTR_EL1, Profiling Buffer Write Pointer (spec sheet §1.3, ARM-D24.7.4). Frozen on a
/// management interrupt.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmbptr {
    /// PTR, bits `[63:0]`: the VA (or PA/IPA with nVM) of the next byte to write.
    #[bits(64)]
    pub ptr: u64,
}

impl Pmbptr {
    /// The write pointer as a guest virtual address.
    pub const fn address(self) -> Gva {
        Gva(self.ptr())
    }
}

/// PMBSR_EL1, Profiling Buffer Status/syndrome Register (spec sheet §1.4, ARM-D24.7.5). Use
/// [`crate::arch::BufferEvent::decode`] for what the value means.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmbsr {
    /// MSS, bits `[15:0]`: event-specific syndrome (BSC or FSC in `[5:0]`).
    pub mss: u16,
    /// COLL, bit 16: at least one sample collision was recorded.
    pub coll: bool,
    /// S, bit 17: a management event has been recorded; profiling is stopped while set.
    pub s: bool,
    /// EA, bit 18: an external abort was asserted and detected by the SPU.
    pub ea: bool,
    /// DL, bit 19: partial record lost; PMBPTR may not follow the last complete record.
    pub dl: bool,
    #[bits(6)]
    __: u8,
    /// EC, bits `[31:26]`: the event class.
    #[bits(6)]
    pub ec: PmbsrEc,
    /// MSS2, bits `[55:32]`: second syndrome (permission-fault details with newer features).
    #[bits(24)]
    pub mss2: u32,
    #[bits(8)]
    __: u8,
}

/// PMBIDR_EL1, Profiling Buffer ID Register (spec sheet §1.5, ARM-D24.7.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Pmbidr {
    /// Align, bits `[3:0]`: PMBPTR alignment is 2^Align bytes; nonzero means every record is a
    /// multiple of that size.
    #[bits(4)]
    pub align: u8,
    /// P, bit 4: programming not allowed at this EL (buffer owned by a higher EL).
    pub p: bool,
    /// F, bit 5: hardware Access flag and dirty state management apply to SPU writes as to
    /// explicit accesses of the owning regime; 0 means always disabled for the SPU.
    pub f: bool,
    /// AddrMode, bits `[7:6]` (FEAT_SPE_nVM): 00 VA only, 01 VA and PA modes.
    #[bits(2)]
    pub addr_mode: u8,
    /// EA, bits `[11:8]`: external abort handling (0 not described, 1 ignored, 2 SError).
    #[bits(4)]
    pub ea: u8,
    #[bits(20)]
    __: u32,
    /// MaxBuffSize, bits `[47:32]`: 0 = no limit; else mantissa `[8:0]`, exponent `[13:9]`.
    pub max_buff_size: u16,
    #[bits(16)]
    __: u16,
}

impl Pmbidr {
    /// The minimum PMBPTR alignment in bytes, `2^Align`.
    pub const fn align_bytes(self) -> u64 {
        1 << self.align()
    }

    /// The maximum buffer size in bytes a hypervisor reports, or `None` for "no limit"
    /// (spec sheet §1.5: `E == 0 ? M << 12 : (1:M) << (E + 11)`).
    pub const fn max_buffer_bytes(self) -> Option<u64> {
        let raw = self.max_buff_size() as u64;
        if raw == 0 {
            return None;
        }
        let mantissa = raw & 0x1ff;
        let exponent = (raw >> 9) & 0x1f;
        Some(if exponent == 0 {
            mantissa << 12
        } else {
            ((1 << 9) | mantissa) << (exponent + 11)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_register_puts_the_limit_address_in_bits_63_to_12() {
        let r = Pmblimitr::for_buffer(Gva(0xffff_0000_0040_0000), true, BufferMode::Fill);
        assert_eq!(r.into_bits(), 0xffff_0000_0040_0001);
        assert_eq!(r.limit_address(), Gva(0xffff_0000_0040_0000));
        let d = Pmblimitr::from_bits(0x1000 | 0b101);
        assert_eq!(d.fm(), BufferMode::Discard);
        assert!(d.e());
    }

    #[test]
    fn reserved_buffer_modes_keep_their_raw_value() {
        let r = Pmblimitr::from_bits(0b011);
        assert_eq!(r.fm(), BufferMode::Reserved(1));
        assert_eq!(r.into_bits(), 0b011);
    }

    #[test]
    fn reserved_bits_survive_a_decode_encode_round_trip() {
        for raw in [u64::MAX, 0x8000_0000_0000_0f40, 0x00ff_0000_03f0_0000] {
            assert_eq!(Pmblimitr::from_bits(raw).into_bits(), raw);
            assert_eq!(Pmbsr::from_bits(raw).into_bits(), raw);
            assert_eq!(Pmbidr::from_bits(raw).into_bits(), raw);
        }
    }

    #[test]
    fn pmbidr_max_buffer_size_follows_mantissa_and_exponent() {
        assert_eq!(Pmbidr::new().max_buffer_bytes(), None);
        // E=0, M=16: 16 pages of 4KB.
        assert_eq!(
            Pmbidr::new().with_max_buff_size(16).max_buffer_bytes(),
            Some(64 << 10)
        );
        // E=1, M=0: (1:0) << 12 = 2MiB.
        assert_eq!(
            Pmbidr::new().with_max_buff_size(1 << 9).max_buffer_bytes(),
            Some(2 << 20)
        );
        assert_eq!(Pmbidr::new().with_align(6).align_bytes(), 64);
    }
}
