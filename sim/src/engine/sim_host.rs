//! The simulator's host: the stage 2 model, plus guest-memory writes that land in the
//! simulated RAM after each strategy call, and the dirty pages a migration must send again.

use std::collections::BTreeSet;

use parking_lot::Mutex;
use spe_host_model::Stage2Model;
use spe_policy::arch::{Pmbptr, Pmbsr};
use spe_policy::host::{FaultIn, HostGranule, PageState};
use spe_policy::{HostBacking, HostError, Ipa, IpaRange, VcpuId};

use super::guest::Guest;

/// Writes waiting to land in the simulated RAM: (where, how many bytes), and the bytes.
type PendingWrites = (Vec<(Ipa, usize)>, Vec<u8>);

/// The stage 2 model with a write-back queue and dirty tracking.
#[derive(Debug)]
pub(crate) struct SimHost {
    pub(crate) model: Stage2Model,
    /// Guest-memory writes not yet applied: where, and their bytes in `write_data` (one buffer
    /// reused across calls, no allocation per write).
    writes: Mutex<PendingWrites>,
    dirty: Mutex<Option<BTreeSet<u64>>>,
    logging: std::sync::atomic::AtomicBool,
}

impl SimHost {
    pub(crate) fn new(model: Stage2Model) -> Self {
        SimHost {
            model,
            writes: Mutex::new((Vec::new(), Vec::new())),
            dirty: Mutex::new(None),
            logging: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Applies the guest-memory writes made through [`HostBacking::write_guest`].
    pub(crate) fn flush_writes(&self, guest: &mut Guest) {
        let mut w = self.writes.lock();
        let (list, data) = &mut *w;
        let mut at = 0;
        for (ipa, len) in list.drain(..) {
            guest.written.mark(ipa, len as u64);
            let _ = guest.ram.write(ipa, &data[at..at + len]);
            at += len;
        }
        data.clear();
    }

    /// Dirty logging starts: writes are tracked from now on.
    pub(crate) fn start_logging(&self) {
        *self.dirty.lock() = Some(BTreeSet::new());
        self.logging
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Dirty logging stops.
    pub(crate) fn stop_logging(&self) {
        *self.dirty.lock() = None;
        self.logging
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// A write to `ipa`'s page (by the SPU or the host).
    #[inline]
    pub(crate) fn mark_dirty(&self, ipa: Ipa) {
        if self.logging.load(std::sync::atomic::Ordering::Relaxed) {
            self.log_dirty(ipa);
        }
    }

    /// [`Self::mark_dirty`] while logging: out of line, the common case is not logging.
    #[cold]
    fn log_dirty(&self, ipa: Ipa) {
        if let Some(d) = self.dirty.lock().as_mut() {
            d.insert(ipa.0 & !0xfff);
        }
    }

    /// Pages a dirty-log round must send again: the tracked dirty pages that are not pinned
    /// or exempt, plus every untracked page. The tracked set is cleared.
    pub(crate) fn take_resend(&self) -> u64 {
        let tracked = self.dirty.lock().as_mut().map(std::mem::take);
        let dirty = tracked.map_or(0, |d| {
            d.into_iter()
                .filter(|p| {
                    let s = self.model.page_state(Ipa(*p));
                    !s.pinned && !s.dirty_log_exempt
                })
                .count() as u64
        });
        dirty + self.model.untracked_pages()
    }
}

impl HostBacking for SimHost {
    fn granule(&self) -> HostGranule {
        self.model.granule()
    }
    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        self.model.pin(range)
    }
    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        self.model.unpin(range)
    }
    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        let r = self.model.fault_in(ipa);
        // Made writable again: the SPU's next write dirties it.
        if r.is_ok() {
            self.mark_dirty(ipa);
        }
        r
    }
    fn page_state(&self, ipa: Ipa) -> PageState {
        self.model.page_state(ipa)
    }
    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        self.model.set_dirty_log_exempt(range, exempt)
    }
    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        self.model.send_before_switchover(range)
    }
    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        self.model.write_guest(ipa, bytes)?;
        for page in IpaRange::new(ipa, bytes.len() as u64).pages(self.model.granule()) {
            self.mark_dirty(page);
        }
        let mut w = self.writes.lock();
        w.0.push((ipa, bytes.len()));
        w.1.extend_from_slice(bytes);
        Ok(())
    }
    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError> {
        self.model.inject(vcpu, pmbsr, pmbptr)
    }
    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        self.model.disable_spe(vcpu)
    }
}
