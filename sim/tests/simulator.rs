//! The simulator on the shipped scenarios: deterministic, leak-free, and showing each
//! strategy's profile.

use std::path::PathBuf;

use spe_policy::config::SpeConfig;
use spe_policy_sim::{CostModel, Metrics, RunOptions, Scenario, compare, load_scenarios};

/// All costs zero, and the guest-visible digest on: runs the differential tests compare.
const FREE_WITH_DIGEST: RunOptions = RunOptions {
    cost: CostModel::FREE,
    guest_digest: true,
    lockstep: false,
};

fn scenarios() -> Vec<Scenario> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/scenarios");
    let mut s = load_scenarios(&dir).expect("scenarios");
    // Shorter runs keep the debug-build tests quick; the behaviour is the same.
    for sc in &mut s {
        let k = (12.0 / sc.duration_ms).min(1.0);
        sc.duration_ms *= k;
        for e in &mut sc.events {
            e.at_ms *= k;
        }
    }
    s
}

fn run_all() -> Vec<Metrics> {
    compare(&SpeConfig::default(), &scenarios(), CostModel::default()).expect("runs")
}

/// Computed once for all tests (a debug build simulates slowly).
fn results() -> &'static [Metrics] {
    static R: std::sync::OnceLock<Vec<Metrics>> = std::sync::OnceLock::new();
    R.get_or_init(run_all)
}

fn get<'a>(r: &'a [Metrics], scenario: &str, strategy: &str) -> &'a Metrics {
    r.iter()
        .find(|m| m.scenario == scenario && m.strategy == strategy)
        .unwrap_or_else(|| panic!("no result for {scenario}/{strategy}"))
}

#[test]
fn the_same_inputs_give_the_same_metrics() {
    assert_eq!(results(), run_all().as_slice());
}

#[test]
fn nothing_stays_pinned_after_vm_stop_in_any_scenario() {
    for m in results() {
        assert_eq!(m.pinned_after_stop, 0, "{}/{}", m.scenario, m.strategy);
        assert_eq!(
            m.records_written + m.lost() + m.records_discarded_by_mode + m.samples_collided,
            m.records_attempted,
            "{}/{}: every record is kept, discarded by the guest's choice, or lost for a cause",
            m.scenario,
            m.strategy
        );
    }
}

#[test]
fn pin_all_never_loses_a_record_and_never_faults_but_pins_all_ram() {
    let exceptional: Vec<String> = scenarios()
        .into_iter()
        .filter(|s| s.exceptional)
        .map(|s| s.name)
        .collect();
    for m in results()
        .iter()
        .filter(|m| m.strategy == "pin-all" && !exceptional.contains(&m.scenario))
    {
        assert_eq!(
            (m.lost(), m.stage2_faults, m.fatal_events),
            (0, 0, 0),
            "{}",
            m.scenario
        );
        assert!(
            m.pinned_peak_bytes >= spe_policy_sim::engine::SIM_RAM,
            "{}: {}",
            m.scenario,
            m.pinned_peak_bytes
        );
    }
}

#[test]
fn pin_buffer_pays_at_enable_then_survives_host_pressure_without_faults() {
    let r = results();
    for s in ["steady", "swap-storm", "ksm", "pre-copy", "post-copy"] {
        let m = get(r, s, "pin-buffer");
        assert_eq!(
            (m.stage2_faults, m.lost_recovery, m.fatal_events),
            (0, 0, 0),
            "{s}"
        );
        assert!(
            m.lost_blackout > 0,
            "{s}: the first enable's walk and pins cost time (PB-02)"
        );
        assert!(
            m.pinned_peak_bytes < spe_policy_sim::engine::SIM_RAM / 2,
            "{s}: cheap"
        );
    }
    // PB-03: a guest remap after enable is repaired, not fatal.
    let m = get(r, "guest-remap", "pin-buffer");
    assert_eq!((m.stage2_faults, m.fatal_events), (1, 0));
}

