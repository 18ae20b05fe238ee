//! Walker tests against hand-built descriptors (every granule, every fault and level); the
//! aarch64-paging differential tests and property tests live in `tests/walker_*.rs`.

use std::cell::Cell;

use super::builder::*;
use super::*;
use crate::addr::Granule;
use crate::arch::pmbsr::FaultStatusCode;
use crate::arch::translation_regs::{Sctlr, Tcr, Ttbr};
use crate::guest_memory::{GuestMemoryRead, GuestRam, UnbackedIpa};

const POOL: Ipa = Ipa(0x4000_0000);
const POOL_LEN: u64 = 0x40_0000;

fn tcr(granule: Granule, t0sz: u8, t1sz: u8) -> Tcr {
    Tcr::new()
        .with_t0sz(t0sz)
        .with_t1sz(t1sz)
        .with_tg0(Tcr::tg0_bits(granule))
        .with_tg1(Tcr::tg1_bits(granule))
        .with_ips(0b101)
}

fn regs(tcr: Tcr, root0: Ipa, root1: Ipa) -> Stage1Regs {
    Stage1Regs {
        tcr,
        ttbr0: Ttbr::from_bits(root0.0),
        ttbr1: Ttbr::from_bits(root1.0),
        sctlr: Sctlr::new().with_m(true),
        hw_af: false,
        hw_dbm: false,
    }
}

/// A lower-half builder for `granule` and `t0sz`, and the registers that walk it.
fn lower(granule: Granule, t0sz: u8) -> (TableBuilder, Stage1Regs) {
    let b =
        TableBuilder::new(GuestRam::new(), granule, t0sz, POOL, POOL_LEN, false).expect("builder");
    let r = regs(tcr(granule, t0sz, 16), b.root(), Ipa(0));
    (b, r)
}

