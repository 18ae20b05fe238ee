//! The host backing trait: what a strategy may ask of stage 2 and of the VMM.
//!
//! The VMM implements it over its memory manager (KVM memslots, mlock or pin_user_pages,
//! dirty logging, MMU notifiers). Everything here works on IPAs: there is no way to hand a
//! guest virtual address to it. The `spe-host-model` crate implements it as a model for tests and
//! the simulator.

use core::fmt;

use crate::addr::{Granule, Ipa};
use crate::arch::buffer_regs::{Pmbptr, Pmbsr};

/// The host page size stage 2 works in. KVM/arm64 hosts use 4KB, 16KB or 64KB pages; the
/// strategies pin and fault in whole host pages.
pub type HostGranule = Granule;

/// A vCPU index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VcpuId(pub u32);

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {}", self.0)
    }
}

/// A range of guest IPA space, `start..start + len`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IpaRange {
    /// First IPA.
    pub start: Ipa,
    /// Length in bytes.
    pub len: u64,
}

impl IpaRange {
    /// `start..start + len`.
    pub const fn new(start: Ipa, len: u64) -> Self {
        IpaRange { start, len }
    }

    /// One page of `granule` containing `ipa`.
    pub const fn page(ipa: Ipa, granule: Granule) -> Self {
        IpaRange {
            start: ipa.page_base(granule),
            len: granule.size(),
        }
    }

    /// The first IPA after the range (saturating at 2^64).
    pub const fn end(&self) -> u64 {
        self.start.0.saturating_add(self.len)
    }

    /// Whether `ipa` is inside.
    pub const fn contains(&self, ipa: Ipa) -> bool {
        ipa.0 >= self.start.0 && ipa.0 < self.end()
    }

    /// The pages of `granule` the range touches, in order.
    pub fn pages(&self, granule: Granule) -> impl Iterator<Item = Ipa> + use<> {
        let first = self.start.page_base(granule).0;
        let end = self.end();
        let size = granule.size();
        core::iter::successors(Some(first), move |p: &u64| p.checked_add(size))
            .take_while(move |p| *p < end)
            .map(Ipa)
    }
}

impl fmt::Debug for IpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{:#x}", self.start, self.end())
    }
}

/// A memslot: a range of guest RAM the VMM backs with host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Memslot {
    /// The VMM's slot number.
    pub slot: u32,
    /// The guest RAM it covers.
    pub range: IpaRange,
}

/// What stage 2 holds for one host page, as far as a strategy needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PageState {
    /// Mapped at stage 2: an SPU write will not fault.
    pub present: bool,
    /// Write-protected at stage 2 (dirty logging, KSM sharing): an SPU write faults.
    pub write_protected: bool,
    /// Pinned (by anyone) and so never invalidated.
    pub pinned: bool,
    /// Exempt from dirty-log write protection.
    pub dirty_log_exempt: bool,
    /// Inside a memslot at all.
    pub in_memslot: bool,
}

impl PageState {
    /// Whether an SPU write to this page succeeds at stage 2 now.
    pub const fn writable(&self) -> bool {
        self.present && !self.write_protected
    }
}

/// Where a [`HostBacking::write_guest_batch`] stopped: the writes before `written` are done,
/// that one failed with `error`, the rest were not attempted.
#[derive(Debug)]
pub struct WriteStopped {
    /// Writes completed.
    pub written: usize,
    /// Why the next one failed.
    pub error: HostError,
}

/// How a fault-in went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultIn {
    /// The page was already present and writable.
    AlreadyPresent,
    /// The page was made present (and writable): from swap, by breaking KSM sharing, by
    /// fetching it from the migration source, by removing write protection.
    MadePresent,
}

