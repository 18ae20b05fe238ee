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
        // The memory cannot be pinned: SPE is disabled (or the VM start refused).
        "PA-05" => m.fatal_events > 0,
        // A buffer over the cap is refused: the guest's session stops.
        "PB-01" => m.fatal_events > 0,
        // Enables cost a walk and pins.
        "PB-02" => m.longest_enable_ns > cost.trap_ns,
        // A remap behind the host's back faults, and is repaired, not fatal.
        "PB-03" => m.stage2_faults > 0 && m.fatal_events == 0,
        // Post-copy moves the pinned buffer before switch-over.
        "PB-06" => m.pages_sent_before_switchover > 0,
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
        _ => return None,
    })
}
