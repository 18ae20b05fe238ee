//! What one run measures: samples due, kept and lost by cause (charged to the strategy, or the
//! bare-metal baseline), the time vCPUs were kept out of the guest (stalls), pins, copies and
//! migrations; and, for each charged loss, what started it and which erratum explains it.
//!
//! The sampling rule (spec sheet §1.11b, Arm pseudocode `SPEPreExecution`): an operation counts
//! towards the sample interval only while `StatisticalProfilingEnabled()` holds, which is false
//! at EL2 and while the buffer is disabled or stopped (PMBLIMITR.E = 0 or PMBSR.S = 1). So a
//! vCPU kept in the host (a trap, a pin on the enable path, a fault serviced before re-entry, a
//! copy) has no sample due: that is a *stall*, a latency cost. What is *lost* is guest execution
//! while the SPU is stopped or discarding: those operations go unprofiled, counted as the
//! samples they would have given at the configured interval.

use std::collections::BTreeMap;

use serde::Serialize;

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Metrics {
    /// The strategy.
    pub strategy: String,
    /// The scenario.
    pub scenario: String,
    /// vCPUs simulated (the VM's).
    pub vcpus: u32,
    /// Guest RAM simulated, bytes (the VM's): the denominator of every "% of RAM".
    pub ram_bytes: u64,
    /// The guest's AUX buffer per vCPU, bytes.
    pub buffer_bytes: u64,
    /// The session simulated, ms of wall time per vCPU.
    pub duration_ms: f64,
    /// Samples due: sample intervals of guest execution while the guest profiled (not while a
    /// vCPU was stalled in the host, the profiled task was away, or perf was stopped).
    pub samples_due: u64,
    /// Records that reached the guest's buffer and stayed there.
    pub records_written: u64,
    /// Samples lost and charged to the strategy: `lost_by_cause` adds up to it.
    pub samples_lost: u64,
    /// Charged losses by cause (`spu-stopped`, `background-service`, `recovery`, `fatal`,
    /// `copy-wait`).
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Samples the same guest would lose on bare metal (its own interrupt handling with the
    /// buffer stopped, collisions, discard mode, its own mistakes): not charged to any strategy.
    pub baseline_lost: u64,
    /// Baseline losses by cause (`guest-irq`, `collision`, `discard-mode`, `guest-error`).
    pub baseline_by_cause: BTreeMap<String, u64>,
    /// Time vCPUs were kept out of the guest by the host, all vCPUs, ns.
    pub stall_ns: f64,
    /// The longest single stall, ns.
    pub longest_stall_ns: f64,
    /// Stall time by kind (`enable`, `trap`, `irq-forward`, `host-irq`, `fault-service`,
    /// `copy`), ns.
    pub stall_by_kind: BTreeMap<String, f64>,
    /// Stalls (count).
    pub stalls: u64,
    /// One-time: the longest stall of a vCPU's first buffer enable, ns.
    pub first_enable_stall_ns: f64,
    /// One-time: the first enables' stalls of all vCPUs, ns (left out of the steady rate).
    pub first_enable_stall_total_ns: f64,
    /// Buffer enables after each vCPU's first (re-arms at buffer full, context switches,
    /// perf restarts).
    pub reenables: u64,
    /// Stall time of those re-enables, ns: per enable, `reenable_stall_ns / reenables`.
    pub reenable_stall_ns: f64,
    /// Longest stall of a buffer enable or of the profiling path (faults, interrupts, copies),
    /// ns: what "fast" is judged on.
    pub longest_profiling_stall_ns: f64,
    /// One-time host work before the first vCPU runs (pin-all at VM start), ns: not a stall,
    /// the guest has not started.
    pub vm_start_ns: f64,
    /// Stage 2 faults the SPUs took (EC 0x25).
    pub stage2_faults: u64,
    /// Of those, Permission faults (a page write-protected by dirty logging or KSM).
    pub stage2_permission_faults: u64,
    /// Stage 1 faults the SPUs took (EC 0x24: the guest's own mapping).
    pub stage1_faults: u64,
    /// Faults on buffer pages the guest mapped outside every memslot.
    pub guest_error_faults: u64,
    /// Guest-visible fatal events (injected faults, refusals, SPE disabled).
    pub fatal_events: u64,
    /// Buffer management interrupts the guest took (buffer full and faults).
    pub guest_interrupts: u64,
    /// Buffer events the guest received, by what its PMBSR said (`buffer-full`,
    /// `size-too-large`, `stage1-fault`, `stage2-fault`, `other`), and `spe-disabled` when the
    /// host disabled SPE for a vCPU.
    pub guest_events: BTreeMap<String, u64>,
    /// The guest's accesses to PMB* registers (trapped or not).
    pub pmb_accesses: u64,
    /// Bytes of records the SPU wrote (into the guest's buffer, or the host buffer).
    pub spu_bytes: u64,
    /// Of those, with PMBSR.DL = 1: Linux flags the AUX record TRUNCATED | PARTIAL.
    pub guest_truncated: u64,
    /// Of those, with PMBSR.COLL = 1: Linux flags the AUX record COLLISION.
    pub guest_collisions: u64,
    /// A digest of every guest-visible interrupt: vCPU, PMBSR, PMBPTR and the bytes of the
    /// guest's buffer up to PMBPTR. Equal digests: the guest saw exactly the same thing.
    /// Computed only when [`crate::RunOptions::guest_digest`] asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_digest: Option<u64>,
    /// The same probe, interrupt by interrupt for each vCPU (PMBSR but its COLL bit, PMBPTR
    /// and the buffer's bytes; at most 4096 per vCPU): runs with different costs lose different
    /// samples but must show the same sequence, as far as the shorter run goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_interrupt_digests: Vec<Vec<u64>>,
    /// Most bytes pinned at once (guest pages, or host buffers for shadow-buffer).
    pub pinned_peak_bytes: u64,
    /// Bytes pinned, averaged over the run.
    pub pinned_mean_bytes: f64,
    /// Most bytes pinned while no vCPU had its buffer enabled.
    pub pinned_idle_peak_bytes: u64,
    /// Stage 2 faults the strategy attributed to a stage 1 table page.
    pub table_faults: u64,
    /// Faults with PMBSR.DL = 1.
    pub dl_events: u64,
    /// Partial records left in the guest's buffer where the host resumed past them (a fault
    /// mid-record reported with DL = 0): the stream is torn there.
    pub torn_records: u64,
    /// Bytes of a faulting record before PMBPTR that an unordered SPU left unwritten (stale).
    pub stale_bytes_before_fault: u64,
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
    /// Policies moved by `snapshot-restore` (save, stop, restore).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_restores: u64,
    /// Time the VM was stopped for migration (final copy), ns.
    pub migration_downtime_ns: f64,
    /// Pages sent more than once by pre-copy (dirty rounds and the final copy).
    pub pages_resent: u64,
    /// Pages dirty logging could not track at the final copy (pinned or exempt).
    pub untracked_pages_at_stop: u64,
    /// Pages the strategy had sent before post-copy switch-over.
    pub pages_sent_before_switchover: u64,
    /// Trapped guest accesses to PMB* registers.
    pub traps: u64,
    /// Bytes the host copied into guest buffers (shadow-buffer).
    pub bytes_copied: u64,
    /// Bytes the SPU wrote into the host buffer that never reached the guest's (shadow-buffer:
    /// a fault found at copy time drops the records after it).
    pub bytes_dropped: u64,
    /// Host CPU time spent copying (bytes and walks, not the waits for swap-in or a post-copy
    /// fetch), ns (shadow-buffer).
    pub copy_ns: f64,
    /// Longest a record waited in the host buffer before reaching guest memory, ns.
    pub max_copy_delay_ns: f64,
    /// Time the SPU stood stopped waiting for a copy to free a host half, ns.
    pub copy_wait_ns: f64,
    /// Bytes still pinned after VM stop (must be 0).
    pub pinned_after_stop: u64,
    /// Charged samples lost, by what the run observed that started the loss (see
    /// [`LossOrigin::name`]): `stage2-fault/reclaimed`, `host-buffer-full`, `size-too-large`...
    pub loss_by_origin: BTreeMap<String, u64>,
    /// Charged samples lost, by the erratum that explains the loss: the one its origin names
    /// among those the strategy declares ([`Loss::explaining_erratum`]).
    pub loss_by_erratum: BTreeMap<String, u64>,
    /// Samples the accounting could not place (must be 0).
    pub unexplained_loss: u64,
    /// Pinned bytes over time: `[ms, bytes]`, about 100 samples.
    pub pinned_timeline: Vec<[f64; 2]>,
    /// The first stalls: `[start ms, length µs]`, at most 256.
    pub stall_windows: Vec<[f64; 2]>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Metrics {
    /// Charged loss as a fraction of the samples due.
    pub fn loss_fraction(&self) -> f64 {
        self.samples_lost as f64 / self.samples_due.max(1) as f64
    }

    /// Guest time simulated, all vCPUs, s.
    pub fn guest_seconds(&self) -> f64 {
        f64::from(self.vcpus) * self.duration_ms / 1e3
    }

    /// Stall per second of guest time (ns/s), one-time first enables included.
    pub fn stall_ns_per_s(&self) -> f64 {
        self.stall_ns / self.guest_seconds().max(1e-9)
    }

    /// Steady-state stall per second of guest time (ns/s): every stall but the vCPUs' first
    /// enables.
    pub fn steady_stall_ns_per_s(&self) -> f64 {
        (self.stall_ns - self.first_enable_stall_total_ns).max(0.0) / self.guest_seconds().max(1e-9)
    }

    /// The peak pinned bytes as a fraction of the VM's RAM.
    pub fn pinned_fraction(&self) -> f64 {
        self.pinned_peak_bytes as f64 / self.ram_bytes.max(1) as f64
    }

    /// Samples lost to `cause` (charged or baseline).
    pub fn lost_to(&self, cause: LossCause) -> u64 {
        let map = if cause.is_baseline() {
            &self.baseline_by_cause
        } else {
            &self.lost_by_cause
        };
        map.get(cause.name()).copied().unwrap_or(0)
    }

    /// Counts `n` samples lost to `loss`: charged to the strategy (and to the erratum its
    /// origin names, if the strategy declares it), or to the bare-metal baseline.
    pub(crate) fn lose(&mut self, loss: Loss, n: u64, declared: &[&str]) {
        if n == 0 {
            return;
        }
        let cause = loss.cause;
        if cause.is_baseline() {
            self.baseline_lost += n;
            *self
                .baseline_by_cause
                .entry(cause.name().into())
                .or_insert(0) += n;
            return;
        }
        self.samples_lost += n;
        *self.lost_by_cause.entry(cause.name().into()).or_insert(0) += n;
        *self
            .loss_by_origin
            .entry(loss.origin.name().into())
            .or_insert(0) += n;
        match loss.explaining_erratum(declared) {
            Some(id) => *self.loss_by_erratum.entry(id.to_string()).or_insert(0) += n,
            None => self.unexplained_loss += n,
        }
    }

    /// Counts a stall of `ns` of `kind` starting at `now` (ns).
    pub(crate) fn stall(&mut self, now: f64, ns: f64, kind: StallKind) {
        if ns <= 0.0 {
            return;
        }
        self.stalls += 1;
        self.stall_ns += ns;
        self.longest_stall_ns = self.longest_stall_ns.max(ns);
        *self.stall_by_kind.entry(kind.name().into()).or_insert(0.0) += ns;
        if self.stall_windows.len() < 256 {
            self.stall_windows.push([now / 1e6, ns / 1e3]);
        }
    }
}

/// Why a sample due was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The SPU stopped at an event bare metal would not have (a stage 2 fault, a host
    /// buffer-full) and the guest ran on until the host took the interrupt.
    SpuStopped,
    /// The host serviced the event in the background while the guest ran with the SPU
    /// stopped (`service = "background"`).
    BackgroundService,
    /// Records given up by a rewind or discard after a repaired fault.
    Recovery,
    /// The session was stopped by the strategy (an enable refused, SPE disabled, a fault the
    /// host could not repair handed to the guest): every later sample is lost.
    Fatal,
    /// shadow-buffer: both host halves full, the SPU waits for a copy.
    CopyWait,
    /// Baseline: the guest's own buffer management interrupt (the SPU's stop-to-interrupt
    /// latency and the driver's handler, with the buffer stopped), as on bare metal.
    GuestIrq,
    /// Baseline: a sample collided with one in flight (PMBSR.COLL), as on bare metal.
    Collision,
    /// Baseline: the guest chose discard mode (PMBLIMITR.FM): samples are taken and dropped.
    DiscardMode,
    /// Baseline: the guest's own mistake (a buffer page outside its RAM, registers against
    /// the enable rules): lost on bare metal too.
    GuestError,
}

impl LossCause {
    /// Every cause, charged first.
    pub const ALL: [LossCause; 9] = [
        LossCause::SpuStopped,
        LossCause::BackgroundService,
        LossCause::Recovery,
        LossCause::Fatal,
        LossCause::CopyWait,
        LossCause::GuestIrq,
        LossCause::Collision,
        LossCause::DiscardMode,
        LossCause::GuestError,
    ];

    /// Its name in the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LossCause::SpuStopped => "spu-stopped",
            LossCause::BackgroundService => "background-service",
            LossCause::Recovery => "recovery",
            LossCause::Fatal => "fatal",
            LossCause::CopyWait => "copy-wait",
            LossCause::GuestIrq => "guest-irq",
            LossCause::Collision => "collision",
            LossCause::DiscardMode => "discard-mode",
            LossCause::GuestError => "guest-error",
        }
    }

    /// Whether bare metal loses it too (not charged to the strategy).
    pub const fn is_baseline(self) -> bool {
        matches!(
            self,
            LossCause::GuestIrq
                | LossCause::Collision
                | LossCause::DiscardMode
                | LossCause::GuestError
        )
    }
}

