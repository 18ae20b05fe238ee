//! What one run measures, and which erratum explains each lost record.

use std::collections::BTreeMap;

use serde::Serialize;

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// The strategy.
    pub strategy: String,
    /// The scenario.
    pub scenario: String,
    /// Records the SPUs tried to write (while the guest's buffer was enabled).
    pub records_attempted: u64,
    /// Records that reached the guest's buffer and were kept.
    pub records_written: u64,
    /// Records not taken because profiling was stopped (blackout): an enable, a fault, a host
    /// interrupt or a copy being served.
    pub lost_blackout: u64,
    /// Of those, records lost while a buffer enable was being served.
    pub lost_blackout_enable: u64,
    /// Records given up by a rewind or discard after a repaired fault.
    pub lost_recovery: u64,
    /// Records lost because the guest's session was stopped by a fatal event.
    pub lost_fatal: u64,
    /// Of the fatal losses, those caused by the guest's own misprogrammed buffer (a page
    /// outside its RAM): lost on hardware too.
    pub lost_guest_error: u64,
    /// Stage 2 faults the SPUs took.
    pub stage2_faults: u64,
    /// Faults on buffer pages the guest mapped outside every memslot.
    pub guest_error_faults: u64,
    /// Guest-visible fatal events (injected faults, refusals, SPE disabled).
    pub fatal_events: u64,
    /// Buffer management interrupts the guest took (buffer full and faults).
    pub guest_interrupts: u64,
    /// Of those, with PMBSR.DL = 1: Linux flags the AUX record TRUNCATED | PARTIAL.
    pub guest_truncated: u64,
    /// Of those, with PMBSR.COLL = 1: Linux flags the AUX record COLLISION.
    pub guest_collisions: u64,
    /// A digest of every guest-visible interrupt: vCPU, PMBSR, PMBPTR and the bytes of the
    /// guest's buffer up to PMBPTR. Equal digests: the guest saw exactly the same thing.
    /// Computed only when [`crate::RunOptions::guest_digest`] asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_digest: Option<u64>,
    /// Most bytes pinned at once (guest pages, or host buffers for shadow-buffer).
    pub pinned_peak_bytes: u64,
    /// Bytes pinned, averaged over the run.
    pub pinned_mean_bytes: f64,
    /// Most bytes pinned while no vCPU had its buffer enabled.
    pub pinned_idle_peak_bytes: u64,
    /// Blackout windows, all vCPUs.
    pub blackout_count: u64,
    /// Total blackout time over all vCPUs, ns.
    pub blackout_ns: f64,
    /// Longest single blackout, ns.
    pub longest_blackout_ns: f64,
    /// Longest time a buffer enable kept the SPU from profiling, ns (0: enables are free).
    pub longest_enable_ns: f64,
    /// Longest time from a buffer enable to the first record kept after it, ns.
    pub longest_enable_to_first_record_ns: f64,
    /// Stage 2 faults the strategy attributed to a stage 1 table page.
    pub table_faults: u64,
    /// Faults with PMBSR.DL = 1.
    pub dl_events: u64,
    /// Partial records left in the guest's buffer where the host resumed past them (a fault
    /// mid-record reported with DL = 0): the stream is torn there.
    pub torn_records: u64,
    /// Bytes of a faulting record before PMBPTR that an unordered SPU left unwritten (stale).
    pub stale_bytes_before_fault: u64,
    /// Samples taken and dropped by the SPU because the guest chose discard mode.
    pub records_discarded_by_mode: u64,
    /// Samples not taken because the previous one was still in flight (PMBSR.COLL, rule 13).
    pub samples_collided: u64,
    /// Host pin and unpin operations.
    pub pin_ops: u64,
    /// Bytes of buffer given up by rewinds and discards.
    pub bytes_lost: u64,
    /// Host invalidations the strategy refused.
    pub invalidations_refused: u64,
    /// Migrations refused or degraded to stop-and-copy.
    pub migrations_refused: u64,
    /// Memory hot-unplugs refused.
    pub unplugs_refused: u64,
    /// Time the VM was stopped for migration (final copy), ns.
    pub migration_downtime_ns: f64,
    /// Pages sent more than once by pre-copy (dirty rounds and the final copy).
    pub pages_resent: u64,
    /// Pages dirty logging could not track at the final copy (pinned or exempt).
    pub untracked_pages_at_stop: u64,
    /// Pages the strategy had sent before post-copy switch-over.
    pub pages_sent_before_switchover: u64,
    /// Trapped guest accesses to PMB* registers (shadow-buffer).
    pub traps: u64,
    /// Bytes the host copied into guest buffers (shadow-buffer).
    pub bytes_copied: u64,
    /// Host CPU time spent copying, ns (shadow-buffer).
    pub copy_ns: f64,
    /// Longest a record waited in the host buffer before reaching guest memory, ns.
    pub max_copy_delay_ns: f64,
    /// Blackout spent waiting for a copy to free a host half, ns.
    pub copy_wait_ns: f64,
    /// Bytes still pinned after VM stop (must be 0).
    pub pinned_after_stop: u64,
    /// Records lost, by the erratum of the strategy that explains the loss (`guest` for the
    /// guest's own misprogramming).
    pub loss_by_erratum: BTreeMap<String, u64>,
    /// Records lost for a reason no declared erratum of the strategy covers (must be 0).
    pub unexplained_loss: u64,
    /// Pinned bytes over time: `[ms, bytes]`, about 100 samples.
    pub pinned_timeline: Vec<[f64; 2]>,
    /// The first blackout windows: `[start ms, length µs]`, at most 256.
    pub blackout_windows: Vec<[f64; 2]>,
}

