//! The simulated guest: RAM, a Linux-like kernel stage 1 with each vCPU's AUX buffer vmap'd
//! from scattered pages (spec sheet §4.1), real SPE records, and a seeded generator.

use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::{Granule, GuestRam, Gva, Ipa};

use super::SimError;

/// Where guest RAM starts (the VM's RAM is one memslot from here).
pub const RAM_BASE: Ipa = Ipa(0x4000_0000);
/// An IPA with no memory behind it (a device region below RAM).
pub(crate) const OUTSIDE_RAM: Ipa = Ipa(0x1000_0000);
/// vCPU `v`'s buffer is at `BUFFER_VA + v GiB`.
pub(crate) const BUFFER_VA: u64 = 0xffff_8000_8000_0000;

/// Where the simulated guest keeps what the SPU and its tables need: the page tables from the
/// start of RAM, a spare page, and the buffers' pages scattered over a region after them. Only
/// this part of RAM holds bytes; the rest of the VM's RAM has stage 2 state only (the guest's
/// other memory is not simulated: nothing writes or walks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Bytes of the table pool at [`RAM_BASE`].
    pub(crate) table_pool: u64,
    /// A page the guest remaps its buffer to (never touched before).
    pub(crate) spare_page: Ipa,
    /// First byte of the buffer region.
    pub(crate) buffer_region: u64,
    /// Bytes of RAM that hold bytes (tables, spare page, buffer region).
    pub(crate) active: u64,
}

impl Layout {
    /// The layout for `vcpus` buffers of `buffer` bytes each.
    pub(crate) fn new(vcpus: u32, buffer: u64) -> Self {
        // Per vCPU: one level 2 table (its GiB of VA) and one level 3 table per 2 MiB of
        // buffer (plus one where the buffer is not aligned); a few tables above them.
        let tables = 16 + u64::from(vcpus) * (2 + buffer.div_ceil(2 << 20));
        let table_pool = tables * 4096;
        let spare_page = Ipa(RAM_BASE.0 + table_pool);
        let buffer_region = table_pool + 4096;
        // The buffers' pages are scattered over half again as many pages as they need.
        let total = buffer * u64::from(vcpus);
        let region = (total + total / 2).max(8 << 20).div_ceil(4096) * 4096;
        Layout {
            table_pool,
            spare_page,
            buffer_region,
            active: buffer_region + region,
        }
    }
}

/// The RAM pages a run wrote, one bit each: what must be zeroed before the RAM is reused.
#[derive(Debug)]
pub(crate) struct WrittenPages(Vec<u64>, u64);

impl WrittenPages {
    fn new(active: u64) -> Self {
        WrittenPages(vec![0; (active / 4096).div_ceil(64) as usize], active)
    }

    /// Notes a write to `ipa..ipa + len` (bytes outside the active RAM are not its concern).
    pub(crate) fn mark(&mut self, ipa: Ipa, len: u64) {
        let Some(off) = ipa.0.checked_sub(RAM_BASE.0) else {
            return;
        };
        if off >= self.1 {
            return;
        }
        let last = off.saturating_add(len.max(1) - 1).min(self.1 - 1);
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
    /// fresh allocation is zero-filled by the kernel page by page on first touch, which
    /// cost a quarter of a run, and zeroing all of it again costs a twentieth.
    static RAM_POOL: core::cell::RefCell<Vec<(Vec<u8>, WrittenPages)>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Zeroed active RAM of `len` bytes, reused from this thread's pool when one of that size is
/// there. A run writes only its tables (the pool is rewritten whole by [`build_guest`]), its
/// buffer pages and the pages its guest remaps them to; [`WrittenPages`] has them all, so only
/// those are zeroed.
fn take_ram(len: u64) -> Vec<u8> {
    let reused = RAM_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|(r, _)| r.len() as u64 == len)?;
        Some(p.swap_remove(i))
    });
    match reused {
        Some((mut ram, written)) => {
            for page in written.pages() {
                ram[page * 4096..(page + 1) * 4096].fill(0);
            }
            ram
        }
        None => vec![0; len as usize],
    }
}

/// Gives a finished run's RAM back to this thread's pool (at most two are kept).
pub(crate) fn return_ram(guest: Guest) {
    let active = guest.layout.active;
    let ram = guest
        .ram
        .into_regions()
        .into_iter()
        .find(|(base, bytes)| *base == RAM_BASE && bytes.len() as u64 == active);
    if let Some((_, bytes)) = ram {
        RAM_POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= 2 {
                p.remove(0);
            }
            p.push((bytes, guest.written));
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
    /// Where things are.
    pub(crate) layout: Layout,
}

/// Builds the guest with `vcpus` buffers of `buffer_bytes` (4 KiB pages); returns the IPA of
/// every buffer page, per vCPU.
pub(crate) fn build_guest(
    vcpus: u32,
    buffer_bytes: u64,
) -> Result<(Guest, Vec<Vec<Ipa>>), SimError> {
    let g = |e: &dyn std::fmt::Display| SimError::Guest(e.to_string());
    let layout = Layout::new(vcpus, buffer_bytes);
    let mut ram = GuestRam::new();
    ram.insert(RAM_BASE, take_ram(layout.active))
        .map_err(|e| g(&e))?;
    let mut b = TableBuilder::new(
        GuestRam::new(),
        Granule::K4,
        16,
        RAM_BASE,
        layout.table_pool,
        false,
    )
    .map_err(|e| g(&e))?;
    let pages_per = buffer_bytes / 4096;
    let region_pages = (layout.active - layout.buffer_region) / 4096;
    // A stride coprime with the region scatters the pages like a long-running kernel's
    // allocator would, with no two buffer pages on one page.
    let stride = (7919..)
        .step_by(2)
        .find(|k| gcd(*k, region_pages) == 1)
        .unwrap_or(1);
    let mut all = Vec::new();
    for v in 0..u64::from(vcpus) {
        let pages: Vec<Ipa> = (0..pages_per)
            .map(|i| {
                let n = v * pages_per + i;
                Ipa(RAM_BASE.0 + layout.buffer_region + ((n * stride) % region_pages) * 4096)
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
            written: WrittenPages::new(layout.active),
            layout,
        },
        all,
    ))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