#[test]
fn fault_translate_pins_nothing_and_loses_records_under_host_pressure() {
    let r = results();
    let steady = get(r, "steady", "fault-translate");
    assert_eq!((steady.lost(), steady.pinned_peak_bytes), (0, 0));
    for s in ["swap-storm", "ksm", "pre-copy", "post-copy"] {
        let m = get(r, s, "fault-translate");
        assert!(
            m.stage2_faults > 0 && m.lost() > 0,
            "{s}: FT-01/FT-02 {m:?}"
        );
        assert_eq!((m.pinned_peak_bytes, m.fatal_events), (0, 0), "{s}");
    }
    // FT-06: post-copy fetches make the longest blackouts.
    let post = get(r, "post-copy", "fault-translate");
    let swap = get(r, "swap-storm", "fault-translate");
    assert!(post.longest_blackout_ns > swap.longest_blackout_ns);
}

#[test]
fn malformed_scenarios_are_rejected_with_the_reason() {
    let e = Scenario::from_toml(
        "x.toml",
        "name = \"x\"\ndescription = \"d\"\nduration_ms = -1.0\n",
    )
    .expect_err("negative duration");
    assert!(e.to_string().contains("duration_ms"), "{e}");
    let e = Scenario::from_toml(
        "y.toml",
        "name = \"y\"\ndescription = \"d\"\nduration_ms = 5.0\n[[events]]\nat_ms = 1.0\nkind = \"meteor\"\n",
    )
    .expect_err("unknown kind");
    assert!(e.to_string().contains("meteor"), "{e}");
}

#[test]
fn each_strategys_declared_profile_holds_in_the_measurements() {
    use spe_policies::Policy;
    use spe_policy::BackingStrategy;
    let verdicts = spe_policy_sim::check(
        &SpeConfig::default(),
        &scenarios(),
        results(),
        &spe_policy_sim::Thresholds::default(),
    );
    assert_eq!(verdicts.len(), 4);
    for p in Policy::all_defaults() {
        let v = verdicts
            .iter()
            .find(|v| v.strategy == p.name())
            .expect("verdict");
        let mut declared = p.profile().keeps.to_vec();
        declared.sort();
        assert_eq!(v.measured, declared, "{}: {:#?}", p.name(), v.evidence);
    }
}

#[test]
fn every_erratum_a_scenario_claims_is_shown_by_its_strategys_run() {
    let cost = CostModel::default();
    let mut shown = 0;
    for sc in scenarios() {
        for id in &sc.reproduces {
            let owner = spe_policy_sim::evidence::owner(id).expect("known prefix");
            let m = get(results(), &sc.name, owner);
            match spe_policy_sim::evidence::reproduced(id, m, &cost) {
                Some(true) => shown += 1,
                Some(false) => panic!("{}: {id} is not reproduced: {m:?}", sc.name),
                None => {}
            }
        }
    }
    assert!(shown >= 20, "only {shown} errata reproduced");
}

#[test]
fn every_erratum_of_every_strategy_names_a_scenario_that_reproduces_it() {
    use spe_policies::all_errata;
    let cost = CostModel::default();
    let scenarios = scenarios();
    for (strategy, errata) in all_errata() {
        for e in errata {
            let sc = scenarios
                .iter()
                .find(|s| s.name == e.scenario)
                .unwrap_or_else(|| panic!("{}: no scenario file {}.toml", e.id, e.scenario));
            assert!(
                sc.reproduces.iter().any(|r| r == e.id),
                "{}: {}.toml does not list it in `reproduces`",
                e.id,
                e.scenario
            );
            let m = get(results(), &sc.name, strategy);
            assert_eq!(
                spe_policy_sim::evidence::reproduced(e.id, m, &cost),
                Some(true),
                "{}: not shown by {}: {m:?}",
                e.id,
                sc.name
            );
        }
    }
}

