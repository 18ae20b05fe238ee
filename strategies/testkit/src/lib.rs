//! Test fixtures shared by the strategy crates: a Linux-like guest whose SPE buffer is vmap'd
//! from scattered pages, builders for the events a VMM delivers, and a stress harness that runs
//! many threads of mixed events against a strategy and checks the pin invariants.
#![deny(missing_docs)]

use std::sync::Barrier;
use std::time::{Duration, Instant};

use spe_host_model::Stage2Model;
use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::arch::{BufferEvent, BufferMode, FaultStatusCode, Pmblimitr, Pmbptr, Stage};
use spe_policy::event::{BufferReg, BufferRegs, Event, InvalidationCause};
use spe_policy::{BackingStrategy, Granule, GuestRam, Gva, Ipa, IpaRange, Memslot, VcpuId};

/// Guest RAM: 16 MiB at 0x4000_0000.
pub const RAM: IpaRange = IpaRange::new(Ipa(0x4000_0000), 16 << 20);
/// Where the guest's kernel page tables live (inside RAM).
pub const TABLES: Ipa = Ipa(0x4000_0000);
/// Where the buffer's pages come from (inside RAM).
pub const BUFFER_POOL: Ipa = Ipa(0x4080_0000);
/// The buffer's kernel VA (vmalloc area, TTBR1).
pub const BUFFER_VA: Gva = Gva(0xffff_8000_8000_0000);

/// The memslots of the fixture.
pub fn memslots() -> [Memslot; 1] {
    [Memslot {
        slot: 0,
        range: RAM,
    }]
}

/// A guest with a buffer of `pages` 4KB pages vmap'd at [`BUFFER_VA`] from scattered pages.
#[derive(Debug, Clone)]
pub struct GuestFixture {
    /// Guest memory (RAM, with the tables written into it).
    pub ram: GuestRam,
    /// Its stage 1 registers.
    pub stage1: Stage1Regs,
    /// The IPA of each buffer page, in VA order.
    pub buffer_pages: Vec<Ipa>,
    /// The guest's stage 1 granule (its page size).
    pub granule: Granule,
    /// Where the buffer starts: [`BUFFER_VA`] with 4 KiB pages; with larger granules 1000
    /// pages further, so its leaf descriptors lie past the first 4 KiB of their table (where
    /// a host that aligns a 16 or 64 KiB table down to a 4 KiB page would miss them).
    pub va: Gva,
}

impl GuestFixture {
    /// The fixture with a buffer of `pages` 4 KiB pages (at most 1024).
    pub fn new(pages: u64) -> Self {
        Self::with_granule(Granule::K4, pages)
    }

    /// The fixture with a `granule` stage 1 (4, 16 or 64 KiB, TTBR1 with 48-bit VAs) and a
    /// buffer of `pages` guest pages scattered over the upper 8 MiB of RAM (at most 8 MiB /
    /// (2 x granule) pages).
    pub fn with_granule(granule: Granule, pages: u64) -> Self {
        let mut ram = GuestRam::new();
        ram.insert(RAM.start, vec![0; RAM.len as usize])
            .expect("RAM");
        // The table pool lives inside RAM: build the tables in a scratch memory, then copy.
        let mut b = TableBuilder::new(GuestRam::new(), granule, 16, TABLES, 0x10_0000, false)
            .expect("tables");
        let slots = (8 << 20) / (2 * granule.size());
        let buffer_pages: Vec<Ipa> = (0..pages)
            .map(|i| Ipa(BUFFER_POOL.0 + ((i * 37) % slots) * 2 * granule.size()))
            .collect();
        let va = if granule == Granule::K4 {
            BUFFER_VA
        } else {
            Gva(BUFFER_VA.0 + 1000 * granule.size())
        };
        b.map_pages(va, buffer_pages.iter().copied(), LEAF_RW)
            .expect("map");
        let tables = b.into_ram();
        for (base, len) in tables.regions() {
            let bytes = tables.slice(base, len as usize).expect("tables").to_vec();
            ram.write(base, &bytes).expect("copy tables");
        }
        let mut stage1 = Stage1Regs::linux_kernel_4k(TABLES);
        stage1.tcr = stage1
            .tcr
            .with_tg1(spe_policy::arch::Tcr::tg1_bits(granule));
        GuestFixture {
            ram,
            stage1,
            buffer_pages,
            granule,
            va,
        }
    }

