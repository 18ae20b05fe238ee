//! # spe-host-model: a model of the host's stage 2
//!
//! A model of the host's stage 2 and memory manager, implementing [`HostBacking`]: per-page
//! state (present, write-protected, pinned, swapped, shared by KSM, left behind by post-copy,
//! exempt from dirty logging) and the host events that change it. Tests and the simulator use
//! it; it also checks the strategies: a page pinned twice, an unpin of an unpinned page or a pin
//! outside guest RAM is an error, and [`Stage2Model::pinned_bytes`] must be 0 after VM stop.

#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Page {
    absent: Option<AbsenceState>,
    write_protected: bool,
    pinned: bool,
    exempt: bool,
    ksm_shared: bool,
    /// Sent to the post-copy destination on request before switch-over.
    sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AbsenceState(Absence);

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
}

#[derive(Debug, Default)]
struct Model {
    memslots: Vec<Memslot>,
    /// State of pages that differ from "present, writable, unpinned".
    pages: BTreeMap<u64, Page>,
    /// Pages with `Page::pinned` set (the flag is the truth; this is its count).
    pinned_pages: u64,
    lock_limit: Option<u64>,
    dirty_logging: bool,
    counters: Stage2Counters,
    injected: Vec<(VcpuId, Pmbsr, Pmbptr)>,
    disabled: BTreeSet<VcpuId>,
    unavailable: BTreeSet<u64>,
}

/// A locked model whose generation is bumped when the lock is released, after the change.
impl Model {
    fn is_pinned(&self, page: u64) -> bool {
        self.pages.get(&page).is_some_and(|p| p.pinned)
    }
}

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

/// The stage 2 model. Thread-safe.
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
        Stage2Model {
            granule,
            inner: Mutex::new(Model {
                memslots: memslots.to_vec(),
                ..Model::default()
            }),
            generation: core::sync::atomic::AtomicU64::new(0),
        }
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
        self.inner.lock().is_pinned(ipa.page_base(self.granule).0)
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

    /// Adds a memslot.
    pub fn add_memslot(&self, slot: Memslot) {
        self.change().memslots.push(slot);
    }

    /// Removes a memslot; its pages forget their state.
    pub fn remove_memslot(&self, slot: u32) {
        let mut m = self.change();
        if let Some(i) = m.memslots.iter().position(|s| s.slot == slot) {
            let gone = m.memslots.remove(i);
            let range = gone.range.start.0..gone.range.end();
            let mut unpinned = 0;
            m.pages.retain(|p, page| {
                let keep = !range.contains(p);
                unpinned += u64::from(!keep && page.pinned);
                keep
            });
            m.pinned_pages -= unpinned;
        }
    }

    fn in_memslot(m: &Model, page: u64) -> bool {
        m.memslots.iter().any(|s| s.range.contains(Ipa(page)))
    }

    /// Host event: unmap the unpinned pages of `range` (swap-out, reclaim, NUMA migration,
    /// compaction, THP split). Returns the pages taken away; pinned pages stay.
    pub fn unmap(&self, range: IpaRange, why: Absence) -> Vec<Ipa> {
        let mut m = self.change();
        let mut taken = Vec::new();
        for page in range.pages(self.granule) {
            if m.is_pinned(page.0) || !Self::in_memslot(&m, page.0) {
                continue;
            }
            let p = m.pages.entry(page.0).or_default();
            if p.absent.is_none() {
                p.absent = Some(AbsenceState(why));
                taken.push(page);
            }
        }
        taken
    }

    /// Host event: KSM merges the unpinned pages of `range` (read-only, shared).
    pub fn ksm_merge(&self, range: IpaRange) -> Vec<Ipa> {
        let mut m = self.change();
        let mut merged = Vec::new();
        for page in range.pages(self.granule) {
            if m.is_pinned(page.0) || !Self::in_memslot(&m, page.0) {
                continue;
            }
            let p = m.pages.entry(page.0).or_default();
            if p.absent.is_none() && !p.ksm_shared {
                p.ksm_shared = true;
                p.write_protected = true;
                merged.push(page);
            }
        }
        merged
    }

    /// Host event: dirty logging write-protects every present page that is not pinned or
    /// exempt (start, and each clear round).
    pub fn dirty_log_protect(&self, range: Option<IpaRange>) {
        let mut m = self.change();
        m.dirty_logging = true;
        let slots: Vec<IpaRange> = match range {
            Some(r) => vec![r],
            None => m.memslots.iter().map(|s| s.range).collect(),
        };
        for r in slots {
            for page in r.pages(self.granule) {
                let p = m.pages.entry(page.0).or_default();
                if !p.exempt && !p.pinned {
                    p.write_protected = true;
                }
            }
        }
    }

    /// Host event: dirty logging stops; write protection that was only for logging goes.
    pub fn dirty_log_stop(&self) {
        let mut m = self.change();
        m.dirty_logging = false;
        for p in m.pages.values_mut() {
            if !p.ksm_shared {
                p.write_protected = false;
            }
        }
    }

    /// Host event: post-copy switch-over; every page not sent yet is left at the source.
    pub fn post_copy_switchover(&self, left_behind: IpaRange) {
        let mut m = self.change();
        for page in left_behind.pages(self.granule) {
            if !Self::in_memslot(&m, page.0) {
                continue;
            }
            let sent = m
                .pages
                .get(&page.0)
                .is_some_and(|p| p.absent.is_none() && (p.pinned || p.sent));
            if !sent {
                m.pages.entry(page.0).or_default().absent =
                    Some(AbsenceState(Absence::PostCopyPending));
            }
        }
    }

    /// Pages dirty logging cannot track (pinned, or exempt from write protection): a migration
    /// must assume they are dirty and send them again at stop-and-copy.
    pub fn untracked_pages(&self) -> u64 {
        let m = self.inner.lock();
        let exempt = m
            .pages
            .iter()
            .filter(|(_, p)| p.exempt && !p.pinned)
            .count();
        m.pinned_pages + exempt as u64
    }

    /// Makes `ipa`'s page impossible to fault in (the source died, the backing file is gone).
    pub fn make_unavailable(&self, ipa: Ipa) {
        self.inner
            .lock()
            .unavailable
            .insert(ipa.page_base(self.granule).0);
    }
}