fn fault_of(r: Result<Translation, WalkError>) -> Stage1Fault {
    match r {
        Err(WalkError::Fault(f)) => f,
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn a_4k_page_walk_reads_four_tables_in_order_and_returns_the_ipa() {
    let (mut b, r) = lower(Granule::K4, 16);
    let va = Gva(0x0000_7f12_3456_7000);
    b.map(va, Ipa(0x8000_1000), 3, LEAF_RW).expect("map");
    let w = Walker::new(r, b.ram());
    let t = w.translate(Gva(va.0 + 0xabc)).expect("translates");
    assert_eq!(t.ipa, Ipa(0x8000_1abc));
    assert_eq!((t.level, t.block_size), (3, 0x1000));
    let tables = t.tables_touched.as_slice();
    assert_eq!(tables.len(), 4);
    assert_eq!(tables[0], POOL, "the root is read first");
    assert!(tables.iter().all(|p| p.is_page_aligned(Granule::K4)));
    assert!(!t.sets_access_flag && !t.sets_dirty);
}

#[test]
fn start_levels_follow_txsz_for_every_granule() {
    // (granule, TxSZ, start level) from spec sheet §3.3.
    let cases = [
        (Granule::K4, 16, 0),
        (Granule::K4, 24, 0),
        (Granule::K4, 25, 1),
        (Granule::K4, 33, 1),
        (Granule::K4, 34, 2),
        (Granule::K4, 39, 2),
        (Granule::K16, 16, 0),
        (Granule::K16, 17, 1),
        (Granule::K16, 27, 1),
        (Granule::K16, 28, 2),
        (Granule::K16, 38, 2),
        (Granule::K16, 39, 3),
        (Granule::K64, 16, 1),
        (Granule::K64, 21, 1),
        (Granule::K64, 22, 2),
        (Granule::K64, 34, 2),
        (Granule::K64, 35, 3),
    ];
    for (granule, txsz, start) in cases {
        let (mut b, r) = lower(granule, txsz);
        assert_eq!(b.start_level(), start, "{granule} T0SZ={txsz}");
        let top_va = Gva(((1u64 << (64 - txsz)) - 1) & !granule.offset_mask());
        b.map(top_va, Ipa(0x9000_0000), 3, LEAF_RW).expect("map");
        let t = Walker::new(r, b.ram()).translate(top_va).expect("walk");
        assert_eq!(t.ipa, Ipa(0x9000_0000), "{granule} T0SZ={txsz}");
        assert_eq!(
            t.tables_touched.as_slice().len(),
            (4 - start) as usize,
            "{granule} T0SZ={txsz}"
        );
    }
}

#[test]
fn the_upper_half_uses_ttbr1_and_its_own_granule_encoding() {
    for granule in Granule::ALL {
        let mut b = TableBuilder::new(GuestRam::new(), granule, 25, POOL, POOL_LEN, false)
            .expect("builder");
        let va = Gva(0xffff_ff80_0000_0000 + 5 * granule.size());
        b.map(va, Ipa(0x7_0000_0000), 3, LEAF_RW).expect("map");
        // TTBR0 points at garbage: the walk must not use it.
        let r = regs(tcr(granule, 16, 25), Ipa(0xdead_0000), b.root());
        let t = Walker::new(r, b.ram())
            .translate(Gva(va.0 + 8))
            .expect("walk");
        assert_eq!(t.ipa, Ipa(0x7_0000_0008), "{granule}");
        assert_eq!(t.tables_touched.as_slice()[0], POOL);
    }
}

#[test]
fn blocks_translate_at_the_sizes_each_granule_allows() {
    let cases = [
        (Granule::K4, 1, 1u64 << 30),
        (Granule::K4, 2, 2 << 20),
        (Granule::K16, 2, 32 << 20),
        (Granule::K64, 2, 512 << 20),
        (Granule::K64, 1, 4 << 40),
    ];
    // A 52-bit PAMax: the 64KB granule's 4 TB level 1 block exists only there.
    let pa52 = WalkOptions {
        pa_bits: 52,
        ..WalkOptions::default()
    };
    for (granule, level, size) in cases {
        let (mut b, mut r) = lower(granule, 16);
        r.tcr = r.tcr.with_ips(0b110);
        let va = Gva(size * 3);
        b.map(va, Ipa(size), level, LEAF_RW).expect("map");
        let t = Walker::with_options(r, pa52, b.ram())
            .translate(Gva(va.0 + size - 1))
            .expect("walk");
        assert_eq!(t.ipa, Ipa(2 * size - 1), "{granule} L{level}");
        assert_eq!((t.level, t.block_size), (level, size), "{granule} L{level}");
    }
}

#[test]
fn blocks_where_the_granule_allows_none_are_translation_faults_at_that_level() {
    // 4K L0 and 16K L1 need DS=1; 64K L1 needs PAMax = 52 (AArch64.BlockDescSupported):
    // FEAT_LPA alone on a 48-bit PA machine is not enough.
    for (granule, level, ds, lpa, pa_bits) in [
        (Granule::K4, 0, false, true, 52),
        (Granule::K16, 1, false, true, 52),
        (Granule::K64, 1, false, false, 48),
        (Granule::K64, 1, false, true, 48),
        (Granule::K64, 1, false, true, 44),
    ] {
        let (mut b, mut r) = lower(granule, 16);
        r.tcr = r.tcr.with_ds(ds).with_ips(0b110);
        let at = b.descriptor_ipa(Gva(0), level, 0).expect("desc");
        b.write_descriptor(at, 0x1 | LEAF_RW).expect("write");
        let opts = WalkOptions {
            feat_lpa: lpa,
            pa_bits,
            ..WalkOptions::default()
        };
        let f = fault_of(Walker::with_options(r, opts, b.ram()).translate(Gva(0)));
        assert_eq!(f.fsc(), FaultStatusCode::Translation(level), "{granule}");
        assert!(matches!(f.cause, FaultCause::BlockNotAllowed { .. }));
    }
}

#[test]
fn invalid_descriptors_fault_at_each_level_with_the_tables_read_before() {
    for level in 0..=3i8 {
        let (mut b, r) = lower(Granule::K4, 16);
        let va = Gva(0x1234_5678_9000);
        if level > 0 {
            // Build the tables down to `level` and leave the descriptor there invalid.
            b.descriptor_ipa(va, level, 0).expect("tables");
        }
        let f = fault_of(Walker::new(r, b.ram()).translate(va));
        assert_eq!(f.fsc(), FaultStatusCode::Translation(level));
        assert_eq!(f.tables_touched.as_slice().len(), level as usize + 1);
        assert_eq!(f.va, va);
    }
}

#[test]
fn a_level_3_descriptor_with_bit_1_clear_is_a_level_3_translation_fault() {
    let (mut b, r) = lower(Granule::K16, 16);
    let at = b.descriptor_ipa(Gva(0x4000), 3, 0).expect("desc");
    b.write_descriptor(at, 0x8000_0000 | 0b01 | LEAF_RW)
        .expect("write");
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x4000)));
    assert_eq!(f.fsc(), FaultStatusCode::Translation(3));
    assert!(matches!(f.cause, FaultCause::ReservedPageDescriptor { .. }));
}

#[test]
fn access_flag_clear_faults_unless_the_spu_and_tcr_both_enable_hardware_update() {
    for (hw_af, ha, faults) in [
        (false, false, true),
        (true, false, true),
        (false, true, true),
        (true, true, false),
    ] {
        let (mut b, mut r) = lower(Granule::K4, 16);
        b.map(Gva(0x1000), Ipa(0x8000_0000), 3, 0).expect("map");
        r.hw_af = hw_af;
        r.tcr = r.tcr.with_ha(ha);
        let res = Walker::new(r, b.ram()).translate(Gva(0x1000));
        if faults {
            let f = fault_of(res);
            assert_eq!(f.fsc(), FaultStatusCode::AccessFlag(3), "F={hw_af} HA={ha}");
        } else {
            assert!(res.expect("hw AF update").sets_access_flag);
        }
    }
}

