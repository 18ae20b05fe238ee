//! Shared fixtures for the criterion benchmarks in `benches/`: every benchmark compares the
//! code under test with a baseline measured in the same run, and reports the ratio.

use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::arch::{Sctlr, Tcr, Ttbr};
use spe_policy::{Granule, GuestRam, Gva, Ipa};

/// Where the fixture's tables live.
pub const TABLES: Ipa = Ipa(0x4000_0000);

/// A 4KB, 48-bit, 4-level guest with `pages` scattered pages mapped at `va`.
pub fn four_level_guest(va: Gva, pages: u64) -> (GuestRam, Stage1Regs) {
    let mut b = TableBuilder::new(GuestRam::new(), Granule::K4, 16, TABLES, 0x10_0000, false)
        .expect("fixture tables");
    b.map_pages(
        va,
        (0..pages).map(|i| Ipa(0x8000_0000 + ((i * 7919) % 65_536) * 0x1000)),
        LEAF_RW,
    )
    .expect("fixture mapping");
    let tcr = Tcr::new()
        .with_t0sz(16)
        .with_t1sz(16)
        .with_tg0(Tcr::tg0_bits(Granule::K4))
        .with_tg1(Tcr::tg1_bits(Granule::K4))
        .with_ips(0b101);
    let regs = Stage1Regs {
        tcr,
        ttbr0: Ttbr::from_bits(TABLES.0),
        ttbr1: Ttbr::from_bits(TABLES.0),
        sctlr: Sctlr::new().with_m(true),
        hw_af: true,
        hw_dbm: true,
    };
    (b.into_ram(), regs)
}

/// The baseline for a walk: the four dependent 8-byte loads a 4-level walk must make, straight
/// from the same table bytes, with no checks at all.
#[inline]
pub fn four_dependent_loads(tables: &[u8], base: u64, va: u64) -> u64 {
    let mut table = base;
    let mut desc = 0u64;
    for level in 0..4u32 {
        let index = (va >> (39 - 9 * level)) & 0x1ff;
        let off = (table - base + index * 8) as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&tables[off..off + 8]);
        desc = u64::from_le_bytes(b);
        table = desc & 0x0000_ffff_ffff_f000;
    }
    desc
}

/// Real SPE records (44-byte Kunpeng branch records and 64-byte Neoverse-style load/branch
/// records) repeated to `len` bytes, cut at a record boundary.
pub fn realistic_spe_buffer(len: usize) -> Vec<u8> {
    let sources: [&[u8]; 3] = [
        include_bytes!("../../spe-policy/tests/data/kunpeng_branch_2021_a.bin"),
        include_bytes!("../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin"),
        include_bytes!("../../spe-policy/tests/data/kunpeng_branch_2021_b.bin"),
    ];
    let mut out = Vec::with_capacity(len);
    'fill: loop {
        for s in sources {
            if out.len() + s.len() > len {
                break 'fill;
            }
            out.extend_from_slice(s);
        }
    }
    out
}
