//! What a run must show for a scenario to reproduce an erratum: one predicate per erratum the
//! simulator can observe. An erratum without a predicate here is not yet reproduced by the
//! simulator (see docs/DESIGN.md).

use crate::engine::{CostModel, FaultOrigin, LossCause, LossOrigin, Metrics};

/// The strategy an erratum id belongs to, from its prefix.
pub fn owner(erratum: &str) -> Option<&'static str> {
    match erratum.get(..3) {
        Some("PA-") => Some("pin-all"),
        Some("PB-") => Some("pin-buffer"),
        Some("FT-") => Some("fault-translate"),
        Some("SB-") => Some("shadow-buffer"),
        _ => None,
    }
}

/// The metrics each erratum's evidence reads: what a run must show, field by field. The
/// mutation test zeroes them one erratum at a time and checks the predicate then fails, so
/// no predicate holds by construction.
pub fn observables(id: &str) -> &'static [&'static str] {
    match id {
        "PA-01" => &["invalidations_refused"],
        "PA-02" => &["first_enable_stall_ns"],
        "PA-03" => &["migrations_refused"],
        "PA-04" => &["unplugs_refused"],
        "PA-05" => &["guest_events"],
        "PB-01" | "PB-08" => &["guest_events", "loss_by_origin"],
        "PB-02" => &["first_enable_stall_ns"],
        "PB-03" | "FT-07" => &["stage2_faults"],
        "PB-04" => &["pinned_idle_peak_bytes"],
        "PB-05" => &["untracked_pages_at_stop"],
        "PB-06" => &["pages_sent_before_switchover"],
        "PB-07" => &["guest_error_faults"],
        "FT-01" => &["lost_by_cause"],
        "FT-02" => &["lost_by_cause"],
        "FT-03" => &["table_faults"],
        "FT-04" => &["stage2_permission_faults"],
        "FT-05" | "SB-05" => &["guest_events"],
        "FT-06" => &["stall_by_kind"],
        "SB-01" => &["max_copy_delay_ns"],
        "SB-02" => &["traps"],
        "SB-03" => &["bytes_copied"],
        "SB-04" => &["lost_by_cause", "loss_by_origin"],
        "SB-06" => &["stall_by_kind", "copy_wait_ns"],
        "SB-07" => &["bytes_dropped"],
        "PA-06" | "PB-09" | "PA-07" | "PB-10" => &["loss_by_origin"],
        _ => &[],
    }
}