/// Why a vCPU was kept out of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallKind {
    /// A trapped buffer enable: the trap, and the walk and pins behind it.
    Enable,
    /// Another trapped PMB* access.
    Trap,
    /// The host takes the guest's buffer interrupt and injects it (exit, inject, re-entry).
    IrqForward,
    /// shadow-buffer: the host's own buffer interrupt (flip halves).
    HostIrq,
    /// A stage 2 fault serviced before re-entry (walk, fault-in, swap-in or fetch, scan).
    FaultService,
    /// shadow-buffer: copying records before re-entry.
    Copy,
}

impl StallKind {
    /// Its name in the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            StallKind::Enable => "enable",
            StallKind::Trap => "trap",
            StallKind::IrqForward => "irq-forward",
            StallKind::HostIrq => "host-irq",
            StallKind::FaultService => "fault-service",
            StallKind::Copy => "copy",
        }
    }
}

/// A loss of samples: why they went, and what the run observed that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Why the samples were lost.
    pub cause: LossCause,
    /// The event that started it.
    pub origin: LossOrigin,
}

impl Loss {
    /// A bare-metal loss of `cause` (the guest's own doing or the SPU's).
    pub(crate) const fn baseline(cause: LossCause) -> Self {
        Loss {
            cause,
            origin: LossOrigin::Guest,
        }
    }