    /// The stage 2 model for this guest (4KB host pages, every page present).
    pub fn host(&self) -> Stage2Model {
        Stage2Model::new(Granule::K4, &memslots())
    }

    /// The stage 2 model with host pages of `granule`.
    pub fn host_with(&self, granule: Granule) -> Stage2Model {
        Stage2Model::new(granule, &memslots())
    }

    /// The IPA of the leaf descriptor that maps buffer page `n` (what the SPU's walk reads
    /// last).
    pub fn leaf_descriptor(&self, n: u64) -> Ipa {
        use spe_policy::arch::walk::Walker;
        Walker::new(self.stage1, &self.ram)
            .translate(Gva(self.va.0 + n * self.granule.size()))
            .expect("walk")
            .leaf_descriptor
            .expect("a leaf")
    }

    /// The IPAs of the table pages that translate the buffer (root first).
    pub fn table_pages(&self) -> Vec<Ipa> {
        use spe_policy::arch::walk::{RangeLimits, Walker};
        let len = self.buffer_pages.len() as u64 * 0x1000;
        Walker::new(self.stage1, &self.ram)
            .translate_range(self.va, len, RangeLimits::default())
            .expect("walk")
            .tables_touched
    }

    /// A trapped PMBLIMITR write that enables the buffer window `offset..offset + len` bytes
    /// into the buffer.
    pub fn enable(&self, vcpu: u32, offset: u64, len: u64) -> Event<'static> {
        Event::BufferWrite {
            vcpu: VcpuId(vcpu),
            reg: BufferReg::Pmblimitr,
            regs: window_regs(Gva(self.va.0 + offset), Gva(self.va.0 + offset + len), true),
            stage1: self.stage1,
        }
    }

    /// A trapped PMBLIMITR write that disables the buffer.
    pub fn disable(&self, vcpu: u32) -> Event<'static> {
        Event::BufferWrite {
            vcpu: VcpuId(vcpu),
            reg: BufferReg::Pmblimitr,
            regs: BufferRegs::default(),
            stage1: self.stage1,
        }
    }

    /// A stage 2 translation fault at `offset` into the buffer, with DL as given.
    pub fn stage2_fault(
        &self,
        vcpu: u32,
        offset: u64,
        limit: u64,
        data_loss: bool,
    ) -> Event<'static> {
        let pmbsr =
            BufferEvent::fault(Stage::Two, FaultStatusCode::Translation(3), data_loss).encode();
        let mut regs = window_regs(Gva(self.va.0 + offset), Gva(self.va.0 + limit), true);
        regs.pmbsr = pmbsr;
        Event::BufferManagement {
            vcpu: VcpuId(vcpu),
            regs,
            stage1: self.stage1,
        }
    }

    /// Writes SPE bytes into the buffer at `offset` (through the VA->IPA mapping).
    pub fn write_buffer(&mut self, offset: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let at = offset + i as u64;
            let page = self.buffer_pages[(at / 0x1000) as usize];
            self.ram
                .write(Ipa(page.0 + at % 0x1000), &[*b])
                .expect("buffer write");
        }
    }
}

/// Buffer registers for a window `ptr..limit`.
pub fn window_regs(ptr: Gva, limit: Gva, enabled: bool) -> BufferRegs {
    BufferRegs {
        pmbptr: Pmbptr::from_bits(ptr.0),
        pmblimitr: Pmblimitr::for_buffer(limit, enabled, BufferMode::Fill),
        pmbsr: Default::default(),
    }
}