#[test]
fn a_read_only_page_faults_unless_dbm_and_full_hardware_dirty_management_apply() {
    // (DBM, PMBIDR.F for dirty, HA, HD, faults)
    for (dbm, hw, ha, hd, faults) in [
        (false, true, true, true, true),
        (true, false, true, true, true),
        (true, true, false, true, true),
        (true, true, true, false, true),
        (true, true, true, true, false),
    ] {
        let (mut b, mut r) = lower(Granule::K64, 22);
        let attrs = LEAF_AF | LEAF_READ_ONLY | if dbm { LEAF_DBM } else { 0 };
        b.map(Gva(0x1_0000), Ipa(0x8000_0000), 3, attrs)
            .expect("map");
        r.hw_af = hw;
        r.hw_dbm = hw;
        r.tcr = r.tcr.with_ha(ha).with_hd(hd);
        let res = Walker::new(r, b.ram()).translate(Gva(0x1_0000));
        if faults {
            let f = fault_of(res);
            assert_eq!(
                f.fsc(),
                FaultStatusCode::Permission(3),
                "{dbm} {hw} {ha} {hd}"
            );
            assert_eq!(f.cause, FaultCause::ReadOnly { dbm_ignored: dbm });
        } else {
            assert!(res.expect("hw dirty update").sets_dirty);
        }
    }
}

#[test]
fn el0_accessible_pages_are_writable_by_the_spu_because_pan_is_ignored() {
    let (mut b, r) = lower(Granule::K4, 16);
    b.map(Gva(0x2000), Ipa(0x8000_0000), 3, LEAF_RW | (0b01 << 6))
        .expect("map");
    let t = Walker::new(r, b.ram()).translate(Gva(0x2000));
    assert_eq!(t.expect("AP=01 is privileged RW").ipa, Ipa(0x8000_0000));
}

#[test]
fn aptable_no_write_faults_at_the_leaf_level_unless_hierarchical_permissions_are_off() {
    for hpd in [false, true] {
        let (mut b, mut r) = lower(Granule::K4, 16);
        let va = Gva(0x40_0000);
        b.descriptor_ipa(va, 3, TABLE_NO_WRITE).expect("tables");
        b.map(va, Ipa(0x8000_0000), 3, LEAF_RW).expect("map");
        r.tcr = r.tcr.with_hpd0(hpd);
        let res = Walker::new(r, b.ram()).translate(va);
        if hpd {
            assert!(res.is_ok(), "HPD0=1 ignores APTable");
        } else {
            let f = fault_of(res);
            assert_eq!(f.fsc(), FaultStatusCode::Permission(3));
            assert_eq!(f.cause, FaultCause::TableRemovesWrite);
        }
    }
}

#[test]
fn address_size_faults_name_the_level_that_holds_the_address() {
    // Output address above a 32-bit IPS: fault at the leaf's level.
    let (mut b, mut r) = lower(Granule::K4, 25);
    r.tcr = r.tcr.with_ips(0b000);
    b.map(Gva(0x20_0000), Ipa(0x1_0000_0000), 2, LEAF_RW)
        .expect("map");
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x20_0000)));
    assert_eq!(f.fsc(), FaultStatusCode::AddressSize(2));

    // A next-level table above IPS: fault at the table descriptor's level, next table unread.
    let at = b.descriptor_ipa(Gva(0x4000_0000), 1, 0).expect("desc");
    b.write_descriptor(at, 0x2_0000_0000 | 0b11).expect("write");
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x4000_0000)));
    assert_eq!(f.fsc(), FaultStatusCode::AddressSize(1));
    assert_eq!(f.tables_touched.as_slice().len(), 1);

    // A TTBR base above IPS: level 0, nothing read.
    let mut r2 = r;
    r2.ttbr0 = Ttbr::from_bits(0x1_0000_0000);
    let f = fault_of(Walker::new(r2, b.ram()).translate(Gva(0x1000)));
    assert_eq!(f.fsc(), FaultStatusCode::AddressSize(0));
    assert!(f.tables_touched.as_slice().is_empty());
}

#[test]
fn leaf_checks_run_in_order_address_size_then_access_flag_then_permission() {
    let (mut b, mut r) = lower(Granule::K4, 16);
    r.tcr = r.tcr.with_ips(0b000);
    // AF=0, read-only, OA out of range: address size wins.
    b.map(Gva(0x1000), Ipa(0x1_0000_0000), 3, LEAF_READ_ONLY)
        .expect("map");
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x1000)));
    assert_eq!(f.kind, FaultKind::AddressSize);
    // AF=0 and read-only: the access flag fault wins.
    b.map(Gva(0x2000), Ipa(0x8000_0000), 3, LEAF_READ_ONLY)
        .expect("map");
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x2000)));
    assert_eq!(f.kind, FaultKind::AccessFlag);
}