    /// A charged loss of `cause` started by `origin`.
    pub(crate) const fn new(cause: LossCause, origin: LossOrigin) -> Self {
        Loss { cause, origin }
    }

    /// The erratum that explains this loss, among those `declared` by the strategy: derived
    /// from what was observed (the fault and the state of the page it hit, the BSC or EC the
    /// guest was handed, the host buffer that filled), never from the strategy's name. A loss
    /// whose origin the strategy's errata do not name stays unexplained.
    pub fn explaining_erratum<'a>(&self, declared: &[&'a str]) -> Option<&'a str> {
        use {FaultOrigin as F, LossCause as C, LossOrigin as O};
        let candidates: &[&str] = match (self.cause, self.origin) {
            // A rewind or restart gives up records: the DL / rewind erratum, or the remap
            // that caused the fault.
            // A page pinned with mlock that the host moved anyway.
            (C::Recovery | C::Fatal, O::Stage2Fault(F::PinnedMoved)) => &["PB-09", "PA-06"],
            // A pinned page KSM could not merge but unmapped anyway.
            (C::Recovery | C::Fatal, O::Stage2Fault(F::PinnedZappedByKsm)) => &["PB-10", "PA-07"],
            (C::Recovery, O::Stage2Fault(F::Remapped)) => &["FT-01", "PB-03"],
            (C::Recovery, O::Stage2Fault(_)) => &["FT-01"],
            // The SPU stood stopped at a fault: the erratum of what made the page fault.
            (C::SpuStopped | C::BackgroundService, O::Stage2Fault(f)) => match f {
                F::PinnedMoved => &["PB-09", "PA-06"],
                F::PinnedZappedByKsm => &["PB-10", "PA-07"],
                F::Remapped => &["PB-03", "FT-07"],
                F::TablePage => &["FT-03"],
                F::WriteProtected => &["FT-04"],
                F::PostCopy => &["FT-06"],
                F::Reclaimed => &["FT-02"],
            },
            (C::SpuStopped, O::HostBufferFull) => &["SB-04"],
            (C::CopyWait, O::CopyBusy) => &["SB-06"],
            (C::Fatal, O::SizeTooLarge { lock_limit: false }) => &["PB-01"],
            (C::Fatal, O::SizeTooLarge { lock_limit: true }) => &["PB-08"],
            (C::Fatal, O::SpeDisabled | O::VmStartRefused) => &["PA-05"],
            (C::Fatal, O::Stage2Handed) => &["FT-05", "SB-05"],
            _ => &[],
        };
        declared.iter().copied().find(|id| candidates.contains(id))
    }
}

