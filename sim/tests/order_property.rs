//! The order vCPUs run in (`engine/order.rs`) against the reference tick-by-tick order, on
//! generated scenarios: any mix of host events at any time, any SPU model, any seed.

use proptest::prelude::*;
use spe_policy::config::SpeConfig;
use spe_policy_sim::scenario::{Flag, HostModel, SpuModel, TaskModel};
use spe_policy_sim::{CostModel, HostEventKind, RunOptions, Scenario, ScheduledEvent, compare};

const KINDS: [HostEventKind; 19] = [
    HostEventKind::SwapOut,
    HostEventKind::KsmMerge,
    HostEventKind::DirtyLogStart,
    HostEventKind::DirtyLogRound,
    HostEventKind::DirtyLogStop,
    HostEventKind::PostCopySwitchover,
    HostEventKind::GuestRemap,
    HostEventKind::ThpSplit,
    HostEventKind::ThpCollapse,
    HostEventKind::NumaMigration,
    HostEventKind::Compaction,
    HostEventKind::BalloonInflate,
    HostEventKind::PageUnavailable,
    HostEventKind::GuestMapOutsideRam,
    HostEventKind::GuestBadLimit,
    HostEventKind::MemslotHotplug,
    HostEventKind::MemslotUnplug,
    HostEventKind::GuestDisable,
    HostEventKind::GuestEnable,
];

fn scenario() -> impl Strategy<Value = Scenario> {
    let event = (0.0..1.0f64, 0..KINDS.len(), 0.0..0.3f64);
    (
        any::<u64>(),
        2.0..6.0f64,
        prop::collection::vec(event, 0..6),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0.0), 300.0..3000.0f64],
        any::<bool>(),
    )
        .prop_map(
            |(seed, duration_ms, events, unordered, dl, op_latency_ns, tasks)| Scenario {
                name: "generated".into(),
                description: String::new(),
                reproduces: Vec::new(),
                duration_ms,
                seed,
                records_per_ms: 2000.0,
                events: events
                    .into_iter()
                    .map(|(at, kind, fraction)| ScheduledEvent {
                        at_ms: at * duration_ms,
                        kind: KINDS[kind],
                        fraction,
                    })
                    .collect(),
                exceptional: true,
                spu: SpuModel {
                    dl_on_mid_record_fault: Flag(dl),
                    discard_mode: false,
                    op_latency_ns,
                },
                tasks: tasks.then_some(TaskModel {
                    run_ms: [0.1, 0.4],
                    away_ms: [0.1, 0.3],
                }),
                spe: None,
                host: HostModel::default(),
                vm: Some(
                    toml::from_str(&format!(
                        "buffer_per_vcpu = \"64KiB\"\nram = \"256MiB\"\nwrite_order = \"{}\"",
                        if unordered { "unordered" } else { "sequential" }
                    ))
                    .expect("vm"),
                ),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn running_ahead_gives_the_reference_orders_metrics_and_bytes_in_any_scenario(
        sc in scenario()
    ) {
        // Small buffers: many buffer-full events, so many turns to take in order.
        let config = SpeConfig::default();
        let opts = |lockstep| RunOptions {
            cost: CostModel::default(),
            guest_digest: true,
            lockstep,
            time_scale: 1.0,
        };
        let sc = [sc];
        let ahead = compare(&config, &sc, opts(false)).map_err(TestCaseError::fail)?;
        let reference = compare(&config, &sc, opts(true)).map_err(TestCaseError::fail)?;
        for (a, r) in ahead.iter().zip(&reference) {
            prop_assert_eq!(a, r, "{:?}", sc[0].events);
        }
    }
}