#[test]
fn the_guest_sees_the_same_bytes_and_registers_with_shadow_buffer_as_with_pin_all() {
    // Timing aside (all costs zero), the emulation must be exact: the same interrupts with the
    // same PMBSR and PMBPTR, and the same bytes in the guest's buffer at each.
    // Small guest buffers (64 KiB): many buffer-full interrupts in a short run.
    let mut config = SpeConfig::default();
    config.guest.buffer_per_vcpu = spe_policy::config::ByteSize(64 << 10);
    // Exceptional scenarios break the host or the guest on purpose (a lost post-copy source
    // is harmless to pin-all only because it pinned the page before).
    let normal: Vec<Scenario> = scenarios().into_iter().filter(|s| !s.exceptional).collect();
    let free = compare(&config, &normal, FREE_WITH_DIGEST).expect("runs");
    let mut compared = 0;
    for pa in free.iter().filter(|m| m.strategy == "pin-all") {
        if pa.lost() > 0 || pa.stage2_faults > 0 || pa.fatal_events > 0 {
            continue; // pin-all is not valid here (it cannot start, or the guest broke it)
        }
        let sb = get(&free, &pa.scenario, "shadow-buffer");
        if pa.records_discarded_by_mode > 0 {
            continue; // discard mode: nothing is written, no interrupt to compare
        }
        assert!(pa.guest_interrupts >= 4, "{}", pa.scenario);
        assert!(
            pa.guest_digest.is_some(),
            "{}: no digest taken",
            pa.scenario
        );
        assert_eq!(
            (sb.guest_interrupts, sb.guest_digest, sb.records_written),
            (pa.guest_interrupts, pa.guest_digest, pa.records_written),
            "{}: the guest saw something else",
            pa.scenario
        );
        compared += 1;
    }
    assert!(compared >= 7, "only {compared} scenarios compared");
}

#[test]
fn shadow_buffer_pins_only_its_host_buffers_and_no_fault_reaches_the_spu() {
    let scenarios = scenarios();
    for m in results().iter().filter(|m| m.strategy == "shadow-buffer") {
        let exceptional = scenarios
            .iter()
            .any(|s| s.name == m.scenario && s.exceptional);
        assert_eq!(m.stage2_faults, 0, "{}", m.scenario);
        // 4 vCPUs x 64 KiB, whatever the guest's 4 MiB buffers.
        assert_eq!(m.pinned_peak_bytes, 4 * (64 << 10), "{}", m.scenario);
        if !exceptional {
            assert_eq!((m.lost_recovery, m.lost_fatal), (0, 0), "{}", m.scenario);
        }
    }
}

#[test]
fn every_lost_record_is_explained_by_an_erratum_of_its_strategy() {
    for m in results() {
        assert_eq!(
            m.unexplained_loss, 0,
            "{}/{}: {:?}",
            m.scenario, m.strategy, m.loss_by_erratum
        );
        let explained: u64 = m.loss_by_erratum.values().sum();
        assert_eq!(explained, m.lost(), "{}/{}", m.scenario, m.strategy);
    }
    // And the accounting does blame someone when it should: fault-translate's swap-storm
    // losses are FT-01 and FT-02.
    let m = get(results(), "swap-storm", "fault-translate");
    assert!(m.loss_by_erratum.contains_key("FT-01") && m.loss_by_erratum.contains_key("FT-02"));
}