/// What the run observed that started a loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossOrigin {
    /// The guest itself, or the SPU as on bare metal (baseline causes only).
    Guest,
    /// The SPU took a stage 2 fault (EC 0x25) on a page in this state.
    Stage2Fault(FaultOrigin),
    /// shadow-buffer: a host half filled (the host's own buffer-full).
    HostBufferFull,
    /// shadow-buffer: the SPU waited for a copy to free a host half.
    CopyBusy,
    /// The guest's enable was answered with BSC size too large; `lock_limit`: the host had
    /// just refused a pin at its locked-memory limit.
    SizeTooLarge {
        /// The host's locked-memory limit refused the pin.
        lock_limit: bool,
    },
    /// The host disabled SPE for the vCPU.
    SpeDisabled,
    /// The host refused the VM's start (pin-all could not pin its RAM at VM start): the VMM
    /// gets the error and the VM runs no profiling at all.
    VmStartRefused,
    /// The guest was handed a stage 2 fault (EC 0x25) that the host did not repair.
    Stage2Handed,
    /// Any other outcome that ended the session.
    Other,
}

impl LossOrigin {
    /// Its name in the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LossOrigin::Guest => "guest",
            LossOrigin::Stage2Fault(f) => f.name(),
            LossOrigin::HostBufferFull => "host-buffer-full",
            LossOrigin::CopyBusy => "copy-busy",
            LossOrigin::SizeTooLarge { lock_limit: false } => "size-too-large",
            LossOrigin::SizeTooLarge { lock_limit: true } => "size-too-large/lock-limit",
            LossOrigin::SpeDisabled => "spe-disabled",
            LossOrigin::VmStartRefused => "vm-start-refused",
            LossOrigin::Stage2Handed => "stage2-fault-handed-to-guest",
            LossOrigin::Other => "other",
        }
    }
}

