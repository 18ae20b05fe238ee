//! The EL1&0 stage 1 regime as the SPU sees it: registers, implemented features and the
//! per-half walk parameters derived from them (spec sheet §3.1-§3.3, §3.8).

use crate::addr::{Granule, Gva};
use crate::arch::pmbsr::FaultLevel;
use crate::arch::translation_regs::{Sctlr, Tcr, Ttbr};
use crate::arch::walk::fault::FaultCause;

/// The registers a stage 1 walk for an SPU write depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Stage1Regs {
    /// TCR_EL1.
    pub tcr: Tcr,
    /// TTBR0_EL1.
    pub ttbr0: Ttbr,
    /// TTBR1_EL1.
    pub ttbr1: Ttbr,
    /// SCTLR_EL1 (M: stage 1 enabled; EE: big-endian tables).
    pub sctlr: Sctlr,
    /// The SPU supports hardware Access flag update (PMBIDR_EL1.F = 1). It takes effect only
    /// with TCR_EL1.HA = 1 (spec sheet §3.10).
    pub hw_af: bool,
    /// The SPU supports hardware dirty state update (PMBIDR_EL1.F = 1). It takes effect only
    /// with TCR_EL1.HA = 1 and TCR_EL1.HD = 1 (spec sheet §3.10).
    pub hw_dbm: bool,
}

/// What to do with a TnSZ outside the valid range: the architecture makes this CONSTRAINED
/// UNPREDICTABLE with exactly these two permitted behaviours (ARM-D8.2.4; pseudocode
/// `AArch64.S1InvalidTxSZ` / `Unpredictable_RESTnSZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TxSzOutOfRange {
    /// A level 0 Translation fault (the default: it never hides a misprogrammed guest).
    #[default]
    Fault,
    /// Treat TnSZ as the nearest valid value.
    Clamp,
}

/// Implemented features and model choices for a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalkOptions {
    /// FEAT_LPA2: TCR_EL1.DS is honoured (52-bit VA/OA with 4KB/16KB). Without it DS reads as 0.
    pub feat_lpa2: bool,
    /// FEAT_LPA: 52-bit output addresses with the 64KB granule (effective only with a 52-bit
    /// PAMax).
    pub feat_lpa: bool,
    /// PAMax, the implemented physical address size in bits (ID_AA64MMFR0_EL1.PARange: 32, 36,
    /// 40, 42, 44, 48 or 52). It caps the output address size (pseudocode
    /// `AArch64.PhysicalAddressSize`: `Min(IPS, PAMax())`) and decides whether the 64KB
    /// granule has level 1 blocks (`AArch64.BlockDescSupported`: only when `PAMax() == 52`).
    pub pa_bits: u8,
    /// FEAT_LVA: TnSZ down to 12 with the 64KB granule.
    pub feat_lva: bool,
    /// FEAT_TTST: TnSZ up to 48 (4KB/16KB) or 47 (64KB).
    pub feat_ttst: bool,
    /// Treatment of an out-of-range TnSZ.
    pub txsz_out_of_range: TxSzOutOfRange,
    /// Allow a table descriptor to point at its own table or an ancestor (recursive mappings,
    /// architecturally legal). Off by default: such tables are refused with
    /// [`WalkError::TableCycle`](crate::arch::walk::WalkError::TableCycle).
    pub allow_recursive_tables: bool,
}

impl Default for WalkOptions {
    /// A 48-bit PA machine (PARange 0b0101, what most deployed cores are) with LPA2 and LVA
    /// decoding, LPA (which needs a 52-bit PAMax to matter), no TTST.
    fn default() -> Self {
        WalkOptions {
            feat_lpa2: true,
            feat_lpa: true,
            pa_bits: 48,
            feat_lva: true,
            feat_ttst: false,
            txsz_out_of_range: TxSzOutOfRange::Fault,
            allow_recursive_tables: false,
        }
    }
}

