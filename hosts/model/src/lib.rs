//! # spe-host-model: a model of the host's stage 2
//!
//! A model of the host's stage 2 and memory manager, implementing [`HostBacking`]: per-page
//! state (present, write-protected, pinned, swapped, shared by KSM, left behind by post-copy,
//! exempt from dirty logging) and the host events that change it. Tests and the simulator use
//! it; it also checks the strategies: a page pinned twice, an unpin of an unpinned page or a pin
//! outside guest RAM is an error, and [`Stage2Model::pinned_bytes`] must be 0 after VM stop.

#![deny(missing_docs)]

use std::collections::BTreeSet;

use parking_lot::Mutex;

use spe_policy::arch::{Pmbptr, Pmbsr};
use spe_policy::host::{FaultIn, HostGranule, PageState};
use spe_policy::{Granule, HostBacking, HostError, Ipa, IpaRange, Memslot, VcpuId};

/// Why a page is not present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Absence {
    /// Never touched since boot.
    NeverTouched,
    /// Swapped out (or reclaimed, migrated, compacted: unmapped until the next fault).
    Swapped,
    /// Not yet received after post-copy switch-over.
    PostCopyPending,
}

/// One host page's state in one byte (dense: a 64 GiB VM of 4 KiB pages takes 16 MiB).
mod flag {
    /// Bits 0-1: why the page is absent (0: present).
    pub const ABSENCE: u8 = 0b11;
    pub const NEVER_TOUCHED: u8 = 1;
    pub const SWAPPED: u8 = 2;
    pub const POST_COPY_PENDING: u8 = 3;
    pub const WRITE_PROTECTED: u8 = 1 << 2;
    pub const PINNED: u8 = 1 << 3;
    pub const EXEMPT: u8 = 1 << 4;
    pub const KSM_SHARED: u8 = 1 << 5;
    /// Sent to the post-copy destination on request before switch-over.
    pub const SENT: u8 = 1 << 6;
    /// Cannot be brought in (the source died, the backing file is gone).
    pub const UNAVAILABLE: u8 = 1 << 7;
}

fn absence_bits(a: Absence) -> u8 {
    match a {
        Absence::NeverTouched => flag::NEVER_TOUCHED,
        Absence::Swapped => flag::SWAPPED,
        Absence::PostCopyPending => flag::POST_COPY_PENDING,
    }
}

fn absence_of(f: u8) -> Option<Absence> {
    match f & flag::ABSENCE {
        flag::NEVER_TOUCHED => Some(Absence::NeverTouched),
        flag::SWAPPED => Some(Absence::Swapped),
        flag::POST_COPY_PENDING => Some(Absence::PostCopyPending),
        _ => None,
    }
}

/// What a KSM scan does to a pinned page.
#[derive(Clone, Copy)]
enum PinnedUnderKsm {
    /// Not merged, but unmapped by the attempt (a long-term pin, the kernel's behaviour).
    Zapped,
    /// Left alone (the VMM keeps pinned memory out of KSM).
    Untouched,
    /// Merged like any page (an mlock pin).
    Merged,
}

/// Counters of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stage2Counters {
    /// Pages made present by [`HostBacking::fault_in`].
    pub faults_served: u64,
    /// Of those, pages brought back from swap.
    pub swap_ins: u64,
    /// Of those, pages fetched from the post-copy source.
    pub post_copy_fetches: u64,
    /// Pages sent before post-copy switch-over on request.
    pub sent_before_switchover: u64,
    /// Bytes written through [`HostBacking::write_guest`].
    pub guest_bytes_written: u64,
    /// Host pin calls that succeeded.
    pub pin_calls: u64,
    /// Pages pinned by those calls.
    pub pages_pinned: u64,
    /// Pin calls refused at the locked-memory limit.
    pub pins_refused_at_lock_limit: u64,
}

/// One memslot and a byte of state per host page of it.
#[derive(Debug)]
struct Slot {
    slot: Memslot,
    pages: Vec<u8>,
}