#[test]
fn big_endian_tables_are_read_when_sctlr_ee_is_set() {
    let mut b =
        TableBuilder::new(GuestRam::new(), Granule::K4, 16, POOL, POOL_LEN, true).expect("builder");
    b.map(Gva(0x5000), Ipa(0x8765_4000), 3, LEAF_RW)
        .expect("map");
    let mut r = regs(tcr(Granule::K4, 16, 16), b.root(), Ipa(0));
    r.sctlr = r.sctlr.with_ee(true);
    let t = Walker::new(r, b.ram())
        .translate(Gva(0x5010))
        .expect("BE walk");
    assert_eq!(t.ipa, Ipa(0x8765_4010));
    r.sctlr = r.sctlr.with_ee(false);
    assert!(Walker::new(r, b.ram()).translate(Gva(0x5010)).is_err());
}

#[test]
fn vas_outside_both_ranges_fault_at_level_0_without_reading_a_table() {
    let (mut b, r) = lower(Granule::K4, 25);
    b.map(Gva(0x1000), Ipa(0x8000_0000), 3, LEAF_RW)
        .expect("map");
    let w = Walker::new(r, b.ram());
    for va in [1u64 << 39, 0x0080_0000_0000_1000, 0x0100_0000_0000_1000] {
        let f = fault_of(w.translate(Gva(va)));
        assert_eq!(f.fsc(), FaultStatusCode::Translation(0), "{va:#x}");
        assert_eq!(f.cause, FaultCause::VaOutsideRanges);
        assert!(f.tables_touched.as_slice().is_empty());
    }
}

#[test]
fn tbi_ignores_the_top_byte_but_bit_55_still_selects_the_ttbr() {
    let (mut b, mut r) = lower(Granule::K4, 16);
    b.map(Gva(0x1000), Ipa(0x8000_0000), 3, LEAF_RW)
        .expect("map");
    let tagged = Gva(0x5a00_0000_0000_1000);
    assert!(Walker::new(r, b.ram()).translate(tagged).is_err());
    r.tcr = r.tcr.with_tbi0(true);
    let t = Walker::new(r, b.ram()).translate(tagged).expect("TBI0");
    assert_eq!(t.ipa, Ipa(0x8000_0000));
    // Bit 55 set: TTBR1, which has EPD1 here.
    r.tcr = r.tcr.with_epd1(true);
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x5a80_0000_0000_1000)));
    assert_eq!(f.cause, FaultCause::VaOutsideRanges);
}

#[test]
fn epd_disables_walks_for_its_half_with_a_level_0_translation_fault() {
    let (mut b, mut r) = lower(Granule::K4, 16);
    b.map(Gva(0x1000), Ipa(0x8000_0000), 3, LEAF_RW)
        .expect("map");
    r.tcr = r.tcr.with_epd0(true);
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x1000)));
    assert_eq!(f.fsc(), FaultStatusCode::Translation(0));
    assert_eq!(f.cause, FaultCause::WalksDisabled { ttbr: 0 });
}

#[test]
fn absurd_txsz_faults_with_the_value_and_range_or_clamps_when_asked() {
    let (mut b, mut r) = lower(Granule::K4, 39);
    b.map(Gva(0x1000), Ipa(0x8000_0000), 3, LEAF_RW)
        .expect("map");
    r.tcr = r.tcr.with_t0sz(63);
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x1000)));
    assert_eq!(
        f.cause,
        FaultCause::TxSzOutOfRange {
            txsz: 63,
            min: 16,
            max: 39
        }
    );
    let clamp = WalkOptions {
        txsz_out_of_range: TxSzOutOfRange::Clamp,
        ..WalkOptions::default()
    };
    let t = Walker::with_options(r, clamp, b.ram()).translate(Gva(0x1000));
    assert_eq!(t.expect("clamped to 39").ipa, Ipa(0x8000_0000));
    r.tcr = r.tcr.with_t0sz(0).with_ds(false);
    let f = fault_of(Walker::new(r, b.ram()).translate(Gva(0x1000)));
    assert!(matches!(
        f.cause,
        FaultCause::TxSzOutOfRange {
            txsz: 0,
            min: 16,
            ..
        }
    ));
}

#[test]
fn a_table_pointing_at_itself_or_an_ancestor_is_refused_not_followed_forever() {
    let (mut b, r) = lower(Granule::K4, 16);
    // L0[0] -> root itself.
    b.write_descriptor(POOL, POOL.0 | 0b11).expect("write");
    let err = Walker::new(r, b.ram())
        .translate(Gva(0x1000))
        .expect_err("loop");
    assert!(matches!(err, WalkError::TableCycle { level: 0, table, .. } if table == POOL));

    // L1 -> root (an ancestor).
    let (mut b, r) = lower(Granule::K4, 16);
    let l1 = b.descriptor_ipa(Gva(0), 1, 0).expect("l1");
    b.write_descriptor(l1, POOL.0 | 0b11).expect("write");
    let err = Walker::new(r, b.ram()).translate(Gva(0)).expect_err("loop");
    assert!(
        matches!(err, WalkError::TableCycle { level: 1, .. }),
        "{err}"
    );

    // A recursive mapping, allowed on request, still ends after four levels.
    let opts = WalkOptions {
        allow_recursive_tables: true,
        ..WalkOptions::default()
    };
    let mut b2 = b.clone();
    b2.write_descriptor(POOL, POOL.0 | 0b11 | LEAF_AF)
        .expect("write");
    let res = Walker::with_options(r, opts, b2.ram()).translate(Gva(0));
    let t = res.expect("the root doubles as every level: L3 entry 0 is a page");
    assert_eq!(t.tables_touched.as_slice(), &[POOL; 4]);
}