impl HostBacking for Stage2Model {
    fn granule(&self) -> HostGranule {
        self.granule
    }

    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        let mut m = self.change();
        let pages: Vec<Ipa> = range.pages(self.granule).collect();
        for p in &pages {
            if !Self::in_memslot(&m, p.0) {
                return Err(HostError::NotInMemslot(*p));
            }
            if m.is_pinned(p.0) {
                return Err(HostError::Other(format!(
                    "IPA {p} pinned twice: the strategy must count references"
                )));
            }
            if m.unavailable.contains(&p.0) {
                return Err(HostError::Unavailable {
                    ipa: *p,
                    reason: "the page cannot be brought in".into(),
                });
            }
        }
        let requested = pages.len() as u64 * self.granule.size();
        if let Some(limit) = m.lock_limit {
            let now = m.pinned_pages * self.granule.size();
            if now + requested > limit {
                return Err(HostError::LockLimit { requested, limit });
            }
        }
        m.pinned_pages += pages.len() as u64;
        for p in pages {
            let page = m.pages.entry(p.0).or_default();
            // Pinning faults the page in and makes it writable (breaks KSM sharing).
            page.absent = None;
            page.write_protected = false;
            page.ksm_shared = false;
            page.pinned = true;
        }
        Ok(())
    }

    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let mut m = self.change();
        let pages: Vec<Ipa> = range.pages(self.granule).collect();
        if let Some(p) = pages.iter().find(|p| !m.is_pinned(p.0)) {
            return Err(HostError::NotPinned(*p));
        }
        m.pinned_pages -= pages.len() as u64;
        for p in pages {
            if let Some(page) = m.pages.get_mut(&p.0) {
                page.pinned = false;
            }
        }
        Ok(())
    }

    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        let mut m = self.change();
        let page = ipa.page_base(self.granule).0;
        if !Self::in_memslot(&m, page) {
            return Err(HostError::NotInMemslot(ipa));
        }
        if m.unavailable.contains(&page) {
            return Err(HostError::Unavailable {
                ipa,
                reason: "the page cannot be brought in".into(),
            });
        }
        let p = m.pages.entry(page).or_default();
        if p.absent.is_none() && !p.write_protected {
            return Ok(FaultIn::AlreadyPresent);
        }
        let was = p.absent.take();
        p.write_protected = false;
        p.ksm_shared = false;
        m.counters.faults_served += 1;
        match was.map(|a| a.0) {
            Some(Absence::Swapped) => m.counters.swap_ins += 1,
            Some(Absence::PostCopyPending) => m.counters.post_copy_fetches += 1,
            _ => {}
        }
        Ok(FaultIn::MadePresent)
    }

    fn page_state(&self, ipa: Ipa) -> PageState {
        let m = self.inner.lock();
        let page = ipa.page_base(self.granule).0;
        let in_memslot = Self::in_memslot(&m, page);
        let p = m.pages.get(&page).copied().unwrap_or_default();
        PageState {
            present: in_memslot && p.absent.is_none(),
            write_protected: p.write_protected,
            pinned: p.pinned,
            dirty_log_exempt: p.exempt,
            in_memslot,
        }
    }

    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        let mut m = self.change();
        let logging = m.dirty_logging;
        for page in range.pages(self.granule) {
            let p = m.pages.entry(page.0).or_default();
            p.exempt = exempt;
            if exempt && !p.ksm_shared {
                p.write_protected = false;
            } else if !exempt && logging && !p.pinned {
                p.write_protected = true;
            }
        }
        Ok(())
    }

    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        let mut m = self.change();
        for page in range.pages(self.granule) {
            if !Self::in_memslot(&m, page.0) {
                return Err(HostError::NotInMemslot(page));
            }
            m.pages.entry(page.0).or_default().sent = true;
            m.counters.sent_before_switchover += 1;
        }
        Ok(())
    }

    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        let mut m = self.change();
        let range = IpaRange::new(ipa, bytes.len() as u64);
        for page in range.pages(self.granule) {
            if !Self::in_memslot(&m, page.0) {
                return Err(HostError::NotInMemslot(page));
            }
            if m.unavailable.contains(&page.0) {
                return Err(HostError::Unavailable {
                    ipa: page,
                    reason: "the page cannot be brought in".into(),
                });
            }
            // The VMM's write path faults the page in as any host write would.
            let mut brought = None;
            if let Some(p) = m.pages.get_mut(&page.0) {
                brought = p.absent.take().map(|a| a.0);
                if !p.exempt {
                    // A host write to a write-protected (logged) page marks it dirty.
                    p.write_protected = p.ksm_shared;
                }
            }
            // The write path waits for the page like any host access would.
            match brought {
                Some(Absence::Swapped) => m.counters.swap_ins += 1,
                Some(Absence::PostCopyPending) => m.counters.post_copy_fetches += 1,
                _ => {}
            }
        }
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
        assert_eq!(taken, vec![Ipa(0x4000_2000), Ipa(0x4000_3000)]);
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