#[derive(Debug, Default)]
struct Model {
    slots: Vec<Slot>,
    /// Pages with the pinned flag (the flag is the truth; this is its count).
    pinned_pages: u64,
    lock_limit: Option<u64>,
    dirty_logging: bool,
    counters: Stage2Counters,
    injected: Vec<(VcpuId, Pmbsr, Pmbptr)>,
    disabled: BTreeSet<VcpuId>,
}

impl Model {
    /// The slot index and page index of `page` (a page-aligned IPA), if it is in a memslot.
    fn locate(&self, page: u64, shift: u32) -> Option<(usize, usize)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.slot
                .range
                .contains(Ipa(page))
                .then(|| (i, ((page - s.slot.range.start.0) >> shift) as usize))
        })
    }

    fn flags(&self, page: u64, shift: u32) -> Option<u8> {
        let (s, i) = self.locate(page, shift)?;
        self.slots[s].pages.get(i).copied()
    }

    fn is_pinned(&self, page: u64, shift: u32) -> bool {
        self.flags(page, shift)
            .is_some_and(|f| f & flag::PINNED != 0)
    }

    /// Calls `f` with the flags of every page of `range` inside a memslot, slot by slot (a
    /// range may span slots), and the page's IPA.
    fn for_each(&mut self, range: IpaRange, shift: u32, mut f: impl FnMut(u64, &mut u8)) {
        let size = 1u64 << shift;
        let first = range.start.0 & !(size - 1);
        let end = range.end();
        for s in &mut self.slots {
            let (lo, hi) = (s.slot.range.start.0, s.slot.range.end());
            let a = first.max(lo);
            let b = end.min(hi);
            if a >= b {
                continue;
            }
            let (i0, i1) = (
                ((a - lo) >> shift) as usize,
                ((b - lo).div_ceil(size)) as usize,
            );
            let i1 = i1.min(s.pages.len());
            for (k, page) in s.pages[i0..i1].iter_mut().enumerate() {
                f(lo + ((i0 + k) as u64) * size, page);
            }
        }
    }
}

/// A locked model whose generation is bumped when the lock is released, after the change.
struct Change<'a> {
    guard: parking_lot::MutexGuard<'a, Model>,
    generation: &'a core::sync::atomic::AtomicU64,
}

impl core::ops::Deref for Change<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.guard
    }
}

impl core::ops::DerefMut for Change<'_> {
    fn deref_mut(&mut self) -> &mut Model {
        &mut self.guard
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.generation
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    }
}

/// The stage 2 model. Thread-safe; one byte of state per host page of guest RAM.
#[derive(Debug)]
pub struct Stage2Model {
    granule: Granule,
    inner: Mutex<Model>,
    /// Bumped by every call that may change a page's state.
    generation: core::sync::atomic::AtomicU64,
}

impl Stage2Model {
    /// A model with host pages of `granule` and the given memslots, every page present.
    pub fn new(granule: Granule, memslots: &[Memslot]) -> Self {
        let m = Stage2Model {
            granule,
            inner: Mutex::new(Model::default()),
            generation: core::sync::atomic::AtomicU64::new(0),
        };
        for s in memslots {
            m.add_memslot(*s);
        }
        m
    }

    fn shift(&self) -> u32 {
        self.granule.size().trailing_zeros()
    }