#[test]
fn tables_outside_guest_memory_end_in_an_error_naming_the_ipa() {
    let (mut b, r) = lower(Granule::K4, 16);
    let l1 = b.descriptor_ipa(Gva(0), 1, 0).expect("l1");
    b.write_descriptor(l1, 0xf0_0000_0000 | 0b11)
        .expect("write");
    let err = Walker::new(r, b.ram())
        .translate(Gva(0))
        .expect_err("unbacked");
    match &err {
        WalkError::TableUnreadable {
            level, descriptor, ..
        } => {
            assert_eq!((*level, *descriptor), (2, Ipa(0xf0_0000_0000)));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("0xf000000000"), "{err}");
    assert_eq!(err.tables_touched().len(), 2);
}

#[test]
fn with_stage_1_disabled_the_ipa_is_the_va() {
    let (b, mut r) = lower(Granule::K4, 16);
    r.sctlr = r.sctlr.with_m(false);
    let w = Walker::new(r, b.ram());
    assert_eq!(
        w.translate(Gva(0x1234_5678)).expect("flat").ipa,
        Ipa(0x1234_5678)
    );
    assert_eq!(
        fault_of(w.translate(Gva(0xffff_0000_0000_0000))).fsc(),
        FaultStatusCode::AddressSize(0)
    );
}

#[test]
fn the_contiguous_hint_does_not_change_the_result() {
    let (mut b, r) = lower(Granule::K4, 16);
    b.map(
        Gva(0x1_0000),
        Ipa(0x8000_0000),
        3,
        LEAF_RW | LEAF_CONTIGUOUS,
    )
    .expect("map");
    let t = Walker::new(r, b.ram())
        .translate(Gva(0x1_0008))
        .expect("walk");
    assert_eq!((t.ipa, t.block_size), (Ipa(0x8000_0008), 0x1000));
}

#[test]
fn a_64k_granule_with_52_bit_output_takes_oa_51_48_from_bits_15_12() {
    let (mut b, mut r) = lower(Granule::K64, 22);
    r.tcr = r.tcr.with_ips(0b110);
    let at = b.descriptor_ipa(Gva(0x3_0000), 3, 0).expect("desc");
    b.write_descriptor(at, 0x0000_1234_5678_0000 | (0xa << 12) | 0b11 | LEAF_RW)
        .expect("write");
    let pa52 = WalkOptions {
        pa_bits: 52,
        ..WalkOptions::default()
    };
    let t = Walker::with_options(r, pa52, b.ram())
        .translate(Gva(0x3_0040))
        .expect("walk");
    assert_eq!(t.ipa, Ipa(0x000a_1234_5678_0040));
    // Without FEAT_LPA, the output is 48 bits and bits [15:12] are not address bits.
    let opts = WalkOptions {
        feat_lpa: false,
        ..pa52
    };
    let t = Walker::with_options(r, opts, b.ram())
        .translate(Gva(0x3_0040))
        .expect("walk");
    assert_eq!(t.ipa, Ipa(0x0000_1234_5678_0040));
}

#[test]
fn ds_1_with_4k_starts_at_level_minus_1_and_reads_oa_51_50_from_bits_9_8() {
    // T0SZ=12: 52-bit VA, start level -1 (16 entries). Build by hand.
    let mut ram = GuestRam::with_zeroed(POOL, 0x10_000).expect("ram");
    let t = |n: u64| POOL.0 + n * 0x1000;
    let va: u64 = 0x000f_0000_0000_3000;
    // Level -1 index: VA[51:48] = 0xf.
    ram.write_u64(Ipa(t(0) + 0xf * 8), t(1) | 0b11, false)
        .expect("w");
    ram.write_u64(Ipa(t(1)), t(2) | 0b11, false).expect("w");
    ram.write_u64(Ipa(t(2)), t(3) | 0b11, false).expect("w");
    ram.write_u64(Ipa(t(3)), t(4) | 0b11, false).expect("w");
    let leaf = 0x0003_0000_0000_0000 | 0x8000_0000 | (0b10 << 8) | 0b11 | LEAF_RW;
    ram.write_u64(Ipa(t(4) + 3 * 8), leaf, false).expect("w");
    let r = regs(
        tcr(Granule::K4, 12, 16).with_ds(true).with_ips(0b110),
        POOL,
        Ipa(0),
    );
    let pa52 = WalkOptions {
        pa_bits: 52,
        ..WalkOptions::default()
    };
    let tr = Walker::with_options(r, pa52, &ram)
        .translate(Gva(va + 4))
        .expect("walk");
    assert_eq!(tr.ipa, Ipa(0x000b_0000_8000_0004));
    assert_eq!(tr.tables_touched.as_slice().len(), 5);
    // On a 48-bit PA machine the same output is an address size fault at the leaf.
    let f = fault_of(Walker::new(r, &ram).translate(Gva(va + 4)));
    assert_eq!(f.fsc(), FaultStatusCode::AddressSize(3));
    // Without FEAT_LPA2, DS is ignored and T0SZ=12 is out of range.
    let opts = WalkOptions {
        feat_lpa2: false,
        ..pa52
    };
    let f = fault_of(Walker::with_options(r, opts, &ram).translate(Gva(va)));
    assert!(matches!(f.cause, FaultCause::TxSzOutOfRange { .. }));
}

/// Counts descriptor reads, to check that range walks share work.
struct Counting<'a> {
    ram: &'a GuestRam,
    reads: Cell<u64>,
}