/// Whether `m` (a run of the erratum's own strategy) shows erratum `id`, on the erratum's own
/// observable (the BSC the guest received, the EC of the fault it was handed, the stalled
/// enable, the copy, the cause of the loss); `None` when the simulator has no observable.
pub fn reproduced(id: &str, m: &Metrics, cost: &CostModel) -> Option<bool> {
    let charged = |cause: LossCause| m.lost_to(cause) > 0;
    let saw = |kind: &str| m.guest_events.get(kind).copied().unwrap_or(0) > 0;
    let stalled = |kind: &str| m.stall_by_kind.get(kind).copied().unwrap_or(0.0);
    let started_by =
        |origin: LossOrigin| m.loss_by_origin.get(origin.name()).is_some_and(|n| *n > 0);
    Some(match id {
        // No overcommit: the host's reclaim is refused.
        "PA-01" => m.invalidations_refused > 0,
        // Pinning all RAM at the first enable stalls that vCPU (more than a millisecond).
        "PA-02" => m.first_enable_stall_ns > 1e6,
        // Live migration refused or degraded to stop-and-copy.
        "PA-03" => m.migrations_refused > 0,
        // Hot-unplug refused while a buffer is enabled.
        "PA-04" => m.unplugs_refused > 0,
        // The memory cannot be pinned: the host disables SPE for the vCPU.
        "PA-05" => saw("spe-disabled"),
        // A buffer over the cap is refused: the guest receives BSC size too large, and the
        // session's loss started there.
        "PB-01" => {
            saw("size-too-large") && started_by(LossOrigin::SizeTooLarge { lock_limit: false })
        }
        // The same BSC, because the host refused a pin at its locked-memory limit.
        "PB-08" => {
            saw("size-too-large") && started_by(LossOrigin::SizeTooLarge { lock_limit: true })
        }
        // Enables cost a walk and pins: the first enable stalls far beyond a trap.
        "PB-02" => m.first_enable_stall_ns > 10.0 * cost.trap_ns,
        // A remap behind the host's back faults, and is repaired, not fatal.
        "PB-03" | "FT-07" => m.stage2_faults > 0 && m.fatal_events == 0,
        // Pins held while no buffer is enabled.
        "PB-04" => m.pinned_idle_peak_bytes > 0,
        // The pinned buffer cannot be tracked and is sent again at stop-and-copy.
        "PB-05" => m.untracked_pages_at_stop > 0 && m.migration_downtime_ns > 0.0,
        // Post-copy moves the pinned buffer before switch-over.
        "PB-06" => m.pages_sent_before_switchover > 0,
        // A buffer page outside RAM is not pinned; the SPU faults on it.
        "PB-07" => m.guest_error_faults > 0 && m.fatal_events > 0,
        // DL / rewind losses.
        "FT-01" => charged(LossCause::Recovery),
        // The SPU stops at every fault, and the service stalls the vCPU (or runs unprofiled
        // in the background).
        "FT-02" => {
            charged(LossCause::SpuStopped) && stalled("fault-service") > 0.0
                || charged(LossCause::BackgroundService)
        }
        // Faults on stage 1 table pages.
        "FT-03" => m.table_faults > 0,
        // Dirty logging or KSM write-protect the buffer: Permission faults.
        "FT-04" => m.stage2_permission_faults > 0,
        // A page that cannot be made present (or is outside every memslot): the guest is
        // handed the stage 2 fault (EC 0x25) and ends the session.
        // (Its loss is the guest's own when the page is outside RAM: not charged.)
        "FT-05" | "SB-05" => saw("stage2-fault") && m.fatal_events > 0,
        // Post-copy demand fetches: a fault service at least one fetch long.
        "FT-06" => stalled("fault-service") >= cost.post_copy_fetch_ns,
        // Records wait in the host buffer until a copy.
        "SB-01" => m.max_copy_delay_ns > 0.0,
        // Every PMB* access traps: as many traps as accesses.
        "SB-02" => m.traps > 0 && m.traps == m.pmb_accesses,
        // The host copies every byte of SPE data the SPU wrote (all but the last records in
        // flight at the end of the run).
        "SB-03" => {
            m.bytes_copied > 0
                && m.bytes_copied as f64 >= 0.99 * m.spu_bytes as f64
                && m.copy_ns > 0.0
        }
        // Host buffer-full interrupts stop the SPU briefly: the samples lost while it stood
        // stopped started at a host buffer-full.
        "SB-04" => charged(LossCause::SpuStopped) && started_by(LossOrigin::HostBufferFull),
        // Copies waiting for paging stall the vCPU (or the SPU, in the background).
        "SB-06" => m.copy_wait_ns > 0.0 || stalled("copy") >= cost.swap_in_ns,
        // With mlock pins the host moved pinned pages anyway: the loss started at a fault on a
        // page the strategy held pinned (pin-all: handed to the guest, fatal; pin-buffer:
        // repaired after a recovery).
        "PA-06" => {
            started_by(LossOrigin::Stage2Fault(FaultOrigin::PinnedMoved)) && saw("stage2-fault")
        }
        "PB-09" => {
            started_by(LossOrigin::Stage2Fault(FaultOrigin::PinnedMoved)) && m.fatal_events == 0
        }
        // A KSM scan unmapped pinned pages it could not merge: pin-all hands the fault to the
        // guest, pin-buffer repairs it.
        "PA-07" => {
            started_by(LossOrigin::Stage2Fault(FaultOrigin::PinnedZappedByKsm))
                && saw("stage2-fault")
        }
        "PB-10" => {
            started_by(LossOrigin::Stage2Fault(FaultOrigin::PinnedZappedByKsm))
                && m.fatal_events == 0
        }
        // A remap met at copy time drops the records the SPU took after the fault point.
        "SB-07" => m.bytes_dropped > 0 && saw("stage1-fault"),
        _ => return None,
    })
}