    /// A number that changes whenever any page's state may have changed: a caller that cached
    /// [`HostBacking::page_state`] answers may keep them while it stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(core::sync::atomic::Ordering::Acquire)
    }

    /// The model, locked for a change; the generation moves when the change is done.
    fn change(&self) -> Change<'_> {
        Change {
            guard: self.inner.lock(),
            generation: &self.generation,
        }
    }

    /// Limits pinned bytes (RLIMIT_MEMLOCK).
    pub fn set_lock_limit(&self, bytes: Option<u64>) {
        self.inner.lock().lock_limit = bytes;
    }

    /// Bytes pinned now.
    pub fn pinned_bytes(&self) -> u64 {
        self.inner.lock().pinned_pages * self.granule.size()
    }

    /// Whether the page containing `ipa` is pinned.
    pub fn is_pinned(&self, ipa: Ipa) -> bool {
        self.inner
            .lock()
            .is_pinned(ipa.page_base(self.granule).0, self.shift())
    }

    /// Why the host page of `ipa` is absent at stage 2 (`None`: present, or outside every
    /// memslot): what made an SPU write there fault.
    pub fn absence(&self, ipa: Ipa) -> Option<Absence> {
        let m = self.inner.lock();
        m.flags(ipa.page_base(self.granule).0, self.shift())
            .and_then(absence_of)
    }

    /// The model's counters.
    pub fn counters(&self) -> Stage2Counters {
        self.inner.lock().counters
    }

    /// Buffer management events injected so far.
    pub fn injected(&self) -> Vec<(VcpuId, Pmbsr, Pmbptr)> {
        self.inner.lock().injected.clone()
    }

    /// vCPUs whose SPE was disabled.
    pub fn disabled(&self) -> Vec<VcpuId> {
        self.inner.lock().disabled.iter().copied().collect()
    }

    /// Adds a memslot (its pages present). A slot number already in use, or a range that
    /// overlaps another slot, is ignored: the VMM's KVM_SET_USER_MEMORY_REGION would refuse it.
    pub fn add_memslot(&self, slot: Memslot) -> bool {
        let mut m = self.change();
        let overlaps = m.slots.iter().any(|s| {
            s.slot.slot == slot.slot
                || (s.slot.range.start.0 < slot.range.end()
                    && slot.range.start.0 < s.slot.range.end())
        });
        if overlaps {
            return false;
        }
        let pages = slot.range.len.div_ceil(self.granule.size()) as usize;
        m.slots.push(Slot {
            slot,
            pages: vec![0; pages],
        });
        true
    }

    /// Removes a memslot; its pages (and their pins) go with it.
    pub fn remove_memslot(&self, slot: u32) {
        let mut m = self.change();
        if let Some(i) = m.slots.iter().position(|s| s.slot.slot == slot) {
            let gone = m.slots.remove(i);
            let pinned = gone
                .pages
                .iter()
                .filter(|f| **f & flag::PINNED != 0)
                .count() as u64;
            m.pinned_pages -= pinned;
        }
    }

    /// Host event: unmap the unpinned pages of `range` (swap-out, reclaim, NUMA migration,
    /// compaction, THP split). Returns how many pages were taken away; pinned pages stay.
    pub fn unmap(&self, range: IpaRange, why: Absence) -> u64 {
        let shift = self.shift();
        let mut taken = 0;
        self.change().for_each(range, shift, |_, f| {
            if *f & flag::PINNED == 0 && *f & flag::ABSENCE == 0 {
                *f |= absence_bits(why);
                taken += 1;
            }
        });
        taken
    }

    /// Host event that an mlock pin does not stop (THP collapse, compaction: the kernel moves
    /// the page and zaps its stage 2 mapping, measured by `spe-policy stage2-check`): every
    /// present page of `range` is unmapped, pinned or not; a pinned page keeps its pin and is
    /// brought back at the next fault. Returns how many pages were unmapped.
    pub fn unmap_moving_mlocked(&self, range: IpaRange, why: Absence) -> u64 {
        self.unmap_pinned_too(range, why)
    }

    /// Host event: a hole punched in the memory backing `range` (guest_memfd or file
    /// `FALLOCATE_PUNCH_HOLE`). Truncation frees the pages whatever holds them, mlock or a
    /// long-term pin (measured: `spe-policy stage2-check`): every present page is unmapped,
    /// pinned or not, and faults in a fresh page next. Returns how many pages were unmapped.
    pub fn punch_hole(&self, range: IpaRange) -> u64 {
        self.unmap_pinned_too(range, Absence::NeverTouched)
    }

    /// Host event: the VMM deletes memslot `slot` and adds it again over the same memory
    /// (a resize, a move, a flags change KVM cannot make in place). KVM drops the whole slot's
    /// stage 2; pins hold host memory, not mappings, so they stay and every page faults once,
    /// cheaply (measured: 1024 of 1024 long-term pinned pages). Returns the pages unmapped.
    pub fn readd_memslot(&self, slot: u32) -> u64 {
        let range = {
            let m = self.inner.lock();
            m.slots
                .iter()
                .find(|s| s.slot.slot == slot)
                .map(|s| s.slot.range)
        };
        range.map_or(0, |r| self.unmap_pinned_too(r, Absence::NeverTouched))
    }

    /// Host event: writeback of a file memory backend (`msync`, the flusher threads) cleans
    /// the present pages of `range` and write-protects them, stage 2 included, whether they
    /// are locked with mlock or not (measured); the next write faults and dirties them again.
    /// (The kernel refuses a long-term pin of a regular file's pages with EFAULT, so no page
    /// written back holds one.) Returns how many pages were write-protected.
    pub fn writeback(&self, range: IpaRange) -> u64 {
        let shift = self.shift();
        let mut protected = 0;
        self.change().for_each(range, shift, |_, f| {
            if *f & (flag::ABSENCE | flag::WRITE_PROTECTED) == 0 {
                *f |= flag::WRITE_PROTECTED;
                protected += 1;
            }
        });
        protected
    }

    /// Unmaps every present page of `range`, pinned or not (the pin flag stays).
    fn unmap_pinned_too(&self, range: IpaRange, why: Absence) -> u64 {
        let shift = self.shift();
        let mut taken = 0;
        self.change().for_each(range, shift, |_, f| {
            if *f & flag::ABSENCE == 0 {
                *f |= absence_bits(why);
                taken += 1;
            }
        });
        taken
    }

    /// Host event: a KSM scan of `range`: the unpinned pages are merged (read-only, shared);
    /// a pinned page is not merged, but its stage 2 mapping goes anyway. KSM's merge attempt
    /// write-protects the page under an MMU-notifier invalidation before it checks the page's
    /// references, and a pinned page fails that check (measured, `spe-policy stage2-check
    /// --ksm`: 1023 of 1024 long-term pinned pages zapped, none merged): it faults back in
    /// cheaply, its pin still holding the memory. Returns how many pages were merged.
    pub fn ksm_merge(&self, range: IpaRange) -> u64 {
        self.ksm_scan(range, PinnedUnderKsm::Zapped)
    }

    /// A KSM scan of `range` where the VMM keeps its pinned pages out of KSM (MADV_UNMERGEABLE
    /// over what it pins, PA-07 / PB-10's mitigation): only the unpinned pages are merged,
    /// pinned ones are not touched. Returns how many pages were merged.
    pub fn ksm_merge_unpinned(&self, range: IpaRange) -> u64 {
        self.ksm_scan(range, PinnedUnderKsm::Untouched)
    }

    /// KSM over pages pinned with mlock (measured on the real kernel, `hosts/kvm/tests/ksm.rs`):
    /// its scan write-protects them as it does any page (the next pass faulted on all 1024 of
    /// a locked 4 MiB buffer), so only absent or already shared pages are left alone.
    pub fn ksm_merge_mlocked_too(&self, range: IpaRange) -> u64 {
        self.ksm_scan(range, PinnedUnderKsm::Merged)
    }

    /// Merges the present, unshared pages of `range` (shared and write-protected); a pinned
    /// page as `pinned` says. Returns how many pages were merged.
    fn ksm_scan(&self, range: IpaRange, pinned: PinnedUnderKsm) -> u64 {
        let shift = self.shift();
        let mut merged = 0;
        self.change().for_each(range, shift, |_, f| {
            if *f & (flag::KSM_SHARED | flag::ABSENCE) != 0 {
                return;
            }
            match pinned {
                PinnedUnderKsm::Zapped if *f & flag::PINNED != 0 => *f |= flag::NEVER_TOUCHED,
                PinnedUnderKsm::Untouched if *f & flag::PINNED != 0 => {}
                _ => {
                    *f |= flag::KSM_SHARED | flag::WRITE_PROTECTED;
                    merged += 1;
                }
            }
        });
        merged
    }

    /// Host event: dirty logging write-protects every page that is not pinned or exempt
    /// (start, and each clear round), in `range` or all of RAM.
    pub fn dirty_log_protect(&self, range: Option<IpaRange>) {
        let shift = self.shift();
        let mut m = self.change();
        m.dirty_logging = true;
        let protect = |_: u64, f: &mut u8| {
            if *f & (flag::EXEMPT | flag::PINNED) == 0 {
                *f |= flag::WRITE_PROTECTED;
            }
        };
        match range {
            Some(r) => m.for_each(r, shift, protect),
            None => {
                for s in &mut m.slots {
                    s.pages.iter_mut().for_each(|f| protect(0, f));
                }
            }
        }
    }

    /// Host event: dirty logging stops; write protection that was only for logging goes.
    pub fn dirty_log_stop(&self) {
        let mut m = self.change();
        m.dirty_logging = false;
        for s in &mut m.slots {
            for f in &mut s.pages {
                if *f & flag::KSM_SHARED == 0 {
                    *f &= !flag::WRITE_PROTECTED;
                }
            }
        }
    }

    /// Host event: post-copy switch-over; every page of `left_behind` not sent yet (or
    /// pinned, which pin-buffer sends) stays at the source.
    pub fn post_copy_switchover(&self, left_behind: IpaRange) {
        let shift = self.shift();
        self.change().for_each(left_behind, shift, |_, f| {
            let sent = *f & flag::ABSENCE == 0 && *f & (flag::PINNED | flag::SENT) != 0;
            if !sent {
                *f = (*f & !flag::ABSENCE) | flag::POST_COPY_PENDING;
            }
        });
    }

    /// Pages dirty logging cannot track (pinned, or exempt from write protection): a migration
    /// must assume they are dirty and send them again at stop-and-copy.
    pub fn untracked_pages(&self) -> u64 {
        let m = self.inner.lock();
        let exempt: u64 = m
            .slots
            .iter()
            .map(|s| {
                s.pages
                    .iter()
                    .filter(|f| **f & (flag::EXEMPT | flag::PINNED) == flag::EXEMPT)
                    .count() as u64
            })
            .sum();
        m.pinned_pages + exempt
    }

    /// Makes `ipa`'s page impossible to fault in (the source died, the backing file is gone).
    pub fn make_unavailable(&self, ipa: Ipa) {
        let shift = self.shift();
        self.change()
            .for_each(IpaRange::page(ipa, self.granule), shift, |_, f| {
                *f |= flag::UNAVAILABLE;
            });
    }
}