/// What the host could not do, with the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The IPA is not backed by any memslot (MMIO, a hole, a removed slot).
    #[error("IPA {0} is not in any memslot; the guest points outside its RAM")]
    NotInMemslot(Ipa),
    /// Pinning would exceed the host's locked-memory limit.
    #[error(
        "pinning {requested:#x} more bytes exceeds the locked-memory limit of {limit:#x} bytes; raise RLIMIT_MEMLOCK or lower the pinned-bytes cap"
    )]
    LockLimit {
        /// Bytes the request needed.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// Unpinning a page that is not pinned: a strategy bug the VMM should report.
    #[error("unpin of IPA {0}, which is not pinned (unbalanced pin/unpin)")]
    NotPinned(Ipa),
    /// The page could not be made present (e.g. the migration source is gone).
    #[error("IPA {ipa} cannot be made present: {reason}")]
    Unavailable {
        /// The page.
        ipa: Ipa,
        /// Why.
        reason: String,
    },
    /// Anything else the VMM reports.
    #[error("host backing failed: {0}")]
    Other(String),
}

/// What a strategy may ask of stage 2 and of the VMM. Called from vCPU threads, the migration
/// thread and the MMU-notifier path at once, so `&self` and `Sync`.
///
/// Pins are *not* counted by the host: a strategy pins a page once and unpins it once (the
/// strategies count references themselves, across vCPUs).
pub trait HostBacking: Sync {
    /// The host page size stage 2 is managed in.
    fn granule(&self) -> HostGranule;

    /// Pins `range` (whole host pages): present, writable and never invalidated until unpinned.
    fn pin(&self, range: IpaRange) -> Result<(), HostError>;

    /// Undoes one [`HostBacking::pin`] of `range`.
    fn unpin(&self, range: IpaRange) -> Result<(), HostError>;

    /// Makes the page containing `ipa` present and writable at stage 2; may sleep (swap-in,
    /// post-copy fetch).
    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError>;

    /// The stage 2 state of the page containing `ipa`.
    fn page_state(&self, ipa: Ipa) -> PageState;

    /// Exempts `range` from (or returns it to) dirty-log write protection. An exempt page stays
    /// writable and is reported dirty in every round until the vCPUs stop.
    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError>;

    /// Asks the migration code to send `range` before post-copy switch-over, so the destination
    /// never has to demand it.
    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError>;

    /// Writes guest memory through the VMM's ordinary path (may sleep; marks pages dirty).
    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError>;

    /// Writes each `(ipa, bytes)` of `writes` in order, as [`Self::write_guest`] would, and
    /// stops at the first that fails. shadow-buffer's copy makes one call per copy (a host half
    /// lands in many scattered guest pages), so a host can take its locks once for the batch;
    /// the default calls `write_guest` for each.
    fn write_guest_batch(&self, writes: &[(Ipa, &[u8])]) -> Result<(), WriteStopped> {
        for (written, (ipa, bytes)) in writes.iter().enumerate() {
            self.write_guest(*ipa, bytes)
                .map_err(|error| WriteStopped { written, error })?;
        }
        Ok(())
    }

    /// Injects a buffer management event into `vcpu`: another vCPU than the one whose event is
    /// being handled, or that one when the event's outcome must be a value (a trapped read that
    /// found the buffer faulted: the read returns the new PMBSR and the interrupt is raised
    /// here). Otherwise, for the current vCPU, return [`crate::event::Outcome::Inject`].
    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError>;

    /// Disables SPE for `vcpu` (another vCPU than the current one).
    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipa_range_lists_every_page_it_touches() {
        let r = IpaRange::new(Ipa(0x1800), 0x1000);
        let pages: Vec<Ipa> = r.pages(Granule::K4).collect();
        assert_eq!(pages, vec![Ipa(0x1000), Ipa(0x2000)]);
        assert!(r.contains(Ipa(0x27ff)) && !r.contains(Ipa(0x2800)));
        assert_eq!(
            IpaRange::page(Ipa(0x1_2345), Granule::K64).start,
            Ipa(0x1_0000)
        );
    }

    #[test]
    fn a_range_at_the_top_of_the_address_space_does_not_wrap() {
        let r = IpaRange::new(Ipa(u64::MAX - 0xfff), 0x2000);
        assert_eq!(r.end(), u64::MAX);
        assert_eq!(r.pages(Granule::K4).count(), 1);
    }
}
