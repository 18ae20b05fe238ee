//! The backing strategy trait (ARCHITECTURE.md §5): events in, requests to the host backing
//! and an [`Outcome`] out, with a profile and an erratum set.

use crate::errata::{Erratum, GuestTold, Profile};
use crate::event::{Event, Outcome};
use crate::guest_memory::GuestMemoryRead;
use crate::guest_notice::{GuestNotice, StrategyId};
use crate::host::{HostBacking, HostError};

/// Why a strategy could not handle an event: the host backing failed. Anything a guest does
/// is an [`Outcome`], never an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{strategy}: {action} failed: {source}")]
pub struct PolicyError {
    /// The strategy.
    pub strategy: &'static str,
    /// What it was doing.
    pub action: &'static str,
    /// The host's error.
    #[source]
    pub source: HostError,
}

impl PolicyError {
    /// A `map_err` adapter: `host.pin(r).map_err(PolicyError::during("pin-buffer", "pinning"))`.
    pub fn during(
        strategy: &'static str,
        action: &'static str,
    ) -> impl FnOnce(HostError) -> PolicyError {
        move |source| PolicyError {
            strategy,
            action,
            source,
        }
    }
}

/// Counters every strategy keeps; the simulator and benchmarks read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StrategyStats {
    /// Bytes pinned now.
    pub pinned_bytes: u64,
    /// Most bytes pinned at once.
    pub peak_pinned_bytes: u64,
    /// Host pin calls.
    pub pin_ops: u64,
    /// Host unpin calls.
    pub unpin_ops: u64,
    /// Stage 1 walks performed.
    pub walks: u64,
    /// Buffer enables served from the pin cache without a walk.
    pub cache_hits: u64,
    /// Stage 2 faults on buffer pages handled.
    pub stage2_faults_buffer: u64,
    /// Stage 2 faults whose cause was a stage 1 table page.
    pub stage2_faults_table: u64,
    /// Bytes given up by rewinding to the last provable record.
    pub bytes_lost_rewind: u64,
    /// Bytes given up by discarding a region.
    pub bytes_lost_discard: u64,
    /// Buffer management events injected into the guest by the strategy.
    pub injected: u64,
    /// Requests refused (invalidations of pinned pages, migrations, enables over the cap).
    pub refused: u64,
}

impl StrategyStats {
    /// Copies the pin counters of `ledger` (current, peak, operations).
    pub fn record_pins(&mut self, ledger: &crate::pin_ledger::PinLedger) {
        self.pinned_bytes = ledger.pinned_bytes();
        self.peak_pinned_bytes = self.peak_pinned_bytes.max(ledger.peak_bytes());
        self.pin_ops = ledger.pin_ops;
        self.unpin_ops = ledger.unpin_ops;
    }
}

/// A way of backing guest SPE buffers at stage 2.
///
/// Called from vCPU threads, the migration thread and the MMU-notifier path at once: `&self`,
/// and every implementation keeps its state behind its own locks.
pub trait BackingStrategy: Send + Sync {
    /// The strategy's stable name (`pin-all`, `pin-buffer`, `fault-translate`, ...).
    fn name(&self) -> &'static str;

    /// The strategy's code in the guest notice.
    fn id(&self) -> StrategyId;

    /// Which of cheap/fast/reliable it keeps, and why.
    fn profile(&self) -> Profile;

    /// Its errata.
    fn errata(&self) -> &'static [Erratum];

    /// Handles one event.
    fn on_event<G, H>(
        &self,
        event: &Event<'_>,
        guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized;

    /// Counters so far.
    fn stats(&self) -> StrategyStats;

    /// The per-vCPU buffer cap in bytes the strategy enforces, if any.
    fn buffer_cap_bytes(&self) -> Option<u64> {
        None
    }

    /// The notice to expose to the guest: the bits of every erratum it declares. A strategy
    /// whose errata depend on its configuration overrides this with [`notice_for`].
    fn guest_notice(&self) -> GuestNotice {
        notice_for(self.id(), self.errata().iter(), self.buffer_cap_bytes())
    }
}

/// The guest notice of strategy `id` with the errata that apply and the buffer cap in bytes.
pub fn notice_for<'a>(
    id: StrategyId,
    errata: impl Iterator<Item = &'a Erratum>,
    cap_bytes: Option<u64>,
) -> GuestNotice {
    let bits = errata
        .filter_map(|e| match e.guest_told {
            GuestTold::NoticeBit(b) if b < 32 => Some(1u32 << b),
            _ => None,
        })
        .fold(0, |a, b| a | b);
    let cap = cap_bytes.map_or(0, |b| u32::try_from(b / 4096).unwrap_or(u32::MAX));
    GuestNotice::new(id, bits, cap)
}
