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

/// A guest in real memory: RAM in a [`spe_host_linux::LinuxGuestRam`], kernel tables at the
/// start of RAM, and a buffer of `buffer_pages` scattered 4 KiB pages vmap'd at
/// [`REAL_BUFFER_VA`].
#[derive(Debug)]
pub struct RealGuest {
    /// Guest RAM and host backing in one.
    pub ram: spe_host_linux::LinuxGuestRam,
    /// The guest's stage 1 registers.
    pub stage1: Stage1Regs,
    /// The buffer's IPA pages in VA order.
    pub buffer_pages: Vec<Ipa>,
    _dir: tempfile::TempDir,
}

/// Where [`RealGuest`]'s RAM starts.
pub const REAL_RAM: Ipa = Ipa(0x4000_0000);
/// The buffer's VA.
pub const REAL_BUFFER_VA: Gva = Gva(0xffff_8000_8000_0000);

impl RealGuest {
    /// `ram_bytes` of guest RAM (a multiple of 2 MiB, at least 8 MiB) with a buffer of
    /// `buffer_pages` pages, backed by a file in the cargo target directory.
    pub fn new(ram_bytes: u64, buffer_pages: u64) -> Self {
        // On the project's disk (a tmpfs file could not be paged out without swap).
        let base =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-guest-ram");
        std::fs::create_dir_all(&base).expect("bench guest RAM directory");
        let dir = tempfile::tempdir_in(&base).expect("bench tmp dir");
        let ram = spe_host_linux::LinuxGuestRam::new(REAL_RAM, ram_bytes as usize, dir.path())
            .expect("guest RAM");
        let mut b = TableBuilder::new(GuestRam::new(), Granule::K4, 16, REAL_RAM, 4 << 20, false)
            .expect("tables");
        // Buffer pages from the upper half of RAM, scattered with a stride coprime to the count.
        let pool = REAL_RAM.0 + ram_bytes / 2;
        let slots = ram_bytes / 2 / 0x1000;
        let pages: Vec<Ipa> = (0..buffer_pages)
            .map(|i| Ipa(pool + ((i * 7919) % slots) * 0x1000))
            .collect();
        b.map_pages(REAL_BUFFER_VA, pages.iter().copied(), LEAF_RW)
            .expect("buffer mapping");
        let tables = b.into_ram();
        for (base, len) in tables.regions() {
            let bytes = tables.slice(base, len as usize).expect("tables");
            spe_policy::HostBacking::write_guest(&ram, base, bytes).expect("load tables");
        }
        let stage1 = Stage1Regs::linux_kernel_4k(REAL_RAM);
        RealGuest {
            ram,
            stage1,
            buffer_pages: pages,
            _dir: dir,
        }
    }

    /// The memslot of the RAM.
    pub fn memslots(&self) -> [spe_policy::Memslot; 1] {
        [spe_policy::Memslot {
            slot: 0,
            range: self.ram.range(),
        }]
    }

    /// A trapped PMBLIMITR write enabling `len` bytes of the buffer.
    pub fn enable(&self, len: u64) -> spe_policy::Event<'static> {
        use spe_policy::arch::{BufferMode, Pmblimitr, Pmbptr};
        spe_policy::Event::BufferWrite {
            vcpu: spe_policy::VcpuId(0),
            reg: spe_policy::BufferReg::Pmblimitr,
            regs: spe_policy::BufferRegs {
                pmbptr: Pmbptr::from_bits(REAL_BUFFER_VA.0),
                pmblimitr: Pmblimitr::for_buffer(
                    Gva(REAL_BUFFER_VA.0 + len),
                    true,
                    BufferMode::Fill,
                ),
                pmbsr: Default::default(),
            },
            stage1: self.stage1,
        }
    }

    /// A trapped PMBLIMITR write disabling the buffer.
    pub fn disable(&self) -> spe_policy::Event<'static> {
        spe_policy::Event::BufferWrite {
            vcpu: spe_policy::VcpuId(0),
            reg: spe_policy::BufferReg::Pmblimitr,
            regs: spe_policy::BufferRegs::default(),
            stage1: self.stage1,
        }
    }

    /// A stage 2 translation fault at `offset` into the buffer, DL=0.
    pub fn stage2_fault(&self, offset: u64, len: u64) -> spe_policy::Event<'static> {
        use spe_policy::arch::{
            BufferEvent, BufferMode, FaultStatusCode, Pmblimitr, Pmbptr, Stage,
        };
        let pmbsr = BufferEvent::fault(Stage::Two, FaultStatusCode::Translation(3), false).encode();
        spe_policy::Event::BufferManagement {
            vcpu: spe_policy::VcpuId(0),
            regs: spe_policy::BufferRegs {
                pmbptr: Pmbptr::from_bits(REAL_BUFFER_VA.0 + offset),
                pmblimitr: Pmblimitr::for_buffer(
                    Gva(REAL_BUFFER_VA.0 + len),
                    true,
                    BufferMode::Fill,
                ),
                pmbsr,
            },
            stage1: self.stage1,
        }
    }
}

/// The three strategies, configured for benchmarks (pin-buffer's cap raised to 128 MiB so
/// 64 MiB buffers fit).
pub fn strategies() -> Vec<spe_policies::Policy> {
    use spe_policies::{
        FaultTranslateConfig, PinAllConfig, PinBufferConfig, Policy, StrategyConfig,
    };
    vec![
        Policy::new(StrategyConfig::PinAll(PinAllConfig::default())),
        Policy::new(StrategyConfig::PinBuffer(PinBufferConfig {
            cap_bytes_per_vcpu: 128 << 20,
            ..PinBufferConfig::default()
        })),
        Policy::new(StrategyConfig::FaultTranslate(
            FaultTranslateConfig::default(),
        )),
    ]
}
