//! Property tests: whatever a guest puts in its tables and registers, the walker returns a
//! translation, a fault or a typed error; it never panics, loops or reads unboundedly.

use std::cell::Cell;

use proptest::prelude::*;
use spe_policy::arch::walk::{RangeLimits, Stage1Regs, WalkError, WalkOptions, Walker};
use spe_policy::arch::{Sctlr, Tcr, Ttbr};
use spe_policy::guest_memory::{GuestMemoryRead, UnbackedIpa};
use spe_policy::{GuestRam, Gva, Ipa};

/// Guest memory that counts descriptor reads.
struct Counting {
    ram: GuestRam,
    reads: Cell<u64>,
}

impl GuestMemoryRead for Counting {
    type Error = UnbackedIpa;
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), UnbackedIpa> {
        self.ram.read(ipa, buf)
    }
    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], UnbackedIpa> {
        self.reads.set(self.reads.get() + 1);
        self.ram.read_descriptor(ipa)
    }
}

/// Random bytes whose descriptors mostly point back into the same small region, so walks go
/// deep and loop often.
fn hostile_ram(seed_words: &[u64], base: u64) -> GuestRam {
    let mut bytes = Vec::with_capacity(seed_words.len() * 8);
    for (i, w) in seed_words.iter().enumerate() {
        let d = if w % 3 == 0 {
            *w
        } else {
            // A table or page descriptor pointing at one of the region's pages.
            (base + (w >> 8) % 16 * 0x1000) | (w & 0xfff) | 0b11 | ((i as u64 & 1) << 62)
        };
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    let mut ram = GuestRam::new();
    ram.insert(Ipa(base), bytes).expect("region");
    ram
}

/// Registers for range walks over `hostile_ram` at `base`: a valid-ish TCR (random low bits,
/// 39-bit VAs) so walks get somewhere.
fn range_regs(base: u64, tcr_low: u32) -> Stage1Regs {
    let tcr = Tcr::from_bits(u64::from(tcr_low) & 0x7fff_ffff)
        .with_t0sz(25)
        .with_t1sz(25);
    Stage1Regs {
        tcr,
        ttbr0: Ttbr::from_bits(base),
        ttbr1: Ttbr::from_bits(base + 0x1000),
        sctlr: Sctlr::new().with_m(true),
        hw_af: true,
        hw_dbm: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_tables_and_registers_never_panic_and_read_at_most_five_descriptors(
        words in prop::collection::vec(any::<u64>(), 16 * 512),
        tcr in any::<u64>(),
        ttbr_page in 0u64..20,
        ttbr_low in any::<u64>(),
        sctlr in any::<u64>(),
        vas in prop::collection::vec(any::<u64>(), 16),
        recursive in any::<bool>(),
        hw in any::<bool>(),
    ) {
        let base = 0x4000_0000;
        let mem = Counting { ram: hostile_ram(&words, base), reads: Cell::new(0) };
        let ttbr = (base + ttbr_page * 0x1000) | (ttbr_low & 0xffff_0000_0000_0fff);
        let regs = Stage1Regs {
            tcr: Tcr::from_bits(tcr),
            ttbr0: Ttbr::from_bits(ttbr),
            ttbr1: Ttbr::from_bits(ttbr ^ 0x1000),
            sctlr: Sctlr::from_bits(sctlr | 1),
            hw_af: hw,
            hw_dbm: hw,
        };
        let opts = WalkOptions { allow_recursive_tables: recursive, ..WalkOptions::default() };
        let w = Walker::with_options(regs, opts, &mem);
        for va in vas {
            mem.reads.set(0);
            let r = w.translate(Gva(va));
            prop_assert!(mem.reads.get() <= 5, "{} reads", mem.reads.get());
            if let Ok(t) = r {
                prop_assert!(t.block_size.is_power_of_two());
                prop_assert_eq!(t.ipa.0 & (t.block_size - 1), va & (t.block_size - 1));
            }
        }
    }

    #[test]
    fn random_range_walks_finish_within_their_step_limit(
        words in prop::collection::vec(any::<u64>(), 16 * 512),
        tcr_low in any::<u32>(),
        start in any::<u64>(),
        len in any::<u64>(),
    ) {
        let base = 0x4000_0000;
        let ram = hostile_ram(&words, base);
        let w = Walker::new(range_regs(base, tcr_low), &ram);
        let limits = RangeLimits { max_steps: 4096 };
        match w.translate_range(Gva(start), len, limits) {
            Ok(r) => {
                prop_assert!(r.steps <= 4096);
                let mut va = start;
                for run in &r.runs {
                    prop_assert_eq!(run.va.0, va, "runs are contiguous from the start");
                    va += run.len;
                }
                if let Some(f) = r.fault {
                    prop_assert_eq!(f.va.0, va, "the fault follows the last run");
                }
            }
            Err(WalkError::RangeTooLarge { .. })
            | Err(WalkError::TableCycle { .. })
            | Err(WalkError::TableUnreadable { .. }) => {}
            Err(WalkError::Fault(f)) => prop_assert!(false, "range faults are data: {}", f),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_range_walk_translates_every_page_as_single_walks_do_on_any_tables(
        words in prop::collection::vec(any::<u64>(), 16 * 512),
        start_page in 0u64..4096,
        pages in 1u64..64,
        tcr_low in any::<u32>(),
    ) {
        // The range walk resumes at a neighbour's last-level table: it must give, page by page,
        // the single walk's IPA, the same first fault, and the same table pages.
        let base = 0x4000_0000;
        let ram = hostile_ram(&words, base);
        let opts = WalkOptions { allow_recursive_tables: true, ..WalkOptions::default() };
        let w = Walker::with_options(range_regs(base, tcr_low), opts, &ram);
        let start = start_page * 0x1000;
        let Ok(r) = w.translate_range(Gva(start), pages * 0x1000, RangeLimits::default()) else {
            return Ok(());
        };
        let mut tables = std::collections::BTreeSet::new();
        let mut va = start;
        for run in &r.runs {
            let mut off = 0;
            while off < run.len {
                let t = w.translate(Gva(va)).expect("a page the range walk mapped");
                prop_assert_eq!(t.ipa.0, run.ipa.0 + off, "VA {:#x}", va);
                tables.extend(t.tables_touched.as_slice().iter().copied());
                let step = 0x1000 - (va & 0xfff);
                off += step;
                va += step;
            }
        }
        if let Some(f) = &r.fault {
            match w.translate(Gva(va)) {
                Err(WalkError::Fault(g)) => {
                    prop_assert_eq!(g.fsc(), f.fsc());
                    tables.extend(g.tables_touched.as_slice().iter().copied());
                }
                other => prop_assert!(false, "range fault {} but single walk {:?}", f, other),
            }
        }
        let range_tables: std::collections::BTreeSet<_> = r.tables_touched.iter().copied().collect();
        prop_assert_eq!(range_tables, tables);
    }
}
