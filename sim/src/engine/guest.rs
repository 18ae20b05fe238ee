//! The simulated guest: RAM, a Linux-like kernel stage 1 with each vCPU's AUX buffer vmap'd
//! from scattered pages (spec sheet §4.1), real SPE records, and a seeded generator.

use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::{Granule, GuestRam, Gva, Ipa};

use super::SimError;

/// Where the simulated RAM starts.
pub const RAM_BASE: Ipa = Ipa(0x4000_0000);
/// The simulated RAM: the guest's tables and buffers live in it.
pub const SIM_RAM: u64 = 64 << 20;
/// The guest's page tables, from the start of RAM: 8 vCPUs' buffers need about 30 table
/// pages. The pool is written whole at every build, so a reused RAM's old tables are gone.
const TABLE_POOL: u64 = 256 << 10;
/// Buffer pages are scattered from here to the end of RAM.
const BUFFER_REGION: u64 = 8 << 20;
/// A page the guest remaps its buffer to (never touched before).
pub(crate) const SPARE_PAGE: Ipa = Ipa(RAM_BASE.0 + 6 * (1 << 20));
/// An IPA with no memory behind it (a device region below RAM).
pub(crate) const OUTSIDE_RAM: Ipa = Ipa(0x1000_0000);
/// vCPU `v`'s buffer is at `BUFFER_VA + v GiB`.
pub(crate) const BUFFER_VA: u64 = 0xffff_8000_8000_0000;

/// The RAM pages a run wrote, one bit each: what must be zeroed before the RAM is reused.
#[derive(Debug)]
pub(crate) struct WrittenPages(Vec<u64>);

impl WrittenPages {
    fn new() -> Self {
        WrittenPages(vec![0; (SIM_RAM / 4096 / 64) as usize])
    }

    /// Notes a write to `ipa..ipa + len` (bytes outside RAM are not RAM's concern).
    pub(crate) fn mark(&mut self, ipa: Ipa, len: u64) {
        let Some(off) = ipa.0.checked_sub(RAM_BASE.0) else {
            return;
        };
        let last = off.saturating_add(len.max(1) - 1).min(SIM_RAM - 1);
        for page in off / 4096..=last / 4096 {
            self.0[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    fn pages(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

std::thread_local! {
    /// Simulated RAM given back by finished runs on this thread, with the pages each wrote: a
    /// fresh 64 MiB allocation is zero-filled by the kernel page by page on first touch, which
    /// cost a quarter of a run, and zeroing all of it again costs a twentieth.
    static RAM_POOL: core::cell::RefCell<Vec<(Vec<u8>, WrittenPages)>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Zeroed simulated RAM, reused from this thread's pool when possible. A run writes only its
/// tables (the pool is rewritten whole by [`build_guest`]), its buffer pages and the pages
/// its guest remaps them to; [`WrittenPages`] has them all, so only those are zeroed.
fn take_ram() -> Vec<u8> {
    match RAM_POOL.with(|p| p.borrow_mut().pop()) {
        Some((mut ram, written)) => {
            for page in written.pages() {
                ram[page * 4096..(page + 1) * 4096].fill(0);
            }
            ram
        }
        None => vec![0; SIM_RAM as usize],
    }
}

/// Gives a finished run's RAM back to this thread's pool (at most two are kept).
pub(crate) fn return_ram(guest: Guest) {
    let ram = guest
        .ram
        .into_regions()
        .into_iter()
        .find(|(base, bytes)| *base == RAM_BASE && bytes.len() == SIM_RAM as usize);
    if let Some((_, bytes)) = ram {
        RAM_POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 2 {
                p.push((bytes, guest.written));
            }
        });
    }
}

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One of `items` (not empty), uniformly: Lemire's multiply-shift, not a 64-bit division,
    /// on the per-record path.
    #[inline(always)]
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(((self.next() >> 32) * items.len() as u64) >> 32) as usize]
    }
}

/// Real record bytes: Kunpeng's 44-byte branch records and Neoverse-style 64-byte records.
pub(crate) fn sample_records() -> Vec<&'static [u8]> {
    let kunpeng: &'static [u8] =
        include_bytes!("../../../spe-policy/tests/data/kunpeng_branch_2021_a.bin");
    let quipper: &'static [u8] =
        include_bytes!("../../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin");
    vec![
        &kunpeng[..44],
        &kunpeng[44..88],
        &quipper[..64],
        &quipper[64..128],
    ]
}

/// The guest's memory and stage 1 registers.
pub(crate) struct Guest {
    pub(crate) ram: GuestRam,
    pub(crate) stage1: Stage1Regs,
    /// Every RAM page written since [`build_guest`] (besides the table pool).
    pub(crate) written: WrittenPages,
}

/// Builds the guest with `vcpus` buffers of `buffer_bytes`; returns the IPA of every buffer
/// page, per vCPU.
pub(crate) fn build_guest(
    vcpus: u32,
    buffer_bytes: u64,
) -> Result<(Guest, Vec<Vec<Ipa>>), SimError> {
    let g = |e: &dyn std::fmt::Display| SimError::Guest(e.to_string());
    let mut ram = GuestRam::new();
    ram.insert(RAM_BASE, take_ram()).map_err(|e| g(&e))?;
    let mut b = TableBuilder::new(
        GuestRam::new(),
        Granule::K4,
        16,
        RAM_BASE,
        TABLE_POOL,
        false,
    )
    .map_err(|e| g(&e))?;
    let pages_per = buffer_bytes / 4096;
    let region_pages = (SIM_RAM - BUFFER_REGION) / 4096;
    let mut all = Vec::new();
    for v in 0..u64::from(vcpus) {
        let pages: Vec<Ipa> = (0..pages_per)
            .map(|i| {
                let n = v * pages_per + i;
                Ipa(RAM_BASE.0 + BUFFER_REGION + ((n * 7919) % region_pages) * 4096)
            })
            .collect();
        b.map_pages(
            Gva(BUFFER_VA + v * (1 << 30)),
            pages.iter().copied(),
            LEAF_RW,
        )
        .map_err(|e| g(&e))?;
        all.push(pages);
    }
    let tables = b.into_ram();
    for (base, len) in tables.regions() {
        let bytes = tables
            .slice(base, len as usize)
            .ok_or_else(|| g(&"tables"))?;
        ram.write(base, bytes).map_err(|e| g(&e))?;
    }
    let stage1 = Stage1Regs::linux_kernel_4k(RAM_BASE);
    Ok((
        Guest {
            ram,
            stage1,
            written: WrittenPages::new(),
        },
        all,
    ))
}
