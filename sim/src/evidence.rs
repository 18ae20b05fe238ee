//! What a run must show for a scenario to reproduce an erratum: one predicate per erratum the
//! simulator can observe. An erratum without a predicate here is not yet reproduced by the
//! simulator (see docs/DESIGN.md).

use crate::engine::{CostModel, Metrics};

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

/// Whether `m` (a run of the erratum's own strategy) shows erratum `id`; `None` when the
/// simulator has no observable for it yet.
pub fn reproduced(id: &str, m: &Metrics, cost: &CostModel) -> Option<bool> {
    let fault_blackout = m.lost_blackout - m.lost_blackout_enable;
    Some(match id {
        // No overcommit: the host's reclaim is refused.
        "PA-01" => m.invalidations_refused > 0,
        // Pinning all RAM at the first enable stalls it (more than a millisecond here).
        "PA-02" => m.longest_enable_ns > 1e6,
        // Live migration refused or degraded to stop-and-copy (all RAM sent while stopped).
        "PA-03" => m.migrations_refused > 0,
        // Hot-unplug refused while a buffer is enabled.
        "PA-04" => m.unplugs_refused > 0,
        // The memory cannot be pinned: SPE is disabled (or the VM start refused).
        "PA-05" => m.fatal_events > 0,
        // A buffer over the cap is refused: the guest's session stops.
        "PB-01" => m.fatal_events > 0,
        // Enables cost a walk and pins.
        "PB-02" => m.longest_enable_ns > cost.trap_ns,
        // A remap behind the host's back faults, and is repaired, not fatal.
        "PB-03" => m.stage2_faults > 0 && m.fatal_events == 0,
        // Pins held while no buffer is enabled.
        "PB-04" => m.pinned_idle_peak_bytes > 0,
        // The pinned buffer cannot be tracked and is sent again at stop-and-copy.
        "PB-05" => m.untracked_pages_at_stop > 0 && m.migration_downtime_ns > 0.0,
        // Post-copy moves the pinned buffer before switch-over.
        "PB-06" => m.pages_sent_before_switchover > 0,
        // A buffer page outside RAM is not pinned; the SPU's fault on it ends the session.
        "PB-07" => m.guest_error_faults > 0 && m.fatal_events > 0,
        // A pin the host refuses is refused like an over-cap buffer.
        "PB-08" => m.fatal_events > 0,
        // DL / rewind losses.
        "FT-01" => m.lost_recovery > 0,
        // Blackouts while faults are serviced.
        "FT-02" => fault_blackout > 0,
        // Faults on stage 1 table pages.
        "FT-03" => m.table_faults > 0,
        // Dirty logging or KSM fault the buffer.
        "FT-04" => m.stage2_faults > 0,
        // A page that cannot be brought back ends the session.
        "FT-05" => m.fatal_events > 0,
        // Post-copy demand fetches: a blackout at least one fetch long.
        "FT-06" => m.longest_blackout_ns >= cost.post_copy_fetch_ns,
        // A remap is repaired like any fault.
        "FT-07" => m.stage2_faults > 0 && m.fatal_events == 0,
        // Records wait in the host buffer until a copy.
        "SB-01" => m.max_copy_delay_ns > 0.0,
        // PMB* accesses trap.
        "SB-02" => m.traps > 0,
        // The host copies the data, at a CPU cost.
        "SB-03" => m.bytes_copied > 0 && m.copy_ns > 0.0,
        // Host buffer-full interrupts stop profiling briefly.
        "SB-04" => m.loss_by_erratum.get("SB-04").is_some_and(|n| *n > 0),
        // Memory that cannot be brought in: a stage 2 fault for the guest.
        "SB-05" => m.fatal_events > 0,
        // Copies waiting for paging stall the SPU.
        "SB-06" => m.copy_wait_ns > 0.0,
        _ => return None,
    })
}