/// Parameters of one walk, fixed by the half of the address space the VA selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HalfParams {
    /// VA bits that must all equal VA`[55]` for the VA to be in this half's range.
    pub range_mask: u64,
    /// What those bits are in range: all ones for TTBR1, all zeros for TTBR0.
    pub range_expected: u64,
    /// This is the TTBR1 half.
    pub upper: bool,
    /// EPDn = 1.
    pub walks_disabled: bool,
    /// `level_shift` per level, indexed by `(level + 1) & 7` (eight entries, so the index needs
    /// no bounds check on the walk's hot path; entries 5-7 are unused).
    pub shifts: [u32; 8],
    /// Index mask per level, indexed as `shifts`.
    pub index_masks: [u64; 8],
    /// `!(page size - 1)`: aligns an address down to its page.
    pub page_mask: u64,
    /// log2 of the page size.
    pub page_shift: u32,
    pub granule: Granule,
    /// Input address bits, 64 - TnSZ (after any clamp).
    pub ia_bits: u32,
    pub start_level: FaultLevel,
    /// The address bits at and above the effective output address size: an output address
    /// with any of them set is out of range (one AND on the walk's hot path instead of a
    /// variable shift).
    pub oa_excess: u64,
    /// 52-bit descriptor layout: 64KB with FEAT_LPA and 52-bit PS (OA`[51:48]` in bits `[15:12]`),
    /// or DS=1 (OA`[51:50]` in bits `[9:8]`, OA`[49:48]` in bits `[49:48]`).
    pub layout: OaLayout,
    /// APTable`[1]` (descriptor bit 62) when hierarchical permissions are enabled (HPDn = 0),
    /// else 0: a table descriptor ANDed with it is non-zero when it removes write access below
    /// (§3.5).
    pub aptable_no_write: u64,
    pub big_endian: bool,
    pub hw_af: bool,
    pub hw_dirty: bool,
    pub ds: bool,
    /// PAMax is 52 bits (64KB level 1 blocks exist).
    pub pamax_52: bool,
    /// The root table's base, aligned as the architecture aligns it.
    pub root: u64,
    /// The common regime the walker unrolls: 4 KB granule, level 0 start, little-endian
    /// tables with 48-bit output addresses.
    pub plain_4k_level0: bool,
}

/// Where a descriptor keeps output address bits above 47.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OaLayout {
    /// OA[47:shift] only; bits above 47 read as zero.
    Bits48,
    /// 64KB granule with FEAT_LPA: OA`[51:48]` in descriptor bits `[15:12]`.
    Lpa64k,
    /// DS = 1: OA`[51:50]` in bits `[9:8]`, OA`[49:48]` in bits `[49:48]`.
    Lpa2,
}

impl OaLayout {
    /// The output address held in a descriptor, aligned down to `align_shift`.
    #[inline]
    pub fn output_address(self, desc: u64, align_shift: u32) -> u64 {
        let low_mask = !((1u64 << align_shift) - 1);
        match self {
            OaLayout::Bits48 => desc & 0x0000_ffff_ffff_ffff & low_mask,
            OaLayout::Lpa64k => {
                (desc & 0x0000_ffff_ffff_0000 & low_mask) | ((desc >> 12) & 0xf) << 48
            }
            OaLayout::Lpa2 => {
                (desc & 0x0003_ffff_ffff_ffff & low_mask) | ((desc >> 8) & 0b11) << 50
            }
        }
    }
}

/// log2 of the size one entry at `level` maps.
#[inline]
pub(crate) const fn level_shift(granule: Granule, level: FaultLevel) -> u32 {
    granule.shift() + granule.stride() * (3 - level) as u32
}

impl Stage1Regs {
    /// The kernel half of a Linux-like arm64 guest: 4KB granule, 48-bit VAs and IPAs, TTBR1
    /// at `root`, TTBR0 walks disabled (EPD0), stage 1 on, little-endian, and hardware AF and
    /// dirty management supported by the SPU (PMBIDR_EL1.F = 1) but not enabled in TCR (HA/HD
    /// off), so AF and AP must already be right.
    pub fn linux_kernel_4k(root: crate::addr::Ipa) -> Self {
        let tcr = Tcr::new()
            .with_t0sz(16)
            .with_t1sz(16)
            .with_tg0(Tcr::tg0_bits(Granule::K4))
            .with_tg1(Tcr::tg1_bits(Granule::K4))
            .with_ips(0b101)
            .with_epd0(true);
        Stage1Regs {
            tcr,
            ttbr0: Ttbr::new(),
            ttbr1: Ttbr::from_bits(root.0),
            sctlr: Sctlr::new().with_m(true),
            hw_af: true,
            hw_dbm: true,
        }
    }

    /// Which TTBR translates `va`: bit 55 selects (spec sheet §3.2).
    #[inline]
    pub const fn ttbr_index(va: Gva) -> u8 {
        ((va.0 >> 55) & 1) as u8
    }