#[test]
fn vcpus_running_ahead_between_host_calls_give_the_reference_orders_results() {
    // Every scenario and strategy, with the guest-visible digest: the scheduler that lets a
    // vCPU run ahead must not change a single byte the guest sees or a single metric.
    let json = |m: &[Metrics]| serde_json::to_string(m).expect("json");
    let mut config = SpeConfig::default();
    config.guest.buffer_per_vcpu = spe_policy::config::ByteSize(256 << 10);
    let opts = |lockstep| RunOptions {
        cost: CostModel::default(),
        guest_digest: true,
        lockstep,
    };
    let scenarios = scenarios();
    let ahead = compare(&config, &scenarios, opts(false)).expect("runs");
    let reference = compare(&config, &scenarios, opts(true)).expect("runs");
    assert!(ahead.iter().all(|m| m.guest_digest.is_some()));
    for (a, r) in ahead.iter().zip(&reference) {
        assert_eq!(
            json(std::slice::from_ref(a)),
            json(std::slice::from_ref(r)),
            "{}/{}",
            a.scenario,
            a.strategy
        );
    }
}

#[test]
fn the_same_seed_gives_byte_identical_json() {
    let json = |m: &[Metrics]| serde_json::to_string(m).expect("json");
    assert_eq!(json(results()), json(&run_all()));
}

#[test]
fn an_spu_that_keeps_dl_clear_mid_record_tears_the_stream_of_a_host_that_trusts_dl() {
    // spu-quirks: unordered writes and DL left unchanged on a mid-record fault (the J1.3
    // pseudocode's reading of §1.11 rule 5).
    let r = results();
    let ft = get(r, "spu-quirks", "fault-translate");
    assert!(ft.stage2_faults > 0 && ft.dl_events == 0, "{ft:?}");
    assert!(
        ft.torn_records > 0,
        "fault-translate resumed past partial records"
    );
    assert!(
        ft.stale_bytes_before_fault > 0,
        "unordered writes left stale bytes"
    );
    for s in ["pin-all", "shadow-buffer"] {
        assert_eq!(get(r, "spu-quirks", s).torn_records, 0, "{s} never faults");
    }
}

#[test]
fn in_discard_mode_nothing_is_written_pinned_for_the_buffer_or_faulted() {
    for m in results().iter().filter(|m| m.scenario == "discard-mode") {
        assert_eq!(m.records_written, 0, "{}", m.strategy);
        assert_eq!(
            m.records_discarded_by_mode, m.records_attempted,
            "{}",
            m.strategy
        );
        assert_eq!((m.stage2_faults, m.lost()), (0, 0), "{}", m.strategy);
    }
    assert_eq!(
        get(results(), "discard-mode", "pin-buffer").pinned_peak_bytes,
        0
    );
}

#[test]
fn a_hostile_guest_loses_only_its_own_samples_and_leaves_the_host_intact() {
    for m in results().iter().filter(|m| m.scenario == "hostile-guest") {
        assert!(
            m.loss_by_erratum.get("guest").is_some_and(|n| *n > 0),
            "{}: {:?}",
            m.strategy,
            m.loss_by_erratum
        );
        assert_eq!(
            (m.unexplained_loss, m.pinned_after_stop),
            (0, 0),
            "{}",
            m.strategy
        );
        assert!(
            m.records_written > 0,
            "{}: the other vCPUs keep profiling",
            m.strategy
        );
    }
}

#[test]
fn collisions_reach_the_guest_as_pmbsr_coll_whoever_owns_the_buffer() {
    // Small buffers: several buffer events in the shortened run.
    let mut config = SpeConfig::default();
    config.guest.buffer_per_vcpu = spe_policy::config::ByteSize(64 << 10);
    let sc: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| s.name == "collisions")
        .collect();
    let r = compare(&config, &sc, FREE_WITH_DIGEST).expect("runs");
    let pa = get(&r, "collisions", "pin-all");
    assert!(pa.samples_collided > 0 && pa.guest_collisions > 0, "{pa:?}");
    assert!(pa.guest_digest.is_some(), "no digest taken");
    let sb = get(&r, "collisions", "shadow-buffer");
    assert_eq!(
        (sb.guest_collisions, sb.guest_digest),
        (pa.guest_collisions, pa.guest_digest),
        "shadow-buffer hands the host SPU's COLL to the guest exactly"
    );
}