/// Runs `threads` threads, each sending `rounds` rounds of mixed events (enable, retarget,
/// faults, invalidations, dirty-log rounds, disable) for its own vCPU, all sharing one buffer
/// region; then stops the VM. Returns the elapsed time; panics if a strategy call errors or the
/// run exceeds `deadline` (a deadlock).
pub fn stress<S: BackingStrategy>(
    strategy: &S,
    fixture: &GuestFixture,
    host: &Stage2Model,
    threads: u32,
    rounds: u32,
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    let slots = memslots();
    strategy
        .on_event(&Event::VmStart { memslots: &slots }, &fixture.ram, host)
        .expect("VM start");
    let barrier = Barrier::new(threads as usize);
    let buffer_len = fixture.buffer_pages.len() as u64 * 0x1000;
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for r in 0..rounds {
                    assert!(
                        start.elapsed() < deadline,
                        "stress run exceeded {deadline:?}: deadlock?"
                    );
                    let off = (u64::from(t * 7 + r * 3) % 8) * 0x1000;
                    let len = (buffer_len - off).min(0x8000);
                    let events = [
                        fixture.enable(t, off, len),
                        fixture.enable(t, off + 0x1000, len - 0x1000),
                        fixture.stage2_fault(t, off + 0x1000, off + len, r % 2 == 0),
                        Event::HostInvalidation {
                            range: IpaRange::new(fixture.buffer_pages[(r % 4) as usize], 0x1000),
                            cause: InvalidationCause::Swap,
                        },
                        Event::DirtyLogStart,
                        Event::DirtyLogClear(RAM),
                        Event::DirtyLogStop,
                        fixture.disable(t),
                    ];
                    for ev in &events {
                        strategy
                            .on_event(ev, &fixture.ram, host)
                            .unwrap_or_else(|e| panic!("thread {t} round {r}: {e}"));
                    }
                }
            });
        }
    });
    strategy
        .on_event(&Event::VmStop, &fixture.ram, host)
        .expect("VM stop");
    start.elapsed()
}

/// A host whose guest-memory writes land in a copy of the guest's RAM (the stage 2 model
/// decides whether they may), so tests can read back what a strategy copied.
#[derive(Debug)]
pub struct RamHost {
    /// The stage 2 model.
    pub model: Stage2Model,
    /// The guest RAM the writes land in.
    pub ram: parking_lot::Mutex<GuestRam>,
}

impl RamHost {
    /// A host over `fixture`'s RAM with every page present.
    pub fn new(fixture: &GuestFixture) -> Self {
        RamHost {
            model: fixture.host(),
            ram: parking_lot::Mutex::new(fixture.ram.clone()),
        }
    }

    /// `len` bytes of the buffer from `offset`, read through the fixture's VA->IPA mapping.
    pub fn buffer_bytes(&self, fixture: &GuestFixture, offset: u64, len: u64) -> Vec<u8> {
        let ram = self.ram.lock();
        (offset..offset + len)
            .map(|at| {
                let page = fixture.buffer_pages[(at / 0x1000) as usize];
                ram.slice(Ipa(page.0 + at % 0x1000), 1).map_or(0, |b| b[0])
            })
            .collect()
    }
}

impl spe_policy::HostBacking for RamHost {
    fn granule(&self) -> spe_policy::host::HostGranule {
        self.model.granule()
    }
    fn pin(&self, range: IpaRange) -> Result<(), spe_policy::HostError> {
        self.model.pin(range)
    }
    fn unpin(&self, range: IpaRange) -> Result<(), spe_policy::HostError> {
        self.model.unpin(range)
    }
    fn fault_in(&self, ipa: Ipa) -> Result<spe_policy::host::FaultIn, spe_policy::HostError> {
        self.model.fault_in(ipa)
    }
    fn page_state(&self, ipa: Ipa) -> spe_policy::host::PageState {
        self.model.page_state(ipa)
    }
    fn set_dirty_log_exempt(
        &self,
        range: IpaRange,
        exempt: bool,
    ) -> Result<(), spe_policy::HostError> {
        self.model.set_dirty_log_exempt(range, exempt)
    }
    fn send_before_switchover(&self, range: IpaRange) -> Result<(), spe_policy::HostError> {
        self.model.send_before_switchover(range)
    }
    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), spe_policy::HostError> {
        self.model.write_guest(ipa, bytes)?;
        self.ram
            .lock()
            .write(ipa, bytes)
            .map_err(|e| spe_policy::HostError::Other(e.to_string()))
    }
    fn inject(
        &self,
        vcpu: VcpuId,
        pmbsr: spe_policy::arch::Pmbsr,
        pmbptr: Pmbptr,
    ) -> Result<(), spe_policy::HostError> {
        self.model.inject(vcpu, pmbsr, pmbptr)
    }
    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), spe_policy::HostError> {
        self.model.disable_spe(vcpu)
    }
}