    /// Derives the walk parameters for one half (TTBR1 if `upper`), or the level 0 fault cause
    /// that every VA of that half gets.
    pub(crate) fn half_params(
        &self,
        upper: bool,
        opt: &WalkOptions,
    ) -> Result<HalfParams, FaultCause> {
        let tcr = self.tcr;
        let (txsz, granule, epd, tbi, hpd, ttbr) = if upper {
            (
                tcr.t1sz(),
                tcr.granule1(),
                tcr.epd1(),
                tcr.tbi1(),
                tcr.hpd1(),
                self.ttbr1,
            )
        } else {
            (
                tcr.t0sz(),
                tcr.granule0(),
                tcr.epd0(),
                tcr.tbi0(),
                tcr.hpd0(),
                self.ttbr0,
            )
        };
        let ds = opt.feat_lpa2 && tcr.ds() && granule != Granule::K64;

        // TnSZ range (spec sheet §3.2; pseudocode AArch64.S1MinTxSZ / S1MaxTxSZ).
        let min = if ds || (granule == Granule::K64 && opt.feat_lva) {
            12
        } else {
            16
        };
        let max = match (opt.feat_ttst, granule) {
            (false, _) => 39,
            (true, Granule::K64) => 47,
            (true, _) => 48,
        };
        let txsz = if txsz < min || txsz > max {
            match opt.txsz_out_of_range {
                TxSzOutOfRange::Fault => {
                    return Err(FaultCause::TxSzOutOfRange { txsz, min, max });
                }
                TxSzOutOfRange::Clamp => txsz.clamp(min, max),
            }
        } else {
            txsz
        };
        let ia_bits = 64 - txsz as u32;

        // Range check mask: the bits above the input size must all equal VA[55]; with TBI the
        // top byte is not checked (spec sheet §3.2).
        let top = if tbi { 56 } else { 64 };
        let range_mask = ((1u64 << (top - ia_bits)) - 1) << ia_bits;

        // Start level: enough levels of `stride` bits to cover the input above the page offset.
        let stride = granule.stride();
        let levels = (ia_bits - granule.shift()).div_ceil(stride);
        let start_level = 4 - levels as FaultLevel;

        // Output address size (pseudocode AArch64.PhysicalAddressSize): Min(IPS, PAMax()),
        // and 52 bits only with the 64KB granule and FEAT_LPA, or with DS = 1; otherwise at
        // most 48.
        let ips = tcr.ips_bits();
        let pamax = u32::from(opt.pa_bits.clamp(32, 52));
        let lpa = opt.feat_lpa && pamax == 52;
        let wide = ds || (granule == Granule::K64 && lpa);
        let oa_bits = ips.min(if wide { 52 } else { 48 }).min(pamax);
        let layout = match (ds, wide && oa_bits == 52) {
            (true, _) => OaLayout::Lpa2,
            (false, true) => OaLayout::Lpa64k,
            (false, false) => OaLayout::Bits48,
        };

        // Root table base, aligned to the size of the initial table (at least 64 bytes with a
        // 52-bit output; pseudocode AArch64.S1TTBaseAddress).
        let entries_bits = ia_bits - level_shift(granule, start_level);
        let raw = ttbr.into_bits();
        let (mut base, align) = if layout != OaLayout::Bits48 {
            let base = (raw & 0x0000_ffff_ffff_ffc0) | ((raw >> 2) & 0xf) << 48;
            (base, (entries_bits + 3).max(6))
        } else {
            (raw & 0x0000_ffff_ffff_fffe, entries_bits + 3)
        };
        base &= !((1u64 << align) - 1);

        let hw_af = self.hw_af && tcr.ha();
        let mut shifts = [0u32; 8];
        let mut index_masks = [0u64; 8];
        for level in start_level..=3 {
            let i = (level + 1) as usize;
            shifts[i] = level_shift(granule, level);
            let bits = if level == start_level {
                ia_bits - shifts[i]
            } else {
                stride
            };
            index_masks[i] = (1u64 << bits) - 1;
        }
        let big_endian = self.sctlr.ee();
        Ok(HalfParams {
            range_mask,
            range_expected: if upper { range_mask } else { 0 },
            upper,
            walks_disabled: epd,
            shifts,
            index_masks,
            page_mask: !granule.offset_mask(),
            page_shift: granule.shift(),
            granule,
            ia_bits,
            start_level,
            oa_excess: !0u64 << oa_bits,
            layout,
            aptable_no_write: if hpd { 0 } else { 1 << 62 },
            big_endian,
            hw_af,
            hw_dirty: hw_af && self.hw_dbm && tcr.hd(),
            ds,
            pamax_52: pamax == 52,
            root: base,
            plain_4k_level0: granule == Granule::K4
                && start_level == 0
                && !big_endian
                && layout == OaLayout::Bits48,
        })
    }
}

impl HalfParams {
    /// Whether a block descriptor is allowed at `level` (pseudocode AArch64.BlockDescSupported).
    #[inline]
    pub fn block_allowed(&self, level: FaultLevel) -> bool {
        match self.granule {
            Granule::K4 => level == 1 || level == 2 || (level == 0 && self.ds),
            Granule::K16 => level == 2 || (level == 1 && self.ds),
            // `AArch64.BlockDescSupported`: `level == 1 && AArch64.PAMax() == 52`.
            Granule::K64 => level == 2 || (level == 1 && self.pamax_52),
        }
    }

    /// The index of `va` into the table at `level`.
    #[inline]
    pub fn index(&self, va: u64, level: FaultLevel) -> u64 {
        let i = (level + 1) as usize & 7;
        (va >> self.shifts[i]) & self.index_masks[i]
    }

    /// Whether `va` is inside this half's VA range (spec sheet §3.2).
    #[inline]
    pub fn contains(&self, va: Gva) -> bool {
        va.0 & self.range_mask == self.range_expected
    }

    /// Whether `addr` fits the output address size.
    #[inline]
    pub fn oa_in_range(&self, addr: u64) -> bool {
        addr & self.oa_excess == 0
    }
}