impl Metrics {
    /// Records lost, all causes.
    pub fn lost(&self) -> u64 {
        self.lost_blackout + self.lost_recovery + self.lost_fatal
    }

    /// Counts `n` records lost for `cause` against the erratum that explains it, or as
    /// unexplained when `declared` (the strategy's errata ids) has none.
    pub(crate) fn lose(&mut self, cause: LossCause, n: u64, declared: &[&str]) {
        if cause == LossCause::GuestError {
            self.lost_guest_error += n;
            *self.loss_by_erratum.entry("guest".into()).or_insert(0) += n;
            return;
        }
        match explaining_erratum(&self.strategy, cause).filter(|id| declared.contains(id)) {
            Some(id) => *self.loss_by_erratum.entry(id.to_string()).or_insert(0) += n,
            None => self.unexplained_loss += n,
        }
    }
}

/// Why a record was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LossCause {
    /// Profiling stopped while a buffer enable was served.
    EnableBlackout,
    /// Profiling stopped while a fault was serviced.
    FaultBlackout,
    /// Profiling stopped while the host handled a host buffer-full.
    HostInterrupt,
    /// Profiling stopped until a copy freed a host half.
    CopyWait,
    /// Given up by a rewind or discard after a repaired fault.
    Recovery,
    /// The session was stopped by a buffer enable the strategy refused or SPE disabled.
    FatalAtEnable,
    /// The session was stopped by a fault handed to the guest.
    FatalAtFault,
    /// The guest's buffer points outside its RAM: lost on hardware too.
    GuestError,
}

/// The erratum of `strategy` that explains a loss of `cause`, if any (docs/errata).
fn explaining_erratum(strategy: &str, cause: LossCause) -> Option<&'static str> {
    use LossCause::*;
    match (strategy, cause) {
        ("pin-all", EnableBlackout) => Some("PA-02"),
        ("pin-all", FatalAtEnable) => Some("PA-05"),
        ("pin-buffer", EnableBlackout) => Some("PB-02"),
        ("pin-buffer", FaultBlackout | Recovery) => Some("PB-03"),
        ("pin-buffer", FatalAtEnable) => Some("PB-01"),
        ("pin-buffer", FatalAtFault) => Some("PB-07"),
        ("fault-translate", FaultBlackout) => Some("FT-02"),
        ("fault-translate", Recovery) => Some("FT-01"),
        ("fault-translate", FatalAtFault) => Some("FT-05"),
        ("shadow-buffer", HostInterrupt) => Some("SB-04"),
        ("shadow-buffer", CopyWait) => Some("SB-06"),
        ("shadow-buffer", FatalAtFault) => Some("SB-05"),
        _ => None,
    }
}