impl GuestMemoryRead for Counting<'_> {
    type Error = UnbackedIpa;
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), UnbackedIpa> {
        self.ram.read(ipa, buf)
    }
    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], UnbackedIpa> {
        self.reads.set(self.reads.get() + 1);
        self.ram.read_descriptor(ipa)
    }
}

#[test]
fn a_range_walk_returns_scattered_pages_and_each_table_page_once_sharing_upper_levels() {
    let (mut b, r) = lower(Granule::K4, 16);
    let base = Gva(0xffff_0000_0000 - 0x10_0000); // crosses an L1 boundary half way
    let pages: Vec<Ipa> = (0..512u64)
        .map(|i| Ipa(0x8000_0000 + ((i * 7919) % 4096) * 0x1000))
        .collect();
    b.map_pages(base, pages.iter().copied(), LEAF_RW)
        .expect("map");
    let mem = Counting {
        ram: b.ram(),
        reads: Cell::new(0),
    };
    let w = Walker::new(r, &mem);
    let rt = w
        .translate_range(
            Gva(base.0 + 0x800),
            512 * 0x1000 - 0x800,
            RangeLimits::default(),
        )
        .expect("range");
    assert!(rt.fault.is_none());
    assert_eq!(rt.mapped_bytes(), 512 * 0x1000 - 0x800);
    assert_eq!(rt.ipa_pages(Granule::K4), pages);
    assert_eq!(rt.steps, 512);
    // Root, one L1, two L2 (the range crosses a 1GiB boundary? no: a 512MiB one stays in one
    // L2), and the L3 tables: each listed once.
    let mut distinct = rt.tables_touched.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), rt.tables_touched.len());
    assert_eq!(rt.tables_touched[0], POOL);
    // Per-page walks would read 4 descriptors a page; the shared walk about one.
    assert!(
        mem.reads.get() < 512 + 16,
        "{} descriptor reads",
        mem.reads.get()
    );
    // Every page's own walk agrees with the range walk.
    for (i, ipa) in pages.iter().enumerate() {
        let t = w.translate(Gva(base.0 + i as u64 * 0x1000)).expect("walk");
        assert_eq!(t.ipa, *ipa);
        for table in t.tables_touched.as_slice() {
            assert!(rt.tables_touched.contains(table));
        }
    }
}

#[test]
fn a_range_walk_across_a_last_level_table_boundary_walks_the_next_table() {
    // Eight pages from 16 KiB below a 2 MiB boundary: the last four are in the next L3 table
    // (same L2 table). A range walk resumes neighbours at their shared L3 table; across the
    // boundary it must not.
    let (mut b, r) = lower(Granule::K4, 16);
    let base = Gva(0x40_0000 - 0x4000);
    let pages: Vec<Ipa> = (0..8u64)
        .map(|i| Ipa(0x9000_0000 + (7 - i) * 0x3000))
        .collect();
    b.map_pages(base, pages.iter().copied(), LEAF_RW)
        .expect("map");
    let w = Walker::new(r, b.ram());
    let rt = w
        .translate_range(base, 8 * 0x1000, RangeLimits::default())
        .expect("range");
    assert!(rt.fault.is_none());
    assert_eq!(rt.ipa_pages(Granule::K4), pages);
    for (i, ipa) in pages.iter().enumerate() {
        let t = w.translate(Gva(base.0 + i as u64 * 0x1000)).expect("walk");
        assert_eq!(t.ipa, *ipa, "page {i}");
    }
    // Both L3 tables are listed.
    let l3: Vec<_> = (0..8u64)
        .map(|i| {
            w.translate(Gva(base.0 + i * 0x1000))
                .expect("walk")
                .tables_touched
                .as_slice()[3]
        })
        .collect();
    assert_ne!(l3[3], l3[4]);
    assert!(rt.tables_touched.contains(&l3[3]) && rt.tables_touched.contains(&l3[4]));
}