fn unavailable(ipa: Ipa) -> HostError {
    HostError::Unavailable {
        ipa,
        reason: "the page cannot be brought in".into(),
    }
}

impl HostBacking for Stage2Model {
    fn granule(&self) -> HostGranule {
        self.granule
    }

    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        let shift = self.shift();
        let size = self.granule.size();
        let mut m = self.change();
        // Check every page first (a failed pin changes nothing), without collecting them.
        let mut count = 0u64;
        for page in range.pages(self.granule) {
            match m.flags(page.0, shift) {
                None => return Err(HostError::NotInMemslot(page)),
                Some(f) if f & flag::PINNED != 0 => {
                    return Err(HostError::Other(format!(
                        "IPA {page} pinned twice: the strategy must count references"
                    )));
                }
                Some(f) if f & flag::UNAVAILABLE != 0 => return Err(unavailable(page)),
                Some(_) => {}
            }
            count += 1;
        }
        let requested = count * size;
        if let Some(limit) = m.lock_limit {
            let now = m.pinned_pages * size;
            if now + requested > limit {
                m.counters.pins_refused_at_lock_limit += 1;
                return Err(HostError::LockLimit { requested, limit });
            }
        }
        m.pinned_pages += count;
        m.counters.pin_calls += 1;
        m.counters.pages_pinned += count;
        // Pinning faults the page in and makes it writable (breaks KSM sharing).
        m.for_each(range, shift, |_, f| {
            *f = (*f & !(flag::ABSENCE | flag::WRITE_PROTECTED | flag::KSM_SHARED)) | flag::PINNED;
        });
        Ok(())
    }

    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let shift = self.shift();
        let mut m = self.change();
        let mut count = 0u64;
        for page in range.pages(self.granule) {
            if !m.is_pinned(page.0, shift) {
                return Err(HostError::NotPinned(page));
            }
            count += 1;
        }
        m.pinned_pages -= count;
        m.for_each(range, shift, |_, f| *f &= !flag::PINNED);
        Ok(())
    }

    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        let shift = self.shift();
        let mut m = self.change();
        let page = ipa.page_base(self.granule).0;
        let Some((s, i)) = m.locate(page, shift) else {
            return Err(HostError::NotInMemslot(ipa));
        };
        let f = m.slots[s].pages[i];
        if f & flag::UNAVAILABLE != 0 {
            return Err(unavailable(ipa));
        }
        if f & (flag::ABSENCE | flag::WRITE_PROTECTED) == 0 {
            return Ok(FaultIn::AlreadyPresent);
        }
        m.slots[s].pages[i] = f & !(flag::ABSENCE | flag::WRITE_PROTECTED | flag::KSM_SHARED);
        m.counters.faults_served += 1;
        match absence_of(f) {
            Some(Absence::Swapped) => m.counters.swap_ins += 1,
            Some(Absence::PostCopyPending) => m.counters.post_copy_fetches += 1,
            _ => {}
        }
        Ok(FaultIn::MadePresent)
    }

    fn page_state(&self, ipa: Ipa) -> PageState {
        let m = self.inner.lock();
        match m.flags(ipa.page_base(self.granule).0, self.shift()) {
            None => PageState::default(),
            Some(f) => PageState {
                present: f & flag::ABSENCE == 0,
                write_protected: f & flag::WRITE_PROTECTED != 0,
                pinned: f & flag::PINNED != 0,
                dirty_log_exempt: f & flag::EXEMPT != 0,
                in_memslot: true,
            },
        }
    }

    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        let shift = self.shift();
        let mut m = self.change();
        let logging = m.dirty_logging;
        m.for_each(range, shift, |_, f| {
            if exempt {
                *f |= flag::EXEMPT;
                if *f & flag::KSM_SHARED == 0 {
                    *f &= !flag::WRITE_PROTECTED;
                }
            } else {
                *f &= !flag::EXEMPT;
                if logging && *f & flag::PINNED == 0 {
                    *f |= flag::WRITE_PROTECTED;
                }
            }
        });
        Ok(())
    }

    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        let shift = self.shift();
        let size = self.granule.size();
        let mut m = self.change();
        let mut page = range.start.0 & !(size - 1);
        while page < range.end() {
            if m.flags(page, shift).is_none() {
                return Err(HostError::NotInMemslot(Ipa(page)));
            }
            page = match page.checked_add(size) {
                Some(p) => p,
                None => break,
            };
        }
        let mut sent = 0;
        m.for_each(range, shift, |_, f| {
            *f |= flag::SENT;
            sent += 1;
        });
        m.counters.sent_before_switchover += sent;
        Ok(())
    }

    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        let shift = self.shift();
        let size = self.granule.size();
        let mut m = self.change();
        let range = IpaRange::new(ipa, bytes.len() as u64);
        let mut page = range.start.0 & !(size - 1);
        while page < range.end() {
            match m.flags(page, shift) {
                None => return Err(HostError::NotInMemslot(Ipa(page))),
                Some(f) if f & flag::UNAVAILABLE != 0 => return Err(unavailable(Ipa(page))),
                Some(_) => {}
            }
            page = match page.checked_add(size) {
                Some(p) => p,
                None => break,
            };
        }
        let (mut swap_ins, mut fetches) = (0, 0);
        m.for_each(range, shift, |_, f| {
            // The VMM's write path faults the page in as any host write would, and waits for
            // it like any host access.
            match absence_of(*f) {
                Some(Absence::Swapped) => swap_ins += 1,
                Some(Absence::PostCopyPending) => fetches += 1,
                _ => {}
            }
            *f &= !flag::ABSENCE;
            if *f & flag::EXEMPT == 0 && *f & flag::KSM_SHARED == 0 {
                // A host write to a write-protected (logged) page marks it dirty.
                *f &= !flag::WRITE_PROTECTED;
            }
        });
        m.counters.swap_ins += swap_ins;
        m.counters.post_copy_fetches += fetches;
        m.counters.guest_bytes_written += bytes.len() as u64;
        Ok(())
    }

    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError> {
        self.inner.lock().injected.push((vcpu, pmbsr, pmbptr));
        Ok(())
    }

    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        self.inner.lock().disabled.insert(vcpu);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Stage2Model {
        Stage2Model::new(
            Granule::K4,
            &[Memslot {
                slot: 0,
                range: IpaRange::new(Ipa(0x4000_0000), 0x10_0000),
            }],
        )
    }

    #[test]
    fn pinned_pages_survive_swap_and_ksm_while_others_go() {
        let m = model();
        m.pin(IpaRange::new(Ipa(0x4000_0000), 0x2000)).expect("pin");
        let taken = m.unmap(IpaRange::new(Ipa(0x4000_0000), 0x4000), Absence::Swapped);
        assert_eq!(taken, 2);
        assert!(!m.page_state(Ipa(0x4000_3000)).present);
        assert!(m.page_state(Ipa(0x4000_0000)).writable());
        assert!(!m.page_state(Ipa(0x4000_2000)).present);
        assert_eq!(m.fault_in(Ipa(0x4000_2000)), Ok(FaultIn::MadePresent));
        assert_eq!(m.counters().swap_ins, 1);
    }

    #[test]
    fn double_pins_unbalanced_unpins_and_pins_outside_ram_are_errors() {
        let m = model();
        let r = IpaRange::new(Ipa(0x4000_0000), 0x1000);
        m.pin(r).expect("pin");
        assert!(m.pin(r).is_err());
        m.unpin(r).expect("unpin");
        assert_eq!(m.unpin(r), Err(HostError::NotPinned(Ipa(0x4000_0000))));
        assert!(matches!(
            m.pin(IpaRange::new(Ipa(0x1000), 0x1000)),
            Err(HostError::NotInMemslot(_))
        ));
    }

    #[test]
    fn the_lock_limit_refuses_pins_beyond_it() {
        let m = model();
        m.set_lock_limit(Some(0x2000));
        assert!(m.pin(IpaRange::new(Ipa(0x4000_0000), 0x2000)).is_ok());
        assert!(matches!(
            m.pin(IpaRange::new(Ipa(0x4000_2000), 0x1000)),
            Err(HostError::LockLimit { .. })
        ));
    }

    #[test]
    fn dirty_logging_write_protects_all_but_exempt_and_pinned_pages() {
        let m = model();
        m.set_dirty_log_exempt(IpaRange::new(Ipa(0x4000_1000), 0x1000), true)
            .expect("exempt");
        m.dirty_log_protect(None);
        assert!(m.page_state(Ipa(0x4000_0000)).write_protected);
        assert!(m.page_state(Ipa(0x4000_1000)).writable());
        m.dirty_log_stop();
        assert!(m.page_state(Ipa(0x4000_0000)).writable());
    }
}