/// Why the page a stage 2 fault hit was not writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOrigin {
    /// A buffer page the host took away (swap, reclaim, THP split, compaction, migration).
    Reclaimed,
    /// A buffer page not yet received from the post-copy source.
    PostCopy,
    /// Write-protected by dirty logging or KSM: a Permission fault.
    WriteProtected,
    /// A stage 1 table page the SPU's walk reads was absent.
    TablePage,
    /// A buffer page the guest remapped behind the host's back after enabling the buffer.
    Remapped,
    /// A page the strategy had pinned with `mlock` that the host moved anyway (THP collapse,
    /// compaction): an mlock pin keeps a page resident, not mapped.
    PinnedMoved,
    /// A pinned page (any pin kind) a KSM scan could not merge but unmapped at stage 2 anyway.
    PinnedZappedByKsm,
}

impl FaultOrigin {
    /// Its name in the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            FaultOrigin::Reclaimed => "stage2-fault/reclaimed",
            FaultOrigin::PostCopy => "stage2-fault/post-copy",
            FaultOrigin::WriteProtected => "stage2-fault/write-protected",
            FaultOrigin::TablePage => "stage2-fault/table-page",
            FaultOrigin::Remapped => "stage2-fault/remapped",
            FaultOrigin::PinnedMoved => "stage2-fault/mlocked-page-moved",
            FaultOrigin::PinnedZappedByKsm => "stage2-fault/pinned-page-zapped-by-ksm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_BUFFER: &[&str] = &[
        "PB-01", "PB-02", "PB-03", "PB-04", "PB-05", "PB-06", "PB-07", "PB-08",
    ];

    #[test]
    fn a_loss_is_explained_only_by_an_erratum_that_names_what_started_it() {
        let mut m = Metrics::default();
        let remap = Loss::new(
            LossCause::SpuStopped,
            LossOrigin::Stage2Fault(FaultOrigin::Remapped),
        );
        m.lose(remap, 3, PIN_BUFFER);
        assert_eq!(m.loss_by_erratum.get("PB-03"), Some(&3));
        // pin-buffer pins its buffer: a reclaimed page must never fault, and if it did, no
        // erratum of pin-buffer would explain the loss.
        let reclaimed = Loss::new(
            LossCause::SpuStopped,
            LossOrigin::Stage2Fault(FaultOrigin::Reclaimed),
        );
        m.lose(reclaimed, 2, PIN_BUFFER);
        assert_eq!(m.unexplained_loss, 2);
        assert_eq!(m.samples_lost, 5);
        assert_eq!(m.loss_by_origin.get("stage2-fault/reclaimed"), Some(&2));
        // The BSC the guest was handed tells PB-01 from PB-08.
        let over = Loss::new(
            LossCause::Fatal,
            LossOrigin::SizeTooLarge { lock_limit: false },
        );
        let limit = Loss::new(
            LossCause::Fatal,
            LossOrigin::SizeTooLarge { lock_limit: true },
        );
        assert_eq!(over.explaining_erratum(PIN_BUFFER), Some("PB-01"));
        assert_eq!(limit.explaining_erratum(PIN_BUFFER), Some("PB-08"));
        // Baseline losses are never charged.
        m.lose(Loss::baseline(LossCause::GuestIrq), 7, PIN_BUFFER);
        assert_eq!((m.samples_lost, m.baseline_lost), (5, 7));
    }
}