/// The measured impact of erratum `id` in `m` (a run of its strategy in its scenario), as one
/// sentence for the errata documents.
pub fn impact(id: &str, m: &Metrics) -> String {
    let lost = m.loss_by_erratum.get(id).copied().unwrap_or(0);
    let share = 100.0 * lost as f64 / m.samples_due.max(1) as f64;
    let figure = match id {
        "PA-01" => format!("{} host invalidations refused", m.invalidations_refused),
        "PA-02" | "PB-02" => format!(
            "first enable stalls the vCPU {:.1} µs; re-enables {:.1} µs each",
            m.first_enable_stall_ns / 1e3,
            m.reenable_stall_ns / m.reenables.max(1) as f64 / 1e3
        ),
        "PA-03" => format!(
            "{} migration(s) refused or degraded; downtime {:.1} ms",
            m.migrations_refused,
            m.migration_downtime_ns / 1e6
        ),
        "PA-04" => format!("{} hot-unplug(s) refused", m.unplugs_refused),
        "PB-04" => format!(
            "{:.2} MiB pinned while no buffer was enabled",
            m.pinned_idle_peak_bytes as f64 / f64::from(1u32 << 20)
        ),
        "PB-05" => format!(
            "{} untracked pages at stop-and-copy; downtime {:.2} ms; {} pages resent",
            m.untracked_pages_at_stop,
            m.migration_downtime_ns / 1e6,
            m.pages_resent
        ),
        "PB-06" => format!(
            "{} pages sent before switch-over",
            m.pages_sent_before_switchover
        ),
        "PB-07" => format!(
            "{} fault(s) on a page outside RAM, {} fatal event(s)",
            m.guest_error_faults, m.fatal_events
        ),
        "FT-03" => format!("{} stage 2 faults on table pages", m.table_faults),
        "FT-04" => format!("{} stage 2 faults", m.stage2_faults),
        "FT-06" | "FT-02" => format!(
            "{} stage 2 faults; {:.2} ms of fault service stall, longest stall {:.1} µs",
            m.stage2_faults,
            m.stall_by_kind.get("fault-service").copied().unwrap_or(0.0) / 1e6,
            m.longest_stall_ns / 1e3
        ),
        "SB-01" => format!(
            "records waited up to {:.1} µs in the host buffer",
            m.max_copy_delay_ns / 1e3
        ),
        "SB-02" => format!(
            "{} trapped PMB* accesses, {:.2} ms of trap stall",
            m.traps,
            m.stall_by_kind.get("trap").copied().unwrap_or(0.0) / 1e6
        ),
        "SB-03" => format!(
            "{:.1} MiB copied in {:.2} ms of host CPU ({:.2} ns/byte)",
            m.bytes_copied as f64 / f64::from(1u32 << 20),
            m.copy_ns / 1e6,
            m.copy_ns / (m.bytes_copied.max(1) as f64)
        ),
        "SB-06" => format!(
            "{:.1} ms of copy stall, {:.1} ms of the SPU waiting for copies",
            m.stall_by_kind.get("copy").copied().unwrap_or(0.0) / 1e6,
            m.copy_wait_ns / 1e6
        ),
        _ => format!(
            "{} stage 2 faults, {} fatal event(s)",
            m.stage2_faults, m.fatal_events
        ),
    };
    format!(
        "scenario `{}`: {lost} of {} samples due lost to it ({share:.3}%); {figure}",
        m.scenario, m.samples_due
    )
}