#[test]
fn a_range_walk_stops_at_the_first_fault_and_reports_its_va() {
    let (mut b, r) = lower(Granule::K4, 16);
    b.map_pages(
        Gva(0x10_0000),
        (0..3).map(|i| Ipa(0x9000_0000 + i * 0x1000)),
        LEAF_RW,
    )
    .expect("map");
    let rt = Walker::new(r, b.ram())
        .translate_range(Gva(0x10_0000), 0x8000, RangeLimits::default())
        .expect("range");
    assert_eq!(rt.runs.len(), 1, "three contiguous IPAs merge into one run");
    assert_eq!(rt.mapped_bytes(), 0x3000);
    let f = rt.fault.expect("fault");
    assert_eq!(
        (f.va, f.fsc()),
        (Gva(0x10_3000), FaultStatusCode::Translation(3))
    );
}

#[test]
fn a_huge_guest_range_is_refused_by_the_step_limit() {
    let (mut b, r) = lower(Granule::K4, 16);
    for i in 0..64u64 {
        b.map(Gva(i << 21), Ipa(0x8000_0000 + (i << 21)), 2, LEAF_RW)
            .expect("map");
    }
    let w = Walker::new(r, b.ram());
    let blocks = w
        .translate_range(Gva(0), 64 << 21, RangeLimits { max_steps: 64 })
        .expect("64 blocks, 64 steps");
    assert_eq!(blocks.runs.len(), 1);
    let err = w
        .translate_range(Gva(0), u64::MAX, RangeLimits { max_steps: 64 })
        .expect_err("too large");
    assert!(matches!(err, WalkError::RangeTooLarge { .. }), "{err}");
}

#[test]
fn the_step_limit_counts_every_page_a_range_walk_reads_in_one_last_level_table() {
    // Pages after the first in a last-level table are one descriptor read each in the range
    // walk's inner loop: each is still a step against the limit.
    let (mut b, r) = lower(Granule::K4, 16);
    b.map_pages(
        Gva(0x40_0000),
        (0..64u64).map(|i| Ipa(0x8000_0000 + i * 0x3000)),
        LEAF_RW,
    )
    .expect("map");
    let w = Walker::new(r, b.ram());
    let all = w
        .translate_range(Gva(0x40_0000), 64 << 12, RangeLimits { max_steps: 64 })
        .expect("64 pages, 64 steps");
    assert_eq!(
        (all.steps, all.runs.len(), all.mapped_bytes()),
        (64, 64, 64 << 12)
    );
    let err = w
        .translate_range(Gva(0x40_0000), 64 << 12, RangeLimits { max_steps: 63 })
        .expect_err("one step short");
    assert!(
        matches!(err, WalkError::RangeTooLarge { max_steps: 63, .. }),
        "{err}"
    );
}

#[test]
fn the_output_address_limit_is_the_smaller_of_ips_and_pamax() {
    // Issue 15: the limit was min(IPS, 48|52), so a 40- or 44-bit PA machine could not be
    // modelled. IPS says 48 bits; PAMax 40 refuses an output at 2^40 with an address size
    // fault at the leaf (pseudocode AArch64.PhysicalAddressSize: Min(IPS, PAMax())).
    let (mut b, mut r) = lower(Granule::K4, 16);
    r.tcr = r.tcr.with_ips(0b101);
    b.map(Gva(0x1000), Ipa(1 << 40), 3, LEAF_RW).expect("map");
    b.map(Gva(0x2000), Ipa((1 << 40) - 0x1000), 3, LEAF_RW)
        .expect("map");
    for (pa_bits, above) in [(40u8, false), (44, true), (48, true)] {
        let opts = WalkOptions {
            pa_bits,
            ..WalkOptions::default()
        };
        let w = Walker::with_options(r, opts, b.ram());
        match w.translate(Gva(0x1000)) {
            Ok(t) => assert!(above, "{pa_bits} bits: {t:?}"),
            Err(e) => {
                assert!(!above, "{pa_bits} bits: {e:?}");
                assert_eq!(fault_of(Err(e)).fsc(), FaultStatusCode::AddressSize(3));
            }
        }
        assert_eq!(
            w.translate(Gva(0x2000)).expect("below 2^40").ipa,
            Ipa((1 << 40) - 0x1000)
        );
    }
}

mod plain_walk_agrees {
    //! `translate` answers the common walk on a fast path (`walk_plain`) and everything else
    //! with the full walk (`walk_from`): on hostile tables, where walks loop, fault, meet
    //! blocks and read-only leaves, the two must give the same answer for every VA.
    use super::*;
    use proptest::prelude::*;

    /// Descriptors mostly pointing back into a 16-page region, with random low bits (AF, AP,
    /// valid, table) and APTable: deep walks, loops and every kind of leaf.
    fn soup(words: &[u64], base: u64) -> GuestRam {
        let mut bytes = Vec::with_capacity(words.len() * 8);
        for (i, w) in words.iter().enumerate() {
            let d = if w % 5 == 0 {
                *w
            } else {
                (base + (w >> 8) % 16 * 0x1000) | (w & 0xfff) | ((i as u64 & 1) << 62)
            };
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        let mut ram = GuestRam::new();
        ram.insert(Ipa(base), bytes).expect("region");
        ram
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_fast_walk_and_the_full_walk_agree_on_any_tables(
            words in prop::collection::vec(any::<u64>(), 16 * 512),
            vas in prop::collection::vec(any::<u64>(), 32),
            recursive in any::<bool>(),
            hierarchical_off in any::<bool>(),
            // 48-bit VAs start at level 0 (the unrolled walk), 39-bit ones at level 1.
            t0sz in prop::sample::select(vec![16u8, 25]),
        ) {
            let base = 0x4000_0000u64;
            let ram = soup(&words, base);
            let mut tcr = tcr(Granule::K4, t0sz, 16);
            if hierarchical_off {
                tcr = tcr.with_hpd0(true);
            }
            let r = regs(tcr, Ipa(base), Ipa(base + 0x1000));
            let options = WalkOptions { allow_recursive_tables: recursive, ..WalkOptions::default() };
            let w = Walker::with_options(r, options, &ram);
            for va in vas.iter().map(|v| v & ((1u64 << (64 - t0sz)) - 1)) {
                let va = Gva(va);
                let fast = w.translate(va);
                let full = match w.params(va) {
                    Err(f) => Err(WalkError::Fault(f)),
                    Ok(None) => w.flat(va),
                    Ok(Some(p)) => w.walk_from(va, p, WalkState::root(p), None, None),
                };
                prop_assert_eq!(format!("{fast:?}"), format!("{full:?}"));
                // The range walk's recording walk: same answer, same state at every level.
                if let Ok(Some(p)) = w.params(va) {
                    let (mut plain_states, mut full_states) = (WalkPath::default(), WalkPath::default());
                    let plain = w.walk_plain(va, p, WalkState::root(p), Some(&mut plain_states));
                    let full = w.walk_from(va, p, WalkState::root(p), Some(&mut full_states), None);
                    prop_assert_eq!(format!("{plain:?}"), format!("{full:?}"));
                    prop_assert_eq!(format!("{plain_states:?}"), format!("{full_states:?}"));
                }
            }
        }
    }

    #[test]
    fn the_fast_walk_answers_an_ordinary_mapping() {
        let (mut b, r) = lower(Granule::K4, 16);
        let va = Gva(0x7f00_0000_0000);
        b.map_pages(va, (0..4).map(|i| Ipa(0x8000_0000 + i * 0x1000)), LEAF_RW)
            .expect("map");
        let ram = b.ram();
        let w = Walker::new(r, &ram);
        let p = w.params(va).expect("params").expect("stage 1 on");
        let t = w
            .walk_plain(Gva(va.0 + 0x1040), p, WalkState::root(p), None)
            .expect("the walk answers");
        assert_eq!(t.ipa, Ipa(0x8000_1040));
        assert_eq!(t.tables_touched.as_slice().len(), 4);
        let full = w
            .walk_from(Gva(va.0 + 0x1040), p, WalkState::root(p), None, None)
            .expect("walk");
        assert_eq!(format!("{t:?}"), format!("{full:?}"));
    }
}

#[test]
fn a_walk_that_leaves_the_fast_path_reads_each_descriptor_once() {
    // A block at level 2, a read-only page and an access-flag-clear page: the fast walk reads
    // down to them and hands over to the full walk with the descriptor in hand; no descriptor
    // is read twice (on shared memory a second read could see another value).
    let (mut b, r) = lower(Granule::K4, 16);
    let block = Gva(0x40_0000_0000);
    b.map(block, Ipa(0x8020_0000), 2, LEAF_RW).expect("block");
    let ro = Gva(0x50_0000_0000);
    b.map(ro, Ipa(0x8000_0000), 3, LEAF_RW | (1 << 7))
        .expect("read-only page");
    let no_af = Gva(0x60_0000_0000);
    b.map(no_af, Ipa(0x8000_1000), 3, LEAF_RW & !(1 << 10))
        .expect("AF clear");
    let mem = Counting {
        ram: b.ram(),
        reads: Cell::new(0),
    };
    let w = Walker::new(r, &mem);
    for (va, reads, ok) in [(block, 3, true), (ro, 4, false), (no_af, 4, false)] {
        mem.reads.set(0);
        let t = w.translate(Gva(va.0 + 0x40));
        assert_eq!(t.is_ok(), ok, "{va}: {t:?}");
        assert_eq!(mem.reads.get(), reads, "{va}: each descriptor once");
    }
}
